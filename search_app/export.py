"""Stored answers and threads as Markdown, with citations as footnotes.

Why footnotes: ``[citation:N]`` is the app's wire format, meaningless in a notes app or
a wiki; ``[^N]`` plus ``[^N]: [title](url)`` is what GitHub, Obsidian and pandoc render
as numbered references. Labels must be unique in a document, so a thread of several
answers labels turn T's source N ``[^T-N]`` (renderers renumber footnotes anyway).

The export holds what was stored and nothing else: the answer text as it was shown
(withheld sentences were never part of it), the question, and the sources. Answer text
is Markdown already and goes out as it is; questions, titles and URLs are plain strings
from users and web pages, so they are escaped (a ``]`` in a title or a ``)`` in a URL
would otherwise end the link early, a newline would end the footnote).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from urllib.parse import quote

from search_app.events import Source, SourcesEvent, event_from_dict
from search_app.grounding import normalize_citations
from search_app.store import AnswerRecord

__all__ = ["MARKDOWN_TYPE", "export_filename", "thread_markdown"]

MARKDOWN_TYPE = "text/markdown; charset=utf-8"
FILENAME_CHARS = 60  # of the slug, before ".md"

_MARKER = re.compile(r"\[citation:(\d+)\]")  # after normalize_citations
# Inline Markdown that a plain string could trigger: emphasis, code, links, HTML,
# entities, strikethrough, table cells, a heading's closing hashes.
_SPECIAL = re.compile(r"([\\`*_\[\]<>&~|#])")
# Scheme and authority: kept as they are (an IPv6 host has brackets); the rest is
# percent-encoded wherever Markdown or a link destination would misread it.
_AUTHORITY = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[A-Za-z0-9.\-:@\[\]%_~!$&'*+,;=]*")
_URL_SAFE = "/:?#@!$&'*+,;=%~-._"


def thread_markdown(records: Sequence[AnswerRecord], title: str | None = None) -> str:
    """One Markdown document: ``# question`` per answer (``## `` under ``# title`` when a
    title is given), the answer with footnote references, then its footnotes."""
    level = "##" if title else "#"
    parts = [f"# {_text(title)}\n"] if title else []
    for turn, record in enumerate(records, 1):
        prefix = f"{turn}-" if len(records) > 1 else ""
        parts.append(_answer(record, level, prefix))
    return "\n".join(parts)


def export_filename(records: Sequence[AnswerRecord], fallback: str = "answer") -> str:
    """``who-designed-the-eiffel-tower.md``: ASCII letters, digits and dashes only, from
    the first question, so every browser and file system takes it as it is."""
    question = records[0].query if records else ""
    ascii_text = unicodedata.normalize("NFKD", question).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    slug = slug[:FILENAME_CHARS].rstrip("-")
    return f"{slug or fallback}.md"


def _answer(record: AnswerRecord, level: str, prefix: str) -> str:
    sources = {s.number: s for s in _sources(record)}
    cited: list[int] = []

    def reference(match: re.Match[str]) -> str:
        number = int(match.group(1))
        if number not in sources:  # names no listed source: nothing to point at
            return ""
        if number not in cited:
            cited.append(number)
        return f"[^{prefix}{number}]"

    body = _MARKER.sub(reference, normalize_citations(record.answer)).strip()
    lines = [f"{level} {_text(record.query)}", "", body or "*(no answer text)*", ""]
    lines += [f"[^{prefix}{n}]: {_link(sources[n])}" for n in sorted(cited)]
    others = [s for n, s in sorted(sources.items()) if n not in cited]
    if others:
        if cited:
            lines.append("")
        lines += ["Other sources:", ""] + [f"- {_link(s)}" for s in others]
    return "\n".join(lines).rstrip("\n") + "\n"


def _sources(record: AnswerRecord) -> list[Source]:
    for stored in record.events:
        if stored.get("event") == SourcesEvent.name:
            event = event_from_dict(stored)
            assert isinstance(event, SourcesEvent)
            return event.sources
    return []


def _link(source: Source) -> str:
    label = _text(source.title or source.site or source.url) or "source"
    date = f", {_text(source.date)}" if source.date else ""
    if not re.match(r"^https?://", source.url, re.IGNORECASE):
        # Not a web link (javascript:, data:, ...): named, never made clickable.
        return f"{label} ({_text(source.url)}){date}" if source.url else f"{label}{date}"
    return f"[{label}]({_url(source.url)}){date}"


def _text(value: str) -> str:
    """A plain string as one line of inline Markdown that shows exactly that string."""
    return _SPECIAL.sub(r"\\\1", " ".join(value.split()))


def _url(url: str) -> str:
    """A link destination that ends where it should: spaces, brackets, parentheses,
    angle brackets, quotes, backslashes, control and non-ASCII characters encoded."""
    url = url.strip()
    head = _AUTHORITY.match(url)
    cut = head.end() if head else 0
    return url[:cut] + quote(url[cut:], safe=_URL_SAFE)
