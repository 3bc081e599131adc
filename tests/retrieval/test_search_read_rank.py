"""The whole retrieval path through real HTTP on 127.0.0.1: a provider chain (a
rate-limited SearXNG handing over to a working one) -> the SSRF-checked page reader ->
extraction -> hybrid ranking with the real MiniLM. Misbehaving pages fall back to their
snippets, within the budget, with their reasons."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from bench.procs import free_port
from retrieval.providers import FallbackSearch, SearXNGProvider
from retrieval.ranking import Ranker
from retrieval.reader import PageReader, ReaderOptions
from tests.support.loopback_web import LoopbackWeb, serve_loopback_web
from tests.support.retrieval_fixtures import minilm


@pytest.fixture(scope="module")
def web() -> Iterator[LoopbackWeb]:
    with serve_loopback_web() as server:
        yield server


async def test_provider_to_ranked_passages(web: LoopbackWeb) -> None:
    async with httpx.AsyncClient() as client:
        chain = FallbackSearch([
            SearXNGProvider(client, base_url=f"http://127.0.0.1:{free_port()}", timeout_s=2),
            SearXNGProvider(client, base_url=web.url("/searxng"), timeout_s=2),
        ])
        found = await chain.search("riverton flood __web__", 8)
    assert found.provider == "searxng"
    assert [a.status for a in found.attempts] == ["unavailable", "ok"]  # handed over
    assert len(found.results) == 5

    budget = 1.5
    started = time.perf_counter()
    async with PageReader(ReaderOptions(budget_s=budget, page_timeout_s=1.0,
                                        allow_cidrs=["127.0.0.1/32"])) as reader:
        docs = await reader.read(found.results)
    elapsed = time.perf_counter() - started
    assert elapsed < budget + 1.0
    by_title = {d.result.title: d for d in docs}
    article = by_title["Flood waters recede in Riverton"]
    assert article.status == "ok" and "northern embankment held" in article.text
    assert "Subscribe to our newsletter" not in article.text  # boilerplate dropped
    for title in ("Slow local news", "Intranet admin", "Broken upload"):
        doc = by_title[title]
        assert doc.status == "snippet_fallback" and doc.reason, title
        assert doc.text == doc.result.snippet
    assert "10.0.0.1" in by_title["Intranet admin"].reason or \
        "private" in by_title["Intranet admin"].reason

    passages = await Ranker(minilm()).rank("Which part of the embankment failed?", docs, k=4)
    assert passages[0].url.endswith("/page/article")
    assert "stone bridge failed" in passages[0].text
    ids = {d.url: i for i, d in enumerate(docs, 1)}
    assert all(p.source_id == ids[p.url] for p in passages)  # stable citation numbers
