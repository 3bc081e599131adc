"""Helpers for the retrieval tests: the real MiniLM loaded once per process, a fast
deterministic embedding model that counts its calls, and small documents."""

from __future__ import annotations

import functools
import hashlib
import os
import re
from typing import Any

import numpy as np

from retrieval.embeddings import EmbeddingCache, EmbeddingModel, SentenceTransformerModel
from retrieval.types import Document, SearchResult

os.environ.setdefault("HF_HUB_OFFLINE", "1")

__all__ = ["CountingModel", "document", "minilm"]


@functools.cache
def _minilm_st() -> Any:
    from sentence_transformers import SentenceTransformer

    from retrieval.embeddings import default_model_path

    return SentenceTransformer(str(default_model_path()), device="cpu")


def minilm(cache: EmbeddingCache | None = None) -> SentenceTransformerModel:
    """The packaged all-MiniLM-L6-v2 (loaded once), with the given cache."""
    return SentenceTransformerModel(cache=cache, st_model=_minilm_st())


class CountingModel(EmbeddingModel):
    """Hashed bag-of-words vectors: deterministic, lexical, instant; counts every call."""

    model_id = "counting-test-model"
    dimensions = 64

    def __init__(self, cache: EmbeddingCache | None = None) -> None:
        super().__init__(cache)
        self.calls = 0
        self.texts: list[str] = []

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        self.texts.extend(texts)
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[row, hashlib.md5(word.encode()).digest()[0] % self.dimensions] += 1.0
            out[row] /= max(float(np.linalg.norm(out[row])), 1e-9)
        return out


def document(n: int, title: str, text: str, url: str | None = None) -> Document:
    url = url or f"https://example.org/{n}"
    return Document(result=SearchResult(title=title, url=url, snippet="", provider="test",
                                        rank=n), text=text, title=title)
