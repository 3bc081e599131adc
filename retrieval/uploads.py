"""Uploaded files -> what they are and their text, section by section, or a refusal.

Why a module of its own: an upload is hostile input from a person, not a page the
reader chose to fetch. Its type is sniffed from the bytes, never taken from the file
name or the browser's label (a ``.pdf`` that is HTML is HTML; a renamed executable is
refused), and every parser runs behind a limit checked *before* it runs:

    %PDF-            PDF (pypdf): encrypted and broken files refused, one section per
                     page ("report.pdf, p. 3"), at most ``max_pdf_pages`` pages
    PK + word/document.xml
                     DOCX (python-docx), after the zip's central directory passed the
                     bomb checks (members, total uncompressed size, compression ratio)
    valid UTF-8      HTML when the markup says so, Markdown when it has headings or a
                     Markdown name, else plain text; HTML and Markdown split at their
                     h1-h3 headings ("notes.md, § Install")
    anything else    refused (unsupported type)

Nothing here raises anything but :class:`UploadRejected`, whose ``kind`` the API maps to
a status (unsupported: 415; too_large: 413; invalid, encrypted, empty: 400). Synchronous
and CPU-bound: the app runs it in a worker thread.
"""

from __future__ import annotations

import codecs
import io
import re
import zipfile
from dataclasses import dataclass
from typing import Literal

from retrieval.corpus import _TextExtractor, _tidy

__all__ = ["DocumentKind", "ExtractLimits", "Section", "UploadRejected", "check_zip",
           "extract_sections", "sniff_upload"]

DocumentKind = Literal["pdf", "docx", "html", "markdown", "text"]
RejectKind = Literal["unsupported", "too_large", "invalid", "encrypted", "empty"]

MEDIA_TYPES: dict[str, str] = {
    "pdf": "application/pdf",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "html": "text/html", "markdown": "text/markdown", "text": "text/plain"}

_HTML_START = re.compile(
    r"^\s*(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html|head|body|meta|title|div|p|h[1-6]|"
    r"article|section|main|table|ul|ol)\b", re.IGNORECASE | re.DOTALL)
_MD_HEADING = re.compile(r"^#{1,6}\s+\S", re.MULTILINE)
_MD_NAMES = (".md", ".markdown", ".mdown", ".mkd")
_SECTION_MARK = "\ue000"  # private use: survives _tidy (not whitespace), not in text


class UploadRejected(Exception):
    """The file cannot be indexed; ``message`` tells its owner why (and what to do)."""

    def __init__(self, kind: RejectKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class ExtractLimits:
    """Caps checked before and while parsing (the size cap itself is the API's)."""

    max_pdf_pages: int = 2000
    max_text_chars: int = 5_000_000      # extracted text of one file
    zip_max_members: int = 2000
    zip_max_total: int = 200 * 1024 * 1024  # uncompressed bytes of all members
    zip_max_ratio: float = 100.0           # uncompressed / compressed, per large member
    zip_ratio_min_bytes: int = 1024 * 1024  # small members may compress better


@dataclass(frozen=True)
class Section:
    """One citable part of a file: a PDF page or a heading's section. ``anchor`` goes
    after ``#`` in its URL (``page=3``, ``section=2``); ``label`` after its file name."""

    anchor: str
    label: str
    text: str

    def title(self, filename: str) -> str:
        return f"{filename}, {self.label}" if self.label else filename


def sniff_upload(data: bytes, filename: str = "") -> DocumentKind:
    """What the bytes are (the name only tells Markdown from plain text)."""
    if not data:
        raise UploadRejected("empty", "The file is empty.")
    if data[:1024].lstrip().startswith(b"%PDF-"):
        return "pdf"
    if data.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                names = set(archive.namelist())
        except (zipfile.BadZipFile, ValueError, OSError):
            raise UploadRejected("invalid", "The file is a broken zip archive.") from None
        if "word/document.xml" in names:
            return "docx"
        raise UploadRejected("unsupported", "Unsupported file type: a zip archive that is "
                             "not a Word document (.docx). Upload PDF, DOCX, Markdown, "
                             "HTML or plain text.")
    text = _utf8(data)
    if _HTML_START.match(text[:4096]):
        return "html"
    if filename.lower().endswith(_MD_NAMES) or _MD_HEADING.search(text[:65536]):
        return "markdown"
    return "text"


def extract_sections(data: bytes, kind: DocumentKind, limits: ExtractLimits | None = None
                     ) -> list[Section]:
    """The file's sections with text (at least one, else :class:`UploadRejected`)."""
    limits = limits or ExtractLimits()
    if kind == "pdf":
        sections = _pdf(data, limits)
        if not sections:
            raise UploadRejected("empty", "The PDF has no text layer (a scanned document?): "
                                 "nothing to search. Run OCR on it first, then upload it.")
    elif kind == "docx":
        sections = _docx(data, limits)
    elif kind == "html":
        sections = _numbered(_html_sections(_utf8(data)))
    elif kind == "markdown":
        from markdown_it import MarkdownIt

        sections = _numbered(_html_sections(MarkdownIt().render(_utf8(data))))
    else:
        text = _tidy(_utf8(data))
        sections = [Section("", "", text)] if text else []
    if not sections:
        raise UploadRejected("empty", "The file has no text to search.")
    if sum(len(s.text) for s in sections) > limits.max_text_chars:
        raise UploadRejected("too_large", f"The file has more than {limits.max_text_chars:,} "
                             "characters of text; split it into smaller files.")
    return sections


def check_zip(data: bytes, limits: ExtractLimits) -> None:
    """Refuse a zip bomb from its central directory, before anything is decompressed:
    too many members, too much in all, or a large member compressed too well."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError):
        raise UploadRejected("invalid", "The Word document is a broken zip archive.") from None
    if len(members) > limits.zip_max_members:
        raise UploadRejected("too_large", f"The Word document has {len(members)} parts "
                             f"(the limit is {limits.zip_max_members}).")
    total = sum(m.file_size for m in members)
    if total > limits.zip_max_total:
        raise UploadRejected("too_large", f"The Word document unpacks to {total:,} bytes "
                             f"(the limit is {limits.zip_max_total:,}): refused as a "
                             "possible zip bomb.")
    for m in members:
        if m.file_size >= limits.zip_ratio_min_bytes and \
                m.file_size > limits.zip_max_ratio * max(m.compress_size, 1):
            raise UploadRejected("too_large", f"A part of the Word document ({m.filename}) "
                                 f"is compressed {m.file_size // max(m.compress_size, 1)}:1 "
                                 "(refused as a possible zip bomb).")


# --- formats ------------------------------------------------------------------------

def _utf8(data: bytes) -> str:
    """The bytes as text: valid UTF-8 (a BOM allowed), no NUL or control-character junk."""
    try:
        text = data.decode("utf-8-sig" if data.startswith(codecs.BOM_UTF8) else "utf-8")
    except UnicodeDecodeError:
        raise UploadRejected("unsupported", "Unsupported file type: not PDF, DOCX or UTF-8 "
                             "text. (Text files must be UTF-8: save it as UTF-8 and upload "
                             "it again.)") from None
    sample = text[:8192]
    bad = sum(1 for c in sample if c < " " and c not in "\t\n\r\f")
    if "\x00" in sample or (sample and bad / len(sample) > 0.01):
        raise UploadRejected("unsupported", "Unsupported file type: binary data.")
    return text


def _pdf(data: bytes, limits: ExtractLimits) -> list[Section]:
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise UploadRejected("encrypted", "The PDF is encrypted (password protected): "
                                 "remove the password, then upload it again.")
        pages = reader.pages
        if len(pages) > limits.max_pdf_pages:
            raise UploadRejected("too_large", f"The PDF has {len(pages)} pages (the limit is "
                                 f"{limits.max_pdf_pages}); split it into smaller files.")
        texts = [(page.extract_text() or "") for page in pages]
    except UploadRejected:
        raise
    except Exception as exc:  # pypdf raises many kinds for broken files; and an
        # encryption it cannot open without an extra library (DependencyError) is one
        if "encrypt" in f"{type(exc).__name__} {exc}".lower():
            raise UploadRejected("encrypted", "The PDF is encrypted in a way that cannot be "
                                 "opened here: remove the password, then upload it "
                                 "again.") from exc
        raise UploadRejected("invalid", f"The PDF is broken or unreadable "
                             f"({type(exc).__name__}).") from exc
    return [Section(f"page={n}", f"p. {n}", _tidy(text))
            for n, text in enumerate(texts, 1) if _tidy(text)]


def _docx(data: bytes, limits: ExtractLimits) -> list[Section]:
    check_zip(data, limits)
    try:
        import docx  # python-docx
    except ImportError as exc:
        raise UploadRejected("unsupported", "Word documents need python-docx "
                             "(pip install python-docx).") from exc
    try:
        document = docx.Document(io.BytesIO(data))
        paragraphs = [(p.style.name if p.style is not None else "", p.text)
                      for p in document.paragraphs]
        tables = ["\n".join(" | ".join(c.text.strip() for c in row.cells)
                            for row in table.rows) for table in document.tables]
    except Exception as exc:
        raise UploadRejected("invalid", f"The Word document is broken or unreadable "
                             f"({type(exc).__name__}).") from exc
    parts: list[tuple[str, list[str]]] = [("", [])]
    for style, text in paragraphs:
        if style.startswith(("Heading", "Title")) and text.strip():
            parts.append((text.strip(), [text]))
        elif text.strip():
            parts[-1][1].append(text)
    parts[-1][1].extend(t for t in tables if t.strip())
    return _numbered([(h, _tidy("\n".join(lines))) for h, lines in parts])


class _SectionExtractor(_TextExtractor):
    """Visible text with a mark before each h1-h3 (where a citable section starts)."""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip is None and tag in ("h1", "h2", "h3"):
            self.parts.append("\n" + _SECTION_MARK)
        super().handle_starttag(tag, attrs)


def _html_sections(html: str) -> list[tuple[str, str]]:
    """(heading, text) pairs; the text before the first heading has heading ""."""
    parser = _SectionExtractor()
    parser.feed(html)
    parser.close()
    out: list[tuple[str, str]] = []
    for i, part in enumerate(_tidy("".join(parser.parts)).split(_SECTION_MARK)):
        part = part.strip()
        if i == 0:
            out.append(("", part))
        else:
            heading, _, _ = part.partition("\n")
            out.append((heading.strip()[:120], part))
    return out


def _numbered(parts: list[tuple[str, str]]) -> list[Section]:
    """Sections numbered from 1 in file order; empty ones dropped. A file without
    headings is one section, cited by its name alone."""
    parts = [(h, t) for h, t in parts if t.strip()]
    if len(parts) == 1 and not parts[0][0]:
        return [Section("", "", parts[0][1])]
    return [Section(f"section={n}", f"§ {heading}" if heading else "start", text)
            for n, (heading, text) in enumerate(parts, 1)]
