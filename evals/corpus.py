"""The offline docs corpus: Debian documentation packages as a local web with real URLs.

Why Debian packages: they are real, versioned HTML sites (titles, links, anchors) that
install offline from the Debian mirror (``apt-get download`` + ``dpkg-deb -x``, no root),
so every machine and CI run measures against the same frozen pages.

Pages are split into *sections* at headings (and at the question terms of FAQ pages),
and each section is one document of the local index with the URL ``page#anchor``: so
retrieval can be scored at the page level and at the ``url#anchor`` level. The
``strip_questions`` variant leaves the question headings of FAQ pages out of the index
(text and titles), so retrieval must find an answer by its own words.

Layout (``root`` defaults to ``data/evals``)::

    debs/NAME_VERSION_all.deb          downloaded once
    pages/PACKAGE/...                  unpacked trees
    corpora/NAME/                      a LocalIndex data dir (index/, cache/)
"""

from __future__ import annotations

import hashlib
import http.server
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

from retrieval.corpus import SourceText, html_to_text

__all__ = [
    "DEFAULT_ROOT",
    "PACKAGES",
    "CorpusError",
    "CorpusServer",
    "DocPackage",
    "Section",
    "build_corpus",
    "corpus_dir",
    "ensure_package",
    "iter_pages",
    "page_sections",
]

DEFAULT_ROOT = Path("data/evals")


class CorpusError(RuntimeError):
    """A corpus cannot be built (unknown package, no Debian mirror reachable, ...)."""


@dataclass(frozen=True)
class DocPackage:
    """One documentation package: where its HTML lies and the public URL it mirrors."""

    name: str          # short name used on the command line
    deb: str           # Debian package name
    root: str          # folder of the HTML inside the package
    url_prefix: str    # public URL of that folder
    faq: str = ""      # regex on the relative path of FAQ pages ("" none)
    glob: str = "**/*.html"
    strip_suffix: bool = False  # git-scm.com serves pages without ".html"
    skip: str = ""     # regex on relative paths to leave out (duplicates, indexes)
    faq_terms: bool = False  # FAQ questions are <dt> terms (asciidoc), not headings

    def url(self, relative: str) -> str:
        if self.strip_suffix and relative.endswith(".html"):
            relative = relative[:-5]
        return self.url_prefix + relative

    def relative(self, url: str) -> str | None:
        """The file (relative to ``root``) for a public URL; None if not ours."""
        page = url.split("#", 1)[0]
        if not page.startswith(self.url_prefix):
            return None
        relative = page[len(self.url_prefix):] or "index.html"
        if self.strip_suffix and not relative.endswith(".html"):
            relative += ".html"
        return relative


PACKAGES: dict[str, DocPackage] = {p.name: p for p in [
    DocPackage("git", "git-doc", "usr/share/doc/git-doc", "https://git-scm.com/docs/",
               faq=r"^gitfaq\.html$", glob="*.html", strip_suffix=True,
               skip=r"^(RelNotes|index)", faq_terms=True),
    DocPackage("python", "python3.11-doc", "usr/share/doc/python3.11/html",
               "https://docs.python.org/3.11/", faq=r"^faq/",
               skip=r"^(genindex|py-modindex|search|_static|_sources|whatsnew/changelog)"),
    DocPackage("postgresql", "postgresql-doc-15", "usr/share/doc/postgresql-doc-15/html",
               "https://www.postgresql.org/docs/15/", skip=r"^(bookindex|release-)"),
    DocPackage("debian-faq", "debian-faq", "usr/share/doc/debian/FAQ",
               "https://www.debian.org/doc/manuals/debian-faq/", faq=r".",
               glob="*.en.html"),
    DocPackage("debian-reference", "debian-reference-en", "usr/share/debian-reference",
               "https://www.debian.org/doc/manuals/debian-reference/", glob="*.en.html"),
    DocPackage("linux", "linux-doc-6.1", "usr/share/doc/linux-doc-6.1/html",
               "https://www.kernel.org/doc/html/v6.1/",
               skip=r"^(genindex|search|_static|_sources)"),
]}


# --- download and unpack ---------------------------------------------------------------

def ensure_package(package: DocPackage, root: Path = DEFAULT_ROOT) -> Path:
    """The unpacked HTML folder of ``package``; downloads and unpacks it once.

    Raises :class:`CorpusError` with the apt output when the mirror cannot be reached:
    the harness must say why it has no corpus, never measure an empty one.
    """
    tree = root / "pages" / package.deb
    html = tree / package.root
    if (tree / ".complete").is_file() and html.is_dir():
        return html
    debs = root / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package.deb}_*.deb"))
    if not found:
        if shutil.which("apt-get") is None:
            raise CorpusError(f"cannot download {package.deb}: apt-get is not available "
                              f"(put the .deb into {debs} by hand)")
        done = subprocess.run(["apt-get", "download", package.deb], cwd=debs,
                              capture_output=True, text=True)
        found = sorted(debs.glob(f"{package.deb}_*.deb"))
        if done.returncode != 0 or not found:
            detail = (done.stderr or done.stdout).strip().splitlines()
            raise CorpusError(f"apt-get download {package.deb} failed (no Debian mirror "
                              f"reachable?): {detail[-1] if detail else done.returncode}")
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    done = subprocess.run(["dpkg-deb", "-x", str(found[-1]), str(tree)],
                          capture_output=True, text=True)
    if done.returncode != 0 or not html.is_dir():
        raise CorpusError(f"dpkg-deb -x {found[-1].name} failed: {done.stderr.strip()}")
    (tree / ".complete").write_text(found[-1].name)
    return html


def iter_pages(package: DocPackage, html: Path) -> Iterator[tuple[str, Path]]:
    """(relative path, file) of the package's pages, sorted, duplicates skipped."""
    skip = re.compile(package.skip) if package.skip else None
    for path in sorted(html.glob(package.glob)):
        relative = path.relative_to(html).as_posix()
        if path.is_file() and not (skip and skip.search(relative)):
            yield relative, path


# --- pages into sections -----------------------------------------------------------------

_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}


@dataclass(frozen=True)
class Section:
    anchor: str     # "" for the text before the first anchored heading
    heading: str    # the heading's (or FAQ question's) text
    html: str       # the section's HTML, heading included
    body_html: str  # the section's HTML without the heading


class _Splitter(HTMLParser):
    """Finds where sections start: each heading, and each ``<dt>`` on FAQ pages.

    A section's anchor is the heading's own id, else the id of an element opened right
    before it (Sphinx's ``<section id>``, asciidoc's ``<div class="dlist" id>``), else the
    first id inside the section (asciidoc puts ``[[anchor]]`` after a question term).
    """

    def __init__(self, terms: bool) -> None:
        super().__init__(convert_charrefs=True)
        self.starts: list[dict[str, object]] = []  # offset, end, anchor, heading
        self._tags = _HEADINGS | ({"dt"} if terms else set())
        self._pending: str | None = None
        self._open: dict[str, object] | None = None
        self._text: list[str] = []

    def _offset(self) -> int:
        line, col = self.getpos()
        return self._line_starts[line - 1] + col

    def run(self, html: str) -> None:
        self._line_starts = [0]
        for line in html.splitlines(keepends=True):
            self._line_starts.append(self._line_starts[-1] + len(line))
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        ident = found.get("id") or (found.get("name") if tag == "a" else None)
        if tag in self._tags and self._open is None:
            self._open = {"offset": self._offset(), "tag": tag,
                          "anchor": ident or self._pending or "", "heading": ""}
            self._text = []
            self._pending = None
            return
        if self._open is not None and ident and not self._open["anchor"]:
            self._open["anchor"] = ident
        elif ident:
            self._pending = ident
            if self.starts and not self.starts[-1]["anchor"]:
                self.starts[-1]["anchor"] = ident

    def handle_endtag(self, tag: str) -> None:
        if self._open is not None and tag == self._open["tag"]:
            self._open["heading"] = " ".join("".join(self._text).split()).rstrip("¶ ")
            self._open["end"] = self._offset() + len(f"</{tag}>")
            self.starts.append(self._open)
            self._open = None

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._text.append(data)
        elif data.strip():
            self._pending = None


def page_sections(html: str, *, terms: bool = False) -> list[Section]:
    """The sections of a page, in order (see :class:`_Splitter` for the anchors);
    ``terms``: ``<dt>`` terms start sections too (asciidoc FAQ questions)."""
    body_at = html.lower().find("<body")
    splitter = _Splitter(terms)
    splitter.run(html)
    starts = [s for s in splitter.starts if int(s["offset"]) >= max(body_at, 0)]
    sections: list[Section] = []
    head = html[:int(starts[0]["offset"])] if starts else html
    sections.append(Section("", "", head, head))
    for i, start in enumerate(starts):
        begin, end = int(start["offset"]), int(start["end"])
        stop = int(starts[i + 1]["offset"]) if i + 1 < len(starts) else len(html)
        sections.append(Section(str(start["anchor"]), str(start["heading"]),
                                html[begin:stop], html[end:stop]))
    return sections


def _page_title(html: str) -> str:
    title, _ = html_to_text(html[:html.lower().find("</title>") + 8] if "</title>" in
                            html.lower() else "")
    return title


def page_sources(package: DocPackage, relative: str, html: str, *,
                 strip_questions: bool = False, kind: str = "corpus:docs"
                 ) -> list[SourceText]:
    """One indexable source per non-empty section of a page (URL ``page#anchor``)."""
    faq = bool(package.faq and re.search(package.faq, relative))
    page_url = package.url(relative)
    title = _page_title(html) or relative
    out: list[SourceText] = []
    for section in page_sections(html, terms=faq and package.faq_terms):
        strip = strip_questions and faq and section.heading
        _, text = html_to_text(section.body_html if strip else section.html)
        if len(text) < 40:  # a bare heading, a navigation stub
            continue
        url = f"{page_url}#{section.anchor}" if section.anchor else page_url
        if any(s.url == url for s in out):  # two sections, one anchor: keep them apart
            url = f"{url}~{len(out)}" if "#" in url else f"{url}#~{len(out)}"
        name = title if strip or not section.heading else f"{title} - {section.heading}"
        out.append(SourceText(key=url, kind=kind, url=url, title=name, text=text))
    return out


# --- the index -----------------------------------------------------------------------

def corpus_dir(names: Sequence[str], *, strip_questions: bool = False,
               pages: str | None = None, root: Path = DEFAULT_ROOT) -> Path:
    """The LocalIndex data dir of a corpus (one per package set, variant and slice)."""
    label = "+".join(sorted(names)) + ("-stripped" if strip_questions else "")
    if pages:
        label += "-slice" + hashlib.sha256(pages.encode()).hexdigest()[:8]
    return root / "corpora" / label


def resolve_packages(names: Sequence[str]) -> list[DocPackage]:
    unknown = [n for n in names if n not in PACKAGES]
    if unknown:
        raise CorpusError(f"unknown docs package {', '.join(unknown)}; known: "
                          f"{', '.join(PACKAGES)}")
    return [PACKAGES[n] for n in names]


def build_corpus(names: Sequence[str], *, strip_questions: bool = False,
                 pages: str | None = None, root: Path = DEFAULT_ROOT,
                 model: str | None = None, progress: object = None) -> Path:
    """Download, unpack, split and index the packages; returns the data dir.

    ``pages``: a regex on page paths (relative to the package's HTML folder) that keeps
    a slice of the corpus (what the CI smoke test indexes, to stay fast).

    Cached: a marker records the corpus spec, and LocalIndex re-embeds only changed
    text (embeddings are cached by content), so a second call is nearly free.
    """
    from retrieval.index import LocalIndex, load_model

    packages = resolve_packages(names)
    data_dir = corpus_dir(names, strip_questions=strip_questions, pages=pages, root=root)
    spec = f"v2:{','.join(sorted(names))}:strip={strip_questions}:pages={pages}"
    keep = re.compile(pages) if pages else None
    _seed_embedding_cache(data_dir, root)
    index = LocalIndex(data_dir, load_model(data_dir, model))
    try:
        if index.get_meta("evals:corpus") == spec and index.is_built():
            return data_dir
        sources: list[SourceText] = []
        for package in packages:
            html_root = ensure_package(package, root)
            for relative, path in iter_pages(package, html_root):
                if keep is not None and not keep.search(relative):
                    continue
                html = path.read_text(encoding="utf-8", errors="replace")
                sources.extend(page_sources(package, relative, html,
                                            strip_questions=strip_questions))
        index.upsert(sources, replace_kind="corpus:docs", progress=progress)  # type: ignore[arg-type]
        index.set_meta("evals:corpus", spec)
    finally:
        index.close()
    return data_dir


def _seed_embedding_cache(data_dir: Path, root: Path) -> None:
    """Start a new corpus from the largest existing corpus's embedding cache: it is keyed
    by model and text, so a variant or a slice of a built corpus embeds almost nothing."""
    target = data_dir / "cache" / "embeddings.sqlite"
    if target.exists():
        return
    caches = sorted((root / "corpora").glob("*/cache/embeddings.sqlite"),
                    key=lambda p: p.stat().st_size)
    if caches:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(caches[-1], target)


# --- the local web -------------------------------------------------------------------

class CorpusServer:
    """Serves unpacked packages on 127.0.0.1 under their public URLs.

    A request is mapped by its ``Host`` header and path (``GET /docs/gitfaq`` with
    ``Host: git-scm.com``), or by a full URL as the path (``GET /https://git-scm.com/
    docs/gitfaq``) for a browser or a proxy-less client. Only files inside the unpacked
    trees are served.
    """

    def __init__(self, packages: Sequence[DocPackage], root: Path = DEFAULT_ROOT,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.roots = [(p, ensure_package(p, root)) for p in packages]
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                path = self.path
                if not path.startswith(("/http://", "/https://")):
                    host = (self.headers.get("Host") or "").split(":")[0]
                    path = f"/https://{host}{path}"
                found = owner.file_for(path[1:])
                if found is None:
                    self.send_error(404)
                    return
                body = found.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer((host, port), Handler)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def file_for(self, url: str) -> Path | None:
        """The unpacked file behind a public URL (http or https), if it is ours."""
        parts = urlsplit(url.replace("http://", "https://", 1))
        clean = f"https://{parts.netloc}{parts.path}"
        for package, html in self.roots:
            relative = package.relative(clean)
            if relative is None:
                continue
            path = (html / relative).resolve()
            if path.is_file() and path.is_relative_to(html.resolve()):
                return path
        return None

    def start(self) -> CorpusServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> CorpusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
