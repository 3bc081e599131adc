"""Ranking with the real MiniLM on a small hand-made set, plus fusion/MMR/cap/dedupe."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pytest

from retrieval.embeddings import EmbeddingCache
from retrieval.ranking import (
    CrossEncoderReranker,
    DenseIndex,
    Ranker,
    RankOptions,
    SparseIndex,
    analyze,
    bm25_scores,
    embedding_text,
    fuse,
    select_passages,
)
from retrieval.types import Document
from tests.support.retrieval_fixtures import document, minilm

DOCS = [
    document(1, "Honey bees", "Honey bees collect nectar from flowers and store it in the "
             "hive, where enzymes and evaporation turn it into honey over several days."),
    document(2, "Tides", "Tides are the regular rise and fall of the sea level, caused by "
             "the gravitational pull of the Moon and the Sun acting on the Earth's oceans."),
    document(3, "Photosynthesis", "Plants use sunlight, water and carbon dioxide to make "
             "glucose and release oxygen; this happens in the chloroplasts of leaf cells."),
    document(4, "Compilers", "A compiler translates source code written in a high-level "
             "programming language into machine code that a processor can execute."),
    document(5, "Seasons", "The Earth's axis is tilted about 23.4 degrees, so each "
             "hemisphere receives more direct sunlight for part of the year: summer."),
    document(6, "Vaccines", "Vaccines train the immune system by exposing it to a harmless "
             "piece or weakened form of a pathogen, so it can respond faster later."),
]

QUESTIONS = [
    ("why does the ocean go up and down twice a day", "Tides"),
    ("how do insects make a sweet food from flowers", "Honey bees"),
    ("how do green plants get energy from light", "Photosynthesis"),
    ("what turns a program into instructions the CPU runs", "Compilers"),
    ("why is it warmer in July than in January", "Seasons"),
    ("how does an injection protect you from a disease", "Vaccines"),
]


@pytest.fixture(scope="module")
def ranker() -> Ranker:
    return Ranker(minilm(EmbeddingCache(":memory:")))


@pytest.mark.parametrize(("question", "title"), QUESTIONS)
def test_relevant_passage_first(ranker: Ranker, question: str, title: str) -> None:
    top = ranker.rank_sync(question, DOCS, 3)
    assert top[0].title == title
    assert top[0].score == 1.0 and top[0].scores["dense"] > top[1].scores["dense"]


def test_source_ids_follow_document_order(ranker: Ranker) -> None:
    for passage in ranker.rank_sync("sunlight", DOCS, 6):
        assert DOCS[passage.source_id - 1].url == passage.url
        assert DOCS[passage.source_id - 1].title == passage.title


def test_per_source_cap() -> None:
    long_doc = document(1, "Bees", " ".join(
        f"Fact {i}: honey bees turn flower nectar into honey in the hive." for i in range(30)))
    docs = [long_doc, *DOCS[1:4]]
    options = RankOptions(chunk_tokens=30, chunk_overlap=0, max_per_source=2,
                          dedupe_threshold=1.01)
    top = Ranker(minilm(EmbeddingCache(":memory:")), options).rank_sync(
        "how do bees make honey", docs, 5)
    assert len(top) == 5
    assert [p.source_id for p in top].count(1) == 2
    assert top[0].source_id == 1
    uncapped = Ranker(minilm(EmbeddingCache(":memory:")),
                      RankOptions(chunk_tokens=30, chunk_overlap=0, max_per_source=None,
                                  dedupe_threshold=1.01, mmr_lambda=1.0)).rank_sync(
        "how do bees make honey", docs, 5)
    assert [p.source_id for p in uncapped].count(1) == 5


def test_near_duplicates_removed(ranker: Ranker) -> None:
    tides = DOCS[1].text
    mirror = document(7, "Tides (mirror)", tides + " ", url="https://mirror.example/t")
    reworded = document(8, "Tides", tides.replace("the regular", "a regular").replace(
        "Earth's oceans", "oceans of the Earth"), url="https://copy.example/t")
    top = ranker.rank_sync("what causes tides", [*DOCS, mirror, reworded], 4)
    assert len(top) == 4
    assert sum("gravitational pull of the Moon" in p.text for p in top) == 1
    assert len({p.url for p in top}) == 4


def test_mmr_prefers_a_new_aspect() -> None:
    docs = [
        document(1, "Python lists", "Python lists are ordered, mutable sequences; append "
                 "adds an item to the end of a list."),
        document(2, "Python list append", "The append method adds one item to the end of a "
                 "Python list; extend adds many."),
        document(3, "Python dictionaries", "Python dictionaries map keys to values; you "
                 "add an entry by assigning to a new key."),
    ]
    query = "how to add an item to a python list"
    model = minilm(EmbeddingCache(":memory:"))
    plain = Ranker(model, RankOptions(mmr_lambda=1.0)).rank_sync(query, docs, 2)
    diverse = Ranker(model, RankOptions(mmr_lambda=0.2)).rank_sync(query, docs, 2)
    assert {p.source_id for p in plain} == {1, 2}
    assert diverse[0].source_id == plain[0].source_id
    assert diverse[1].source_id == 3


def test_fusion_functions() -> None:
    dense = {0: 0.9, 1: 0.5, 2: 0.1}
    sparse = {2: 12.0, 0: 3.0}
    rrf = fuse(dense, sparse, "rrf", rrf_k=60)
    assert rrf[0] == pytest.approx(1 / 61 + 1 / 62)
    assert rrf[1] == pytest.approx(1 / 62)
    assert max(rrf, key=rrf.__getitem__) == 0
    convex = fuse(dense, sparse, "convex", dense_weight=0.5)
    assert convex[0] == pytest.approx(0.5 * 1.0 + 0.5 * 0.0)
    assert convex[2] == pytest.approx(0.5 * 0.0 + 0.5 * 1.0)
    with pytest.raises(ValueError):
        fuse(dense, sparse, "max")  # type: ignore[arg-type]


def test_select_passages_mmr_cap_and_dedupe() -> None:
    vectors = np.array([[1, 0], [1, 0], [0.8, 0.6], [0, 1]], dtype=np.float32)
    relevance = np.array([1.0, 0.99, 0.9, 0.5], dtype=np.float32)
    assert select_passages(relevance, vectors, "abcd", 3, mmr_lambda=1.0) == [0, 2, 3]
    assert select_passages(relevance, vectors, "abcd", 2, mmr_lambda=0.5) == [0, 3]
    assert select_passages(relevance, vectors, "aaab", 4, max_per_source=1,
                           dedupe_threshold=1.1, mmr_lambda=1.0) == [0, 3]


def test_dense_index_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 8)).astype(np.float32)
    ids, scores = DenseIndex(vectors).search(vectors[7], 5)
    expected = np.argsort(-(vectors @ vectors[7]))[:5]
    assert ids.tolist() == expected.tolist()
    assert scores[0] == pytest.approx(float(vectors[7] @ vectors[7]), rel=1e-5)


class FakeCrossEncoder:
    """CrossEncoder-compatible: scores a pair by whether the passage mentions the Moon."""

    def __init__(self) -> None:
        self.pairs: list[tuple[str, str]] = []

    def predict(self, pairs: Sequence[tuple[str, str]], **_: object) -> np.ndarray:
        self.pairs.extend(pairs)
        return np.array([5.0 if "Moon" in text else -1.0 for _, text in pairs])


def test_cross_encoder_stage_reorders(ranker: Ranker) -> None:
    fake = FakeCrossEncoder()
    reranking = Ranker(ranker.model, RankOptions(rerank_top=6),
                       reranker=CrossEncoderReranker(fake))
    top = reranking.rank_sync("how do bees make honey", DOCS, 3)
    assert top[0].title == "Tides" and top[0].scores["rerank"] == 5.0
    assert len(fake.pairs) == 6 and all(q == "how do bees make honey" for q, _ in fake.pairs)


async def test_rank_runs_off_the_event_loop(ranker: Ranker) -> None:
    threads: list[threading.Thread] = []
    original = ranker.model.embed_multi

    def spy(texts: Sequence[str], *args: object, **kwargs: object) -> np.ndarray:
        threads.append(threading.current_thread())
        return original(texts)

    ranker.model.embed_multi = spy  # type: ignore[method-assign]
    try:
        top = await ranker.rank("what causes tides", DOCS, 2)
    finally:
        del ranker.model.embed_multi
    assert top[0].title == "Tides"
    assert threads and threads[0] is not threading.main_thread()


def test_empty_inputs(ranker: Ranker) -> None:
    assert ranker.rank_sync("anything", [], 5) == []
    empty: list[Document] = [document(1, "Empty", "")]
    assert ranker.rank_sync("anything", empty, 5) == []


def test_direct_bm25_matches_bm25s() -> None:
    texts = [embedding_text(d.title, d.text) for d in DOCS] + ["", "the the the"]
    query = "sunlight and the Earth's oceans"
    expected = SparseIndex.build(texts).scores(query)
    counts = [(Counter(terms), len(terms)) for terms in analyze(texts)]
    got = bm25_scores(analyze([query])[0], counts)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert (got > 0).sum() >= 2
