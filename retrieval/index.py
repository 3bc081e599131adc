"""The persistent local index: page text in SQLite, BM25 (bm25s) and dense vectors (FAISS).

Layout under ``<data_dir>``::

    index/index.sqlite        sources (path/URL, fingerprint, mtime, size) and passages
    index/snapshot/           vectors.npy, ids.npy, bm25/, snapshot.json: what search loads
    cache/embeddings.sqlite   the embedding cache, shared with the answer pipeline

SQLite is the truth; the snapshot is derived and rebuilt whole after any change. Rebuilding
is cheap because only new text is embedded (everything else is a cache hit) and BM25 over
10k passages indexes in about a second, and it keeps the files simple: no in-place FAISS
or BM25 edits. Files whose mtime and size are unchanged are not even read; a re-read file
whose text is unchanged keeps its passages; files that disappeared are removed.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import shutil
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.chunking import chunk_text
from retrieval.corpus import SourceText, iter_files, read_file
from retrieval.embeddings import EmbeddingCache, EmbeddingModel, SentenceTransformerModel
from retrieval.filters import NO_FILTERS, SearchFilters
from retrieval.ranking import (
    DenseIndex,
    RankOptions,
    SparseIndex,
    embedding_text,
    gpu_resources,
    rank_candidates,
)
from retrieval.types import Document, Passage, SearchResult

__all__ = [
    "Fetcher",
    "IndexNotBuilt",
    "LocalIndex",
    "ModelMismatch",
    "ProgressFn",
    "UpdateReport",
    "UrlFetchUnavailable",
    "load_model",
]

Fetcher = Callable[[str], Document | Awaitable[Document]]
ProgressFn = Callable[[str, int, int], None]  # (stage, advance, total)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sources (key TEXT PRIMARY KEY, kind TEXT NOT NULL, url TEXT,
    title TEXT, fingerprint TEXT, mtime REAL, size INTEGER);
CREATE TABLE IF NOT EXISTS passages (id INTEGER PRIMARY KEY, source_key TEXT NOT NULL,
    position INTEGER NOT NULL, text TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS passages_source ON passages (source_key);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


class IndexNotBuilt(RuntimeError):
    """Search before any ``search-app index`` run."""


class ModelMismatch(RuntimeError):
    """The index was built with another embedding model than the one given."""


class UrlFetchUnavailable(RuntimeError):
    """A URL was given but no fetch function (``retrieval.reader``) is available."""


@dataclass
class UpdateReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    documents: int = 0
    passages: int = 0
    seconds: float = 0.0
    failed: list[str] = field(default_factory=list)  # "URL: why" for unreadable pages

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_model(data_dir: str | Path, model: str | None = None, device: str = "auto"
               ) -> SentenceTransformerModel:
    """An embedding model whose cache lives in ``<data_dir>/cache/embeddings.sqlite``."""
    cache = EmbeddingCache(Path(data_dir) / "cache" / "embeddings.sqlite")
    return SentenceTransformerModel(model, device=device, cache=cache)


class LocalIndex:
    """Build, update and search the index under ``data_dir``."""

    def __init__(self, data_dir: str | Path, model: EmbeddingModel,
                 options: RankOptions | None = None, *, use_gpu: bool | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / "index"
        self.root.mkdir(parents=True, exist_ok=True)
        self.model = model
        self.options = options or RankOptions(max_per_source=2)
        self._use_gpu = use_gpu
        self._db = sqlite3.connect(str(self.root / "index.sqlite"), check_same_thread=False)
        self._db.executescript(_SCHEMA)
        self._loaded: dict[str, Any] | None = None
        self._loaded_stamp = 0
        self._load_lock = threading.Lock()  # searches run in worker threads

    # --- building ------------------------------------------------------------------

    def update(self, targets: Sequence[str | Path], *, fetch: Fetcher | None = None,
               progress: ProgressFn | None = None) -> UpdateReport:
        """Add or refresh files, folders and URLs; drop indexed files that are gone."""
        known = {k: (m, s) for k, m, s in
                 self._db.execute("SELECT key, mtime, size FROM sources WHERE kind='file'")}
        files: list[Path] = []
        urls: list[str] = []
        for target in targets:
            if str(target).startswith(("http://", "https://")):
                urls.append(str(target))
                continue
            path = Path(target).expanduser().resolve()
            if not path.exists():
                raise FileNotFoundError(f"no such file or folder: {target}")
            files.extend(iter_files(path))
        if urls and fetch is None:
            raise UrlFetchUnavailable(
                "indexing URLs needs a page fetcher (retrieval.reader), which is not "
                "available; index local files or folders instead")
        sources: list[SourceText] = []
        skipped = 0
        for path in files:
            stat = path.stat()
            if known.get(str(path)) == (stat.st_mtime, stat.st_size):
                skipped += 1  # unchanged by mtime and size: not even read
            else:
                sources.append(read_file(path))
            if progress:
                progress("reading", 1, len(files) + len(urls))
        failed = []
        for url in urls:
            doc = fetch(url)  # type: ignore[misc]
            if inspect.isawaitable(doc):
                doc = asyncio.run(_awaited(doc))
            if doc.status == "ok" and doc.text.strip():
                sources.append(SourceText(key=url, kind="url", url=doc.url, title=doc.title,
                                          text=doc.text))
            else:  # keep what was indexed before rather than a snippet
                failed.append(f"{url}: {doc.reason or 'no text'}")
            if progress:
                progress("reading", 1, len(files) + len(urls))
        gone = [k for k in known if not Path(k).exists()]
        report = self.upsert(sources, remove=gone, progress=progress)
        report.unchanged += skipped
        report.failed = failed
        return report

    def upsert(self, sources: Iterable[SourceText], *, remove: Sequence[str] = (),
               replace_kind: str | None = None, progress: ProgressFn | None = None
               ) -> UpdateReport:
        """Store sources whose fingerprint changed, remove others, rebuild if needed.

        ``replace_kind``: sources of that kind not in ``sources`` are removed too (how a
        corpus is replaced by a newer version).
        """
        started = time.perf_counter()
        report = UpdateReport()
        tokenizer = self.model.tokenizer()
        opts = self.options
        seen: set[str] = set()
        sources = list(sources)
        with self._db:
            for src in sources:
                if progress:
                    progress("chunking", 1, len(sources))
                seen.add(src.key)
                row = self._db.execute("SELECT fingerprint FROM sources WHERE key=?",
                                       (src.key,)).fetchone()
                # Chunking settings and the model's tokenizer shape the passages too.
                fingerprint = (f"{src.fingerprint}:{opts.chunk_tokens}:{opts.chunk_overlap}:"
                               f"{self.model.model_id}")
                if row is not None and row[0] == fingerprint:
                    report.unchanged += 1
                else:
                    self._db.execute("DELETE FROM passages WHERE source_key=?", (src.key,))
                    chunks = chunk_text(src.text, tokenizer, opts.chunk_tokens,
                                        opts.chunk_overlap)
                    self._db.executemany(
                        "INSERT INTO passages (source_key, position, text) VALUES (?,?,?)",
                        [(src.key, c.position, c.text) for c in chunks])
                    report.added += row is None
                    report.updated += row is not None
                self._db.execute(
                    "INSERT OR REPLACE INTO sources VALUES (?,?,?,?,?,?,?)",
                    (src.key, src.kind, src.url, src.title, fingerprint, src.mtime, src.size))
            stale = list(remove)
            if replace_kind is not None:
                stale += [k for (k,) in self._db.execute(
                    "SELECT key FROM sources WHERE kind=?", (replace_kind,)) if k not in seen]
            for key in stale:
                self._db.execute("DELETE FROM passages WHERE source_key=?", (key,))
                report.removed += self._db.execute("DELETE FROM sources WHERE key=?",
                                                   (key,)).rowcount
        if report.added or report.updated or report.removed or not self.is_built():
            self._rebuild(progress)
        report.documents, report.passages = self.counts()
        report.seconds = round(time.perf_counter() - started, 3)
        return report

    def _rebuild(self, progress: ProgressFn | None) -> None:
        """Embed (cache first) and index every passage; swap the snapshot in atomically."""
        rows = self._db.execute("SELECT p.id, s.title, p.text FROM passages p JOIN sources s "
                                "ON s.key = p.source_key ORDER BY p.id").fetchall()
        texts = [embedding_text(title or "", text) for _, title, text in rows]
        step = (lambda n: progress("embedding", n, len(texts))) if progress else None
        vectors = self.model.embed_multi(texts, progress=step)
        new, final = self.root / "snapshot.new", self.root / "snapshot"
        shutil.rmtree(new, ignore_errors=True)
        new.mkdir()
        np.save(new / "vectors.npy", vectors)
        np.save(new / "ids.npy", np.array([r[0] for r in rows], dtype=np.int64))
        if texts:
            SparseIndex.build(texts).save(new / "bm25")
        (new / "snapshot.json").write_text(json.dumps({
            "model_id": self.model.model_id, "dimensions": self.model.dimensions,
            "passages": len(texts), "built": time.time()}))
        old = self.root / "snapshot.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        new.rename(final)
        shutil.rmtree(old, ignore_errors=True)

    # --- metadata ------------------------------------------------------------------

    def is_built(self) -> bool:
        return (self.root / "snapshot" / "snapshot.json").is_file()

    def counts(self) -> tuple[int, int]:
        """(documents, passages) stored."""
        docs = self._db.execute("SELECT COUNT(*) FROM sources").fetchone()[0]
        passages = self._db.execute("SELECT COUNT(*) FROM passages").fetchone()[0]
        return int(docs), int(passages)

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # --- searching -----------------------------------------------------------------

    def load(self) -> dict[str, Any]:
        """The snapshot in memory; reloaded when an index run replaced it on disk."""
        with self._load_lock:
            return self._load()

    def _load(self) -> dict[str, Any]:
        marker = self.root / "snapshot" / "snapshot.json"
        try:
            stamp = marker.stat().st_mtime_ns
        except FileNotFoundError:
            raise IndexNotBuilt(f"no local index under {self.data_dir}: run `search-app "
                                "index PATH` or `search-app index --default-corpus`") from None
        if self._loaded is not None and stamp == self._loaded_stamp:
            return self._loaded
        folder = marker.parent
        meta = json.loads(marker.read_text())
        if meta["model_id"] != self.model.model_id:
            raise ModelMismatch(f"the index was built with {meta['model_id']!r}, not "
                                f"{self.model.model_id!r}: pass --embedding-model "
                                f"{meta['model_id']} or rebuild the index")
        ids = np.load(folder / "ids.npy")
        rows, dates = {}, {}
        for r in self._db.execute(
                "SELECT p.id, p.source_key, p.position, p.text, s.title, s.url, s.kind, "
                "s.mtime FROM passages p JOIN sources s ON s.key = p.source_key"):
            rows[r[0]] = r[1:6]
            if r[6] == "file" and r[7]:  # a file's date is its modification day (UTC)
                dates[r[5]] = datetime.fromtimestamp(r[7], UTC).date().isoformat()
        vectors = np.load(folder / "vectors.npy")
        self._loaded = {
            "passages": [rows[int(i)] for i in ids],
            "dates": dates,  # url -> ISO date, for the documents that have one
            "vectors": vectors,
            "dense": DenseIndex(vectors, gpu=gpu_resources() if self._use_gpu in (None, True)
                                else None),
            "sparse": SparseIndex.load(folder / "bm25") if len(ids) else None,
        }
        self._loaded_stamp = stamp
        return self._loaded

    def passages(self, query: str, k: int = 8, *, max_per_source: int | None = None,
                 filters: SearchFilters = NO_FILTERS) -> list[Passage]:
        """Top passages; ``source_id`` numbers their documents in order of appearance.

        With filters, both retrievers search only the passages that pass them (exact
        scores over that subset), so a narrow site or date filter still finds its best
        passages instead of whatever of the global top candidates survives it."""
        snap = self.load()
        rows = snap["passages"]
        if not rows or k <= 0:
            return []
        n = self.options.candidates
        query_vector = self.model.embed_multi([query])[0]
        bm25 = snap["sparse"].scores(query)
        if filters.active:
            dates = snap["dates"]
            allowed = np.fromiter(
                (filters.admits_url(r[4]) and filters.admits_date(dates.get(r[4]),
                                                                  trust_undated=False)
                 for r in rows), dtype=bool, count=len(rows))
            subset = np.flatnonzero(allowed)
            if not subset.size:
                return []
            sims = snap["vectors"][subset] @ np.asarray(query_vector, dtype=np.float32)
            order = np.argsort(-sims)[:n]
            ids, scores = subset[order], sims[order]
            bm25 = np.where(allowed, bm25, 0.0)
        else:
            ids, scores = snap["dense"].search(query_vector, n)
        dense = dict(zip(ids.tolist(), scores.tolist(), strict=True))
        top = np.argpartition(-bm25, min(n, len(bm25) - 1))[:n]
        sparse = {int(i): float(bm25[i]) for i in top if bm25[i] > 0}
        candidates = _Rows(rows)
        opts = self.options if max_per_source is None else replace(
            self.options, max_per_source=max_per_source)
        ranked = rank_candidates(query, candidates, snap["vectors"], dense, sparse, k, opts,
                                 group=candidates.keys())
        numbers: dict[str, int] = {}
        return [replace(p, source_id=numbers.setdefault(p.url, len(numbers) + 1))
                for p in ranked]

    def search(self, query: str, k: int = 10, filters: SearchFilters = NO_FILTERS
               ) -> list[SearchResult]:
        """The ``local`` search provider: one result per document, best passage as snippet."""
        passages = self.passages(query, k, max_per_source=1, filters=filters)
        dates = self.load()["dates"]
        return [SearchResult(title=p.title, url=p.url, snippet=p.text, provider="local",
                             rank=i, published=dates.get(p.url))
                for i, p in enumerate(passages, 1)]

    async def asearch(self, query: str, k: int = 10, filters: SearchFilters = NO_FILTERS
                      ) -> list[SearchResult]:
        return await asyncio.to_thread(self.search, query, k, filters)

    def close(self) -> None:
        self._db.close()


class _Rows:
    """Passages built on demand from snapshot rows: a query touches a few dozen of 10k."""

    def __init__(self, rows: list[tuple[str, int, str, str, str]]) -> None:
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int) -> Passage:
        _, position, text, title, url = self._rows[i]
        return Passage(text=text, url=url, title=title, source_id=0, position=position)

    def keys(self) -> _Keys:
        return _Keys(self._rows)


class _Keys:
    def __init__(self, rows: list[tuple[str, int, str, str, str]]) -> None:
        self._rows = rows

    def __getitem__(self, i: int) -> str:
        return self._rows[i][0]


async def _awaited(awaitable: Awaitable[Document]) -> Document:
    return await awaitable

