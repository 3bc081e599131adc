"""Rank passages for a question: dense (FAISS) + BM25, fused, de-duplicated, diversified.

Fusion is normalized score fusion by default: each retriever's scores are min-max scaled
over its candidates, then ``0.7 * dense + 0.3 * bm25``. Why not reciprocal rank fusion:
RRF throws the score gaps away, so a passage that is only a weak match in both lists
beats one that is a clear dense winner and absent from BM25 (a common case for
paraphrased questions, where BM25 misses). On the FAQ dev set of
``bench/retrieval_bench.py`` (188 questions) recall@5 was BM25 0.78, RRF 0.89, convex
0.5/0.5 0.93, convex 0.7/0.3 0.96, dense alone 0.96. The 30% lexical share is kept on
purpose: exact identifiers, error messages and rare names are where BM25 beats a small
embedding model, and that dev set has few of them. ``fusion="rrf"`` remains available.

After fusion a greedy MMR pass picks passages one at a time: relevance (fused score, or
the cross-encoder's when one is configured, min-max scaled over the pool) minus
similarity to what is already picked; it skips near-duplicates (the same normalized
text, or cosine above ``dedupe_threshold`` to a picked passage) and sources that hit
``max_per_source``.
"""

from __future__ import annotations

import asyncio
import functools
import math
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from retrieval.chunking import CHUNK_OVERLAP, CHUNK_TOKENS, Chunk, chunk_text
from retrieval.embeddings import EmbeddingModel
from retrieval.types import Document, Passage

__all__ = [
    "CrossEncoderReranker",
    "DenseIndex",
    "RankOptions",
    "Ranker",
    "Reranker",
    "SparseIndex",
    "analyze",
    "bm25_scores",
    "embedding_text",
    "fuse",
    "gpu_resources",
    "rank_candidates",
    "select_passages",
]

Fusion = Literal["rrf", "convex"]


@dataclass(frozen=True)
class RankOptions:
    """Tunables; the defaults suit ~8 pages of a few thousand words each."""

    chunk_tokens: int = CHUNK_TOKENS
    chunk_overlap: int = CHUNK_OVERLAP
    fusion: Fusion = "convex"
    rrf_k: int = 60                  # rrf only: the constant from Cormack et al. (2009)
    dense_weight: float = 0.7        # convex only: the dense share (see module docstring)
    candidates: int = 100            # per retriever when searching a large index
    pool: int = 40                   # fused candidates that MMR chooses from
    max_per_source: int = 3
    dedupe_threshold: float = 0.95   # cosine; above it two passages say the same thing
    mmr_lambda: float = 0.7          # 1.0: relevance only; lower: more diversity
    rerank_top: int = 30             # fused candidates the cross-encoder re-scores


def embedding_text(title: str, text: str) -> str:
    """What is embedded and BM25-indexed: a chunk alone often lacks its subject."""
    return f"{title}\n{text}" if title else text


@functools.cache
def _stemmer() -> Any:
    try:
        import Stemmer  # PyStemmer
    except ImportError:  # BM25 still works, only "commits" no longer matches "commit"
        return None
    return Stemmer.Stemmer("english")


def analyze(texts: Sequence[str]) -> list[list[str]]:
    """BM25 terms: lower-cased words, English stopwords dropped, Snowball-stemmed."""
    import bm25s

    return bm25s.tokenize(list(texts), stopwords="en_plus", stemmer=_stemmer(),
                          return_ids=False, show_progress=False)


class SparseIndex:
    """BM25 (bm25s, Lucene variant) over a list of texts; ids are list positions."""

    def __init__(self, bm25: Any) -> None:
        self.bm25 = bm25

    @classmethod
    def build(cls, texts: Sequence[str]) -> SparseIndex:
        import bm25s

        bm25 = bm25s.BM25()
        bm25.index(analyze(texts), show_progress=False)
        return cls(bm25)

    def scores(self, query: str) -> np.ndarray:
        """One BM25 score per indexed text (zeros when no query term is known)."""
        vocab = self.bm25.vocab_dict
        terms = [t for t in analyze([query])[0] if t in vocab]
        if not terms:
            return np.zeros(int(self.bm25.scores["num_docs"]), dtype=np.float32)
        return np.asarray(self.bm25.get_scores(terms), dtype=np.float32)

    def save(self, folder: str | Path) -> None:
        self.bm25.save(str(folder), show_progress=False)

    @classmethod
    def load(cls, folder: str | Path) -> SparseIndex:
        import bm25s

        return cls(bm25s.BM25.load(str(folder), show_progress=False))


def bm25_scores(query_terms: Sequence[str], docs: Sequence[tuple[Counter[str], int]],
                k1: float = 1.5, b: float = 0.75) -> np.ndarray:
    """bm25s's Lucene BM25, computed straight from term counts.

    For the ~100 passages of one question this takes well under a millisecond, where
    building a bm25s index per question costs several; the formula and the analyzer
    are the same, so scores match :class:`SparseIndex` exactly (tested).
    """
    n = len(docs)
    out = np.zeros(n, dtype=np.float32)
    if n == 0:
        return out
    avg = sum(length for _, length in docs) / n or 1.0
    norms = [k1 * ((1 - b) + b * length / avg) for _, length in docs]
    for term in query_terms:
        hits = [(i, counts[term]) for i, (counts, _) in enumerate(docs) if term in counts]
        if not hits:
            continue
        idf = math.log(1 + (n - len(hits) + 0.5) / (len(hits) + 0.5))
        for i, tf in hits:
            out[i] += idf * tf / (norms[i] + tf)
    return out


class _LRU:
    """A small thread-safe LRU map (pages and passages seen again skip re-work)."""

    def __init__(self, size: int) -> None:
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        value = make()
        with self._lock:
            self._data[key] = value
            if len(self._data) > self._size:
                self._data.popitem(last=False)
        return value


def gpu_resources() -> Any | None:
    """FAISS GPU resources when faiss-gpu and a GPU are present, else None.

    Made once per owner (a Ranker, a LocalIndex) and reused: creating them allocates
    scratch memory on the device, far too slow to do per query.
    """
    try:
        import faiss
    except ImportError:
        return None
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        return None
    resources = faiss.StandardGpuResources()
    resources.setTempMemory(256 * 1024 * 1024)
    return resources


class DenseIndex:
    """Exact inner-product search (unit vectors: cosine) with FAISS, on the GPU if given
    GPU resources; plain numpy when faiss is not installed (it is an optional extra)."""

    _GPU_MAX_K = 2048  # FAISS GPU flat search returns at most this many hits

    def __init__(self, vectors: np.ndarray, gpu: Any | None = None) -> None:
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.size, self.on_gpu = len(self.vectors), False
        try:
            import faiss
        except ImportError:
            self._index = None
            return
        self._faiss = faiss
        index = faiss.IndexFlatIP(self.vectors.shape[1])
        index.add(self.vectors)
        if gpu is not None:
            index, self.on_gpu = faiss.index_cpu_to_gpu(gpu, 0, index), True
        self._index = index

    def search(self, query: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores) of the ``n`` nearest vectors, best first."""
        n = min(n, self.size, self._GPU_MAX_K if self.on_gpu else self.size)
        if n <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        if self._index is None:
            scores = self.vectors @ q[0]
            ids = np.argpartition(-scores, n - 1)[:n]
            ids = ids[np.argsort(-scores[ids])]
            return ids, scores[ids]
        if not self.on_gpu:
            # One query vector gains nothing from OpenMP threads, and waking them costs
            # more than the search (10k x 384 on 2 busy cores: 16 ms vs 0.25 ms).
            self._faiss.omp_set_num_threads(1)
        scores, ids = self._index.search(q, n)
        keep = ids[0] >= 0
        return ids[0][keep], scores[0][keep]


def fuse(dense: dict[int, float], sparse: dict[int, float], method: Fusion = "convex",
         rrf_k: int = 60, dense_weight: float = 0.7) -> dict[int, float]:
    """Candidate id -> fused score, from each retriever's candidate id -> score."""
    fused: dict[int, float] = {}
    if method == "rrf":
        for scores in (dense, sparse):
            ranked = sorted(scores, key=lambda i: scores[i], reverse=True)
            for rank, i in enumerate(ranked, 1):
                fused[i] = fused.get(i, 0.0) + 1.0 / (rrf_k + rank)
        return fused
    if method != "convex":
        raise ValueError(f"unknown fusion {method!r}: use 'rrf' or 'convex'")
    for scores, weight in ((dense, dense_weight), (sparse, 1.0 - dense_weight)):
        if not scores:
            continue
        low, high = min(scores.values()), max(scores.values())
        span = high - low or 1.0
        for i, s in scores.items():
            fused[i] = fused.get(i, 0.0) + weight * (s - low) / span
    return fused


def _minmax(values: np.ndarray) -> np.ndarray:
    if values.size == 0:
        return values
    span = float(values.max() - values.min())
    return (values - values.min()) / span if span > 0 else np.ones_like(values)


def select_passages(relevance: np.ndarray, vectors: np.ndarray, sources: Sequence[Any],
                    k: int, *, max_per_source: int | None = 3,
                    dedupe_threshold: float = 0.95, mmr_lambda: float = 0.7
                    ) -> list[int]:
    """Greedy MMR over a candidate pool; returns pool indices in the order picked.

    ``relevance`` in [0, 1] and unit ``vectors`` are per candidate; ``sources`` names
    each candidate's document for the per-source cap.
    """
    n = len(relevance)
    picked: list[int] = []
    per_source: Counter[Any] = Counter()
    max_sim = np.zeros(n, dtype=np.float32)
    allowed = np.ones(n, dtype=bool)
    while len(picked) < k:
        mmr = mmr_lambda * relevance - (1.0 - mmr_lambda) * np.maximum(max_sim, 0.0)
        mmr = np.where(allowed, mmr, -np.inf)
        best = int(np.argmax(mmr)) if n else 0
        if n == 0 or not np.isfinite(mmr[best]):
            break
        picked.append(best)
        allowed[best] = False
        per_source[sources[best]] += 1
        if max_per_source is not None and per_source[sources[best]] >= max_per_source:
            allowed &= np.array([s != sources[best] for s in sources])
        max_sim = np.maximum(max_sim, vectors @ vectors[best])
        allowed &= max_sim <= dedupe_threshold
    return picked


class Reranker(Protocol):
    """Scores (query, passage) pairs; higher is more relevant."""

    def score(self, query: str, texts: Sequence[str]) -> Sequence[float]: ...


class CrossEncoderReranker:
    """A sentence-transformers ``CrossEncoder`` from a folder the user supplies.

    No trained cross-encoder ships on PyPI, so there is no default. ``model`` may also be
    any object with CrossEncoder's ``predict(pairs)`` (tests pass a fake one).
    """

    def __init__(self, model: str | Path | Any, *, device: str = "auto",
                 batch_size: int = 32) -> None:
        if isinstance(model, str | Path):
            from sentence_transformers import CrossEncoder

            from retrieval.embeddings import pick_device

            model = CrossEncoder(str(model), device=pick_device(device))
        self.model = model
        self.batch_size = batch_size

    def score(self, query: str, texts: Sequence[str]) -> Sequence[float]:
        pairs = [(query, t) for t in texts]
        scores = self.model.predict(pairs, batch_size=self.batch_size,
                                    show_progress_bar=False)
        return [float(s) for s in np.asarray(scores, dtype=np.float32).reshape(-1)]


class Ranker:
    """Chunk, embed (cached), score and pick passages for one question's documents."""

    def __init__(self, model: EmbeddingModel, options: RankOptions | None = None,
                 reranker: Reranker | None = None, *, use_gpu: bool | None = None) -> None:
        self.model = model
        self.options = options or RankOptions()
        self.reranker = reranker
        self._tokenizer = model.tokenizer()
        self._gpu = gpu_resources() if use_gpu in (None, True) else None
        self._chunks = _LRU(2048)  # page text -> its chunks
        self._terms = _LRU(32768)  # passage text -> BM25 term counts

    async def rank(self, query: str, documents: list[Document], k: int) -> list[Passage]:
        """The top ``k`` passages; the work runs in a thread so the loop keeps serving."""
        return await asyncio.to_thread(self.rank_sync, query, documents, k)

    def rank_sync(self, query: str, documents: list[Document], k: int) -> list[Passage]:
        opts = self.options
        passages = [Passage(text=c.text, url=doc.url, title=doc.title, source_id=sid,
                            position=c.position)
                    for sid, doc in enumerate(documents, 1) for c in self._chunk(doc.text)]
        if not passages or k <= 0:
            return []
        texts = [embedding_text(p.title, p.text) for p in passages]
        vectors = self.model.embed_multi([*texts, query])
        query_vector, vectors = vectors[-1], vectors[:-1]
        dense_ids, dense_scores = DenseIndex(vectors, gpu=self._gpu).search(
            query_vector, len(passages))
        dense = dict(zip(dense_ids.tolist(), dense_scores.tolist(), strict=True))
        counts = [self._terms.get(t, lambda t=t: _term_counts(t)) for t in texts]
        bm25 = bm25_scores(analyze([query])[0], counts)
        sparse = {i: float(s) for i, s in enumerate(bm25) if s > 0}
        return rank_candidates(query, passages, vectors, dense, sparse, k, opts,
                               self.reranker)

    def _chunk(self, text: str) -> list[Chunk]:
        opts = self.options
        return self._chunks.get(text, lambda: chunk_text(
            text, self._tokenizer, opts.chunk_tokens, opts.chunk_overlap))


def _term_counts(text: str) -> tuple[Counter[str], int]:
    terms = analyze([text])[0]
    return Counter(terms), len(terms)


def rank_candidates(query: str, passages: Sequence[Passage], vectors: np.ndarray,
                    dense: dict[int, float], sparse: dict[int, float], k: int,
                    opts: RankOptions, reranker: Reranker | None = None,
                    group: Sequence[Any] | None = None) -> list[Passage]:
    """Fuse, optionally re-rank, then MMR-select; shared by :class:`Ranker` and the index.

    ``group`` keys the per-source cap (default: each passage's ``source_id``).
    """
    fused = fuse(dense, sparse, opts.fusion, opts.rrf_k, opts.dense_weight)
    pool = sorted(fused, key=lambda i: fused[i], reverse=True)[:max(opts.pool, 2 * k)]
    if not pool:
        return []
    relevance = _minmax(np.array([fused[i] for i in pool], dtype=np.float32))
    rerank: dict[int, float] = {}
    if reranker is not None:
        pool = pool[:max(opts.rerank_top, k)]
        ce = reranker.score(query, [passages[i].text for i in pool])
        rerank = dict(zip(pool, ce, strict=True))
        order = sorted(range(len(pool)), key=lambda j: ce[j], reverse=True)
        pool = [pool[j] for j in order]
        relevance = _minmax(np.array([ce[j] for j in order], dtype=np.float32))
    # The same text under another title (a mirror, a syndicated copy) embeds a little
    # differently: catch those exactly, the cosine threshold catches the rest.
    seen: set[str] = set()
    unique = []
    for j, i in enumerate(pool):
        norm = " ".join(passages[i].text.lower().split())
        if norm not in seen:
            seen.add(norm)
            unique.append(j)
    pool, relevance = [pool[j] for j in unique], relevance[unique]
    keys = group if group is not None else [p.source_id for p in passages]
    chosen = select_passages(relevance, vectors[pool], [keys[i] for i in pool], k,
                             max_per_source=opts.max_per_source,
                             dedupe_threshold=opts.dedupe_threshold,
                             mmr_lambda=opts.mmr_lambda)
    out = []
    for j in chosen:
        i = pool[j]
        scores = {"dense": dense.get(i, 0.0), "bm25": sparse.get(i, 0.0), "fused": fused[i]}
        if i in rerank:
            scores["rerank"] = float(rerank[i])
        out.append(replace(passages[i], score=float(relevance[j]),
                           scores={n: round(float(v), 6) for n, v in scores.items()}))
    return out
