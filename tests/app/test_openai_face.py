"""The answer engine as an OpenAI model, through the ``openai`` package; per-client rate
limits; per-stage metrics. In-process over a scripted engine (fast, deterministic)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import openai
import pytest

from retrieval.providers import FallbackSearch, LocalProvider
from search_app.ratelimit import RateLimiter
from tests.app.support import RESULTS, ScriptedEngine, make_app


def _openai(app: object) -> openai.AsyncOpenAI:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))  # type: ignore[arg-type]
    return openai.AsyncOpenAI(base_url="http://test/v1", api_key="unused", http_client=http,
                              max_retries=0)


def _http(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app),  # type: ignore[arg-type]
                             base_url="http://test")


QUESTION = [{"role": "user", "content": "Who designed the Eiffel Tower?"}]


async def test_listed_beside_the_served_model(tmp_path: Path) -> None:
    app, _ = make_app(tmp_path, ScriptedEngine())
    models = {m.id: m for m in (await _openai(app).models.list()).data}
    assert {"tiny", "search-app"} <= set(models)
    assert models["search-app"].model_extra["context_length"] == 2048


async def test_non_streaming_answer_with_citations(tmp_path: Path) -> None:
    app, _ = make_app(tmp_path, ScriptedEngine())
    client = _openai(app)
    done = await client.chat.completions.create(model="search-app", messages=QUESTION)
    text = done.choices[0].message.content or ""
    extra = done.model_extra
    urls = [r.url for r in RESULTS]
    assert extra["citations"] and set(extra["citations"]) <= set(urls)
    assert [r["url"] for r in extra["search_results"]] == extra["citations"]
    assert all(r["title"] for r in extra["search_results"])
    cited = [int(n) for n in re.findall(r"\[(\d+)\]", text)]
    assert cited and "[citation:" not in text
    assert all(1 <= n <= len(extra["citations"]) for n in cited)
    assert done.choices[0].finish_reason == "stop"
    assert done.usage is not None and done.usage.completion_tokens > 0
    assert "related_questions" not in extra or extra["related_questions"] is None
    # Stored like a native answer, under the response id.
    async with _http(app) as http:
        stored = (await http.get(f"/api/search/{done.id}")).json()
    assert stored["query"] == QUESTION[0]["content"]


async def test_streaming_answer_follow_up_and_related(tmp_path: Path) -> None:
    app, _ = make_app(tmp_path, ScriptedEngine())
    client = _openai(app)
    messages = [*QUESTION,
                {"role": "assistant", "content": "Gustave Eiffel's company [1]."},
                {"role": "user", "content": "When was it built?"}]
    stream = await client.chat.completions.create(
        model="search-app", messages=messages, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
        extra_body={"return_related_questions": True})
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.model_extra["citations"] for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert re.search(r"\[\d\]", text) and "[citation:" not in text
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] == "stop" and finish.count("stop") == 1
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert chunks[-1].model_extra["related_questions"][0].endswith("?")
    async with _http(app) as http:  # the history reached the search query
        stored = (await http.get(f"/api/search/{chunks[0].id}")).json()
    assert "Eiffel" in stored["search_query"] and "built" in stored["search_query"]


async def test_bad_requests_are_openai_errors(tmp_path: Path) -> None:
    app, _ = make_app(tmp_path, ScriptedEngine())
    client = _openai(app)
    with pytest.raises(openai.BadRequestError, match="last message"):
        await client.chat.completions.create(
            model="search-app", messages=[{"role": "assistant", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="n must be 1"):
        await client.chat.completions.create(model="search-app", messages=QUESTION, n=2)
    with pytest.raises(openai.BadRequestError, match="chat completions only"):
        await client.completions.create(model="search-app", prompt="x")
    with pytest.raises(openai.BadRequestError, match="longer than"):
        await client.chat.completions.create(
            model="search-app", messages=[{"role": "user", "content": "x" * 2001}])


async def test_search_failure_is_a_502_before_the_stream(tmp_path: Path) -> None:
    async def broken(query: str, k: int) -> list:
        raise RuntimeError("index gone")

    app, _ = make_app(tmp_path, ScriptedEngine())
    app.state.answer.pipeline.chains = {"local": FallbackSearch([LocalProvider(broken)])}
    with pytest.raises(openai.APIStatusError) as info:
        await _openai(app).chat.completions.create(model="search-app", messages=QUESTION,
                                                   stream=True)
    assert info.value.status_code == 502


async def test_rate_limit_per_client_with_retry_after(tmp_path: Path) -> None:
    app, _ = make_app(tmp_path, ScriptedEngine(),
                      settings={"rate_limit_per_minute": 6, "rate_limit_burst": 2})
    async with _http(app) as http:
        body = {"query": "Who designed the Eiffel Tower?", "related": False}
        assert (await http.post("/api/search", json=body)).status_code == 200
        assert (await http.post("/api/search", json=body)).status_code == 200
        limited = await http.post("/api/search", json=body)
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 10
        assert limited.json()["error"]["type"] == "rate_limit_error"
        # The same client is limited on the Lepton and OpenAI faces too ...
        lepton = await http.post("/query", json={"query": "x", "search_uuid": "u1"})
        assert lepton.status_code == 429
        chat = await http.post("/v1/chat/completions",
                               json={"model": "search-app", "messages": QUESTION})
        assert chat.status_code == 429 and chat.headers["retry-after"]
        # ... but not the bare served model, reads, or the health check.
        raw = await http.post("/v1/chat/completions", json={
            "model": "tiny", "messages": QUESTION, "max_tokens": 2})
        assert raw.status_code == 200
        assert (await http.get("/health")).status_code == 200
        metrics = (await http.get("/metrics")).text
    assert re.search(r"search_app:rate_limited_requests_total 3\.0", metrics)
    assert 'search_app:answer_stage_seconds_count{stage="rank"} 2.0' in metrics
    assert 'search_app:answers_total{outcome="stop"} 2.0' in metrics


def test_token_bucket_refills_at_the_configured_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(60, 2, max_clients=2, clock=lambda: now[0])
    assert limiter.acquire("a") == 0 and limiter.acquire("a") == 0
    assert limiter.acquire("a") == pytest.approx(1.0)  # one token per second
    now[0] = 1.0
    assert limiter.acquire("a") == 0
    assert limiter.acquire("b") == 0 and limiter.acquire("c") == 0
    assert "a" not in limiter._buckets  # least recently seen dropped beyond max_clients
    assert RateLimiter(0, 1).acquire("x") == 0  # 0 per minute: no limit
