"""The data that flows through retrieval, one type per stage.

Every provider returns :class:`SearchResult`; page reading turns results into
:class:`Document`; chunking and ranking produce :class:`Passage` with stable source ids
for citation. Plain dataclasses: cheap to build, easy to serialise with ``asdict``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Document", "Passage", "ReadStatus", "SearchResult"]


@dataclass(frozen=True)
class SearchResult:
    title: str
    url: str
    snippet: str
    provider: str
    rank: int
    published: str | None = None  # ISO 8601 date when the provider knows it


ReadStatus = Literal["ok", "snippet_fallback"]


@dataclass
class Document:
    """A search result after reading: the page's main text, or its snippet as a fallback."""

    result: SearchResult
    text: str
    title: str
    status: ReadStatus = "ok"
    reason: str | None = None  # why the page fell back to its snippet
    published: str | None = None
    fetch_ms: float | None = None

    @property
    def url(self) -> str:
        return self.result.url


@dataclass
class Passage:
    """A ranked chunk of a document. ``source_id`` is the document's 1-based number in the
    list of sources handed to the model, so ``[citation:N]`` maps back to it."""

    text: str
    url: str
    title: str
    source_id: int
    position: int  # chunk index within its document
    score: float = 0.0
    scores: dict[str, float] = field(default_factory=dict)  # per ranker: dense, bm25, ...
