"""Token-aware chunking: page text -> overlapping passages that fit the embedding model.

Chunks are measured in the embedding model's own tokens (its ``tokenizer.json``, read
with the fast ``tokenizers`` library, no torch) so a chunk never silently loses its tail
to the model's truncation (MiniLM reads at most 256 word pieces). Where the model ships
no fast tokenizer, a regex word splitter stands in; it undercounts word pieces a little,
which the default size leaves room for.

Chunk text is always a slice of the original text (token offsets map back to
characters), so citations quote the page exactly. A chunk's end snaps back to a sentence
or paragraph break when one lies in its second half, and the next chunk starts at the
first sentence start within the last ``overlap`` tokens (exactly ``overlap`` tokens back
when there is none), so a fact cut at a boundary is whole in one of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from retrieval.types import Document, Passage

__all__ = [
    "CHUNK_OVERLAP",
    "CHUNK_TOKENS",
    "Chunk",
    "FastTokenizer",
    "RegexTokenizer",
    "TokenSpans",
    "chunk_document",
    "chunk_text",
    "load_tokenizer",
]

# 200 word pieces + the title the embedder prepends + [CLS]/[SEP] stays under MiniLM's 256.
CHUNK_TOKENS = 200
# About two sentences: enough that a fact split at a boundary is whole in one chunk.
CHUNK_OVERLAP = 40

_SENTENCE_END = re.compile(r"[.!?:;]['\")\]]*$")


class TokenSpans(Protocol):
    """Anything that splits text into tokens and reports each token's character span."""

    def spans(self, text: str) -> list[tuple[int, int]]: ...


class FastTokenizer:
    """The embedding model's own tokenizer (a ``tokenizers.Tokenizer``), offsets only."""

    def __init__(self, tokenizer: object) -> None:
        self._tok = tokenizer
        # Long pages must not be cut at the model's limit: chunking needs every token.
        no_truncation = getattr(tokenizer, "no_truncation", None)
        if callable(no_truncation):
            no_truncation()

    @classmethod
    def from_file(cls, path: str | Path) -> FastTokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))

    def spans(self, text: str) -> list[tuple[int, int]]:
        encoding = self._tok.encode(text, add_special_tokens=False)  # type: ignore[attr-defined]
        return [(a, b) for a, b in encoding.offsets if b > a]


class RegexTokenizer:
    """Cheap stand-in: words and single punctuation marks (close to BERT's pre-split)."""

    _TOKEN = re.compile(r"\w+|[^\w\s]")

    def spans(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in self._TOKEN.finditer(text)]


def load_tokenizer(model_dir: str | Path | None) -> TokenSpans:
    """The model folder's fast tokenizer when it has one, else :class:`RegexTokenizer`."""
    if model_dir is not None:
        path = Path(model_dir) / "tokenizer.json"
        if path.is_file():
            return FastTokenizer.from_file(path)
    return RegexTokenizer()


@dataclass(frozen=True)
class Chunk:
    """A slice of a text: ``text == source[start:end]``; ``position`` counts chunks."""

    text: str
    position: int
    start: int
    end: int
    n_tokens: int


def _break_after(text: str, spans: list[tuple[int, int]], i: int) -> bool:
    """Does a sentence or paragraph end after token ``i``?"""
    if i + 1 >= len(spans):
        return True
    gap = text[spans[i][1]:spans[i + 1][0]]
    return "\n" in gap or bool(_SENTENCE_END.search(text[spans[i][0]:spans[i][1]]))


def chunk_text(text: str, tokenizer: TokenSpans, max_tokens: int = CHUNK_TOKENS,
               overlap: int = CHUNK_OVERLAP) -> list[Chunk]:
    """Split ``text`` into chunks of at most ``max_tokens`` tokens sharing ``overlap``."""
    if max_tokens < 1 or not 0 <= overlap < max_tokens // 2 + 1:
        raise ValueError("need max_tokens >= 1 and 0 <= overlap <= max_tokens // 2")
    spans = tokenizer.spans(text)
    chunks: list[Chunk] = []
    start, n = 0, len(spans)
    while start < n:
        end = min(start + max_tokens, n)
        if end < n:
            # Prefer to end at a sentence break in the chunk's second half.
            for i in range(end - 1, start + max_tokens // 2 - 1, -1):
                if _break_after(text, spans, i):
                    end = i + 1
                    break
        a, b = spans[start][0], spans[end - 1][1]
        chunks.append(Chunk(text[a:b], len(chunks), a, b, end - start))
        if end >= n:
            break
        # Start the next chunk at the first sentence start inside the overlap, so
        # passages read from a sentence's beginning; else overlap by exactly `overlap`.
        start = max(end - overlap, start + 1)
        for i in range(start, end):
            if _break_after(text, spans, i - 1):
                start = i
                break
    return chunks


def chunk_document(document: Document, source_id: int, tokenizer: TokenSpans,
                   max_tokens: int = CHUNK_TOKENS, overlap: int = CHUNK_OVERLAP
                   ) -> list[Passage]:
    """A document's passages, carrying its url, title and citation number."""
    return [Passage(text=c.text, url=document.url, title=document.title,
                    source_id=source_id, position=c.position)
            for c in chunk_text(document.text, tokenizer, max_tokens, overlap)]
