"""Bytes of a fetched page -> title, main text and date. Synchronous and CPU-bound: the
reader runs it in a thread pool with a deadline, never on the event loop.

Decoding follows the browser order: BOM, HTTP charset, ``<meta charset>``, then
detection; labels are mapped the WHATWG way (iso-8859-1 means windows-1252), invalid
bytes are replaced and nothing here raises anything but :class:`ExtractionError`.
HTML goes through trafilatura (boilerplate dropped, date from metadata). Parse time grows
with size and element count, so big pages lose their scripts and styles and are then cut
to ``max_chars`` / ``max_tags`` before parsing; lxml's own depth limit (256) keeps nesting
bombs shallow, and the reader's deadline covers whatever is left.
"""

from __future__ import annotations

import codecs
import io
import re
from dataclasses import dataclass
from typing import Literal

import charset_normalizer
import trafilatura
from trafilatura.settings import use_config

__all__ = ["ExtractionError", "Extracted", "decode", "extract", "sniff_kind"]

Kind = Literal["html", "text", "pdf"]

_HTML_TYPES = {"text/html", "application/xhtml+xml"}
_TEXT_TYPES = {"text/plain", "text/markdown", "text/x-markdown"}
_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([A-Za-z0-9._:-]{1,40})""",
                           re.IGNORECASE)
_WHATWG_ALIASES = {"iso-8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252",
                   "iso8859-1": "cp1252", "us-ascii": "cp1252", "ascii": "cp1252",
                   "iso-8859-9": "cp1254", "x-sjis": "shift_jis"}
# Legacy encodings actually seen on the web; detection among DOS code pages misfires.
_WEB_ENCODINGS = ["cp1252", "cp1250", "cp1251", "cp1253", "cp1254", "cp1255", "cp1256",
                  "cp1257", "cp1258", "iso8859_2", "iso8859_7", "koi8_r", "shift_jis",
                  "euc_jp", "gb18030", "big5", "euc_kr", "cp874"]
_BLOCKS = ("script", "style", "noscript", "template", "svg")
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"))
_CONFIG = use_config()
_CONFIG.set("DEFAULT", "EXTRACTION_TIMEOUT", "0")  # uses signals: main thread only
_CONFIG.set("DEFAULT", "MAX_TREE_SIZE", "200000")  # drop absurd trees instead of walking them


class ExtractionError(Exception):
    """The page cannot be turned into text; ``reason`` is reported with the fallback."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Extracted:
    text: str
    title: str | None = None
    published: str | None = None  # YYYY-MM-DD


def extract(body: bytes, content_type: str | None, *, url: str | None = None,
            max_chars: int = 500_000, max_tags: int = 20_000, max_text_chars: int = 100_000,
            max_pdf_pages: int = 50) -> Extracted:
    """The one entry point: sniff, decode, extract, cap the output. ``max_chars`` and
    ``max_tags`` bound the HTML handed to the parser (trafilatura costs ~50 us per
    element here, so 20k tags is about half a second)."""
    mime, charset = _parse_content_type(content_type)
    kind = sniff_kind(mime, body)
    if kind == "pdf":
        result = _extract_pdf(body, max_pdf_pages)
    else:
        text = decode(body, charset, html=kind == "html")
        _reject_garbage(text)
        if kind == "html":
            result = _extract_html(_cut_markup(text, max_chars, max_tags), url)
        else:
            result = Extracted(text=text.strip())
    if not result.text.strip():
        raise ExtractionError("no main text")
    return Extracted(result.text[:max_text_chars], result.title, result.published)


def sniff_kind(mime: str | None, body: bytes) -> Kind:
    """Trust magic bytes over labels for PDF and NUL-laden bodies, labels otherwise."""
    head = body[:1024].lstrip()
    if head.startswith(b"%PDF-"):
        return "pdf"
    if mime == "application/pdf":
        raise ExtractionError("not a PDF (application/pdf without a PDF header)")
    if mime in _HTML_TYPES or mime in _TEXT_TYPES or mime is None:
        if b"\x00" in body[:8192] and not body.startswith(tuple(b for b, _ in _BOMS)):
            raise ExtractionError("not text (binary data)")
        if mime in _HTML_TYPES:
            return "html"
        if mime is None and head[:15].lower().startswith((b"<!doctype html", b"<html")):
            return "html"
        return "text"
    raise ExtractionError(f"unsupported content type {mime}")


def decode(body: bytes, charset: str | None, *, html: bool) -> str:
    """Decode with the first declared charset that fits, then detection; never raises."""
    for bom, encoding in _BOMS:
        if body.startswith(bom):
            return body.decode(encoding, errors="replace")
    declared = [charset] if charset else []
    if html and (found := _META_CHARSET.search(body[:4096])):
        declared.append(found.group(1).decode("ascii"))
    for label in declared:
        encoding = _lookup(label)
        if encoding:
            try:
                return body.decode(encoding)
            except UnicodeDecodeError:
                continue  # mislabelled: e.g. latin-1 bytes sent as utf-8
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        pass
    return body.decode(_detect(body), errors="replace")


def _cut_markup(html: str, max_chars: int, max_tags: int) -> str:
    """Bound parse time: drop scripts and styles from big pages, then cut at ``max_chars``
    or at the ``max_tags``-th tag, whichever comes first."""
    if len(html) <= max_chars and html.count("<") <= max_tags:
        return html
    html = strip_blocks(html)[:max_chars]
    if html.count("<") > max_tags:
        pos = -1
        for _ in range(max_tags):
            pos = html.find("<", pos + 1)
        html = html[:pos]
    return html


def strip_blocks(html: str) -> str:
    """Drop ``<script>``/``<style>``/... blocks (JSON-LD kept: it holds dates) in one
    linear pass; a regex with ``.*?`` goes quadratic on unclosed tags."""
    lower = html.lower()
    following = {tag: lower.find("<" + tag) for tag in _BLOCKS}
    parts: list[str] = []
    pos = 0
    while live := [(i, t) for t, i in following.items() if i >= 0]:
        start, tag = min(live)
        close = lower.find("</" + tag, start)
        end = len(html) if close < 0 else (lower.find(">", close) + 1 or len(html))
        gt = lower.find(">", start, start + 500)
        opening = lower[start:gt if gt >= 0 else start + 500]
        parts.append(html[pos:end] if "ld+json" in opening else html[pos:start])
        pos = end
        for t, i in following.items():
            if 0 <= i < pos:
                following[t] = lower.find("<" + t, pos)
    parts.append(html[pos:])
    return "".join(parts)


def _lookup(label: str) -> str | None:
    label = label.strip().lower()
    label = _WHATWG_ALIASES.get(label, label)
    try:
        return codecs.lookup(label).name
    except LookupError:
        return None


def _detect(body: bytes) -> str:
    """charset_normalizer among web encodings; ties between Latin code pages go to
    windows-1252, the web's legacy default."""
    matches = charset_normalizer.from_bytes(body[:65536], cp_isolation=_WEB_ENCODINGS)
    best = matches.best()
    if best is None:
        return "cp1252"
    for match in matches:
        if (match.chaos <= best.chaos + 0.01 and match.coherence >= best.coherence - 0.01
                and "cp1252" in match.could_be_from_charset):
            return "cp1252"
    return best.encoding


def _reject_garbage(text: str) -> None:
    """Binary data decoded "successfully" is mostly replacement and control characters."""
    sample = text[:8192]
    if not sample:
        return
    bad = sum(1 for c in sample if c == "\ufffd" or (c < " " and c not in "\t\n\r\f"))
    if bad / len(sample) > 0.1:
        raise ExtractionError("not text (undecodable bytes)")


def _extract_html(text: str, url: str | None) -> Extracted:
    try:
        doc = trafilatura.bare_extraction(text, url=url, with_metadata=True,
                                          include_comments=False, include_tables=True,
                                          config=_CONFIG)
    except Exception as exc:  # lxml and trafilatura raise a zoo; the reason is enough
        raise ExtractionError(f"HTML extraction failed ({type(exc).__name__})") from exc
    if doc is not None and (doc.text or "").strip():
        return Extracted(text=doc.text.strip(), title=doc.title or None,
                         published=doc.date or None)
    # Short pages fall below trafilatura's main-text threshold: take the plain body text.
    try:
        _, body_text, _ = trafilatura.baseline(text)
    except Exception as exc:
        raise ExtractionError(f"HTML extraction failed ({type(exc).__name__})") from exc
    return Extracted(text=(body_text or "").strip(),
                     title=doc.title if doc is not None else None)


def _extract_pdf(body: bytes, max_pages: int) -> Extracted:
    try:
        from pypdf import PdfReader
    except ImportError as exc:  # optional: reading PDFs needs pypdf
        raise ExtractionError("PDF support needs pypdf (pip install pypdf)") from exc
    try:
        reader = PdfReader(io.BytesIO(body))
        pages = [page.extract_text() or "" for page in reader.pages[:max_pages]]
        meta = reader.metadata
        title = meta.title if meta else None
        created = meta.creation_date if meta else None
    except Exception as exc:  # truncated or malformed PDFs raise many kinds of errors
        raise ExtractionError(f"unreadable PDF ({type(exc).__name__})") from exc
    return Extracted(text="\n\n".join(p.strip() for p in pages if p.strip()),
                     title=str(title) if title else None,
                     published=created.date().isoformat() if created else None)


def _parse_content_type(value: str | None) -> tuple[str | None, str | None]:
    if not value:
        return None, None
    mime, _, params = value.partition(";")
    charset = None
    for param in params.split(";"):
        key, _, val = param.partition("=")
        if key.strip().lower() == "charset":
            charset = val.strip().strip("\"'") or None
    return mime.strip().lower() or None, charset
