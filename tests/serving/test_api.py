"""The OpenAI API layer over a replaying engine: wire format, errors, auth, limits.

Fast (in-process ASGI); the same behaviours are checked end to end over real servers
with the real engines in test_server_llamacpp.py and test_server_vllm.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from serving import api
from serving.app import ServerOptions, serving_state
from serving.engines.base import ModelInfo
from serving.registry import ModelRegistry
from tests.support.replay_engine import ReplayEngine


def make_app(engine: ReplayEngine | None = None, *, state: str = "ready",
             options: ServerOptions | None = None, **install: object
             ) -> tuple[FastAPI, ReplayEngine]:
    engine = engine or ReplayEngine()
    registry = ModelRegistry()
    registry.add_engine(engine)
    registry.state = state  # type: ignore[assignment]
    app = FastAPI()
    serving_state(app, registry, options)
    api.install(app, **install)  # type: ignore[arg-type]
    return app, engine


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app, _ = make_app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test") as c:
        yield c


def chat(**kw: object) -> dict[str, object]:
    return {"model": "replay", "messages": [{"role": "user", "content": "hi there"}], **kw}


def sse_events(text: str) -> list[str]:
    assert text.endswith("\n\n")
    blocks = text.split("\n\n")[:-1]
    assert all(b.startswith("data: ") for b in blocks), blocks
    return [b[len("data: "):] for b in blocks]


async def test_models_lists_context_length(client: httpx.AsyncClient) -> None:
    body = (await client.get("/v1/models")).json()
    assert body["object"] == "list"
    assert body["data"][0]["id"] == "replay"
    assert body["data"][0]["max_model_len"] == 256


async def test_chat_non_streaming(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/chat/completions", json=chat())
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant",
                                             "content": "Hello, world! The end."}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 7, "total_tokens": 9}


async def test_chat_stream_framing(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/chat/completions",
                          json=chat(stream=True, stream_options={"include_usage": True}))
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert {c["created"] for c in chunks} == {chunks[0]["created"]}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    with_choices = [c for c in chunks if c["choices"]]
    reasons = [c["choices"][0]["finish_reason"] for c in with_choices]
    assert reasons[-1] == "stop" and all(r is None for r in reasons[:-1])
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in with_choices)
    assert text == "Hello, world! The end."
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 7
    assert all(c["usage"] is None for c in chunks[:-1])


async def test_stop_and_max_tokens(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/chat/completions", json=chat(stop=[" world"]))
    assert r.json()["choices"][0]["message"]["content"] == "Hello,"
    r = await client.post("/v1/chat/completions", json=chat(max_completion_tokens=3))
    body = r.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3


async def test_n_choices_streamed(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/chat/completions", json=chat(n=3, stream=True))
    chunks = [json.loads(e) for e in sse_events(r.text)[:-1]]
    for index in range(3):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == index]
        assert "".join(c["delta"].get("content") or "" for c in mine) == "Hello, world! The end."
        assert mine[-1]["finish_reason"] == "stop"


async def test_completions_multiple_prompts(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/completions", json={"model": "replay", "prompt": ["a b", "c"],
                                                   "max_tokens": 2, "n": 2})
    body = r.json()
    assert body["object"] == "text_completion"
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert all(c["text"] == "Hello," for c in body["choices"])
    assert body["usage"]["prompt_tokens"] == 3  # 2 + 1, counted once per prompt


async def test_seed_fans_out_per_choice() -> None:
    app, engine = make_app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        await c.post("/v1/chat/completions", json=chat(n=2, seed=7))
    assert [r.sampling.seed for r in engine.requests] == [7, 8]


async def test_response_format_reaches_engine() -> None:
    app, engine = make_app()
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        await c.post("/v1/chat/completions", json=chat(response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": schema}}))
        await c.post("/v1/chat/completions", json=chat(response_format={"type": "json_object"}))
    assert engine.requests[0].sampling.json_schema == schema
    assert engine.requests[1].sampling.json_object is True


@pytest.mark.parametrize(("payload", "status", "fragment"), [
    ({"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "does not exist"),
    (chat(messages=[]), 400, "messages"),
    (chat(max_tokens=0), 400, "max_tokens"),
    (chat(max_tokens=-5), 400, "max_tokens"),
    (chat(temperature="hot"), 400, "temperature"),
    (chat(n=100), 400, "n"),
    (chat(guided_json={"type": "object"}), 400, "guided_json"),
    (chat(tools=[{"type": "function"}]), 400, "tool"),
    (chat(logprobs=True), 400, "logprobs"),
    (chat(max_tokens=1000), 400, "maximum context length is 256"),
    (chat(messages=[{"role": "user", "content": "w " * 300}]), 400, "maximum context length"),
    (chat(messages=[{"role": "robot", "content": "x"}]), 400, "role"),
    (chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), 400, "image_url"),
    ({"model": "replay"}, 400, "messages"),
])
async def test_bad_requests(client: httpx.AsyncClient, payload: dict[str, object],
                            status: int, fragment: str) -> None:
    r = await client.post("/v1/chat/completions", json=payload)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == status
    assert fragment in err["message"], err


async def test_malformed_json(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/chat/completions", content=b'{"model": ',
                          headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert "not valid JSON" in r.json()["error"]["message"]


async def test_body_too_large() -> None:
    app, _ = make_app(max_body_bytes=2048)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        r = await c.post("/v1/chat/completions",
                         json=chat(messages=[{"role": "user", "content": "x" * 5000}]))
        assert r.status_code == 413
        assert r.json()["error"]["code"] == 413
        assert (await c.post("/v1/chat/completions", json=chat())).status_code == 200


async def test_auth_keys() -> None:
    app, _ = make_app(api_keys=["k1", "k2"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        r = await c.get("/v1/models")
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        r = await c.get("/v1/models", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        for key in ("k1", "k2"):
            r = await c.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200
        assert (await c.get("/health")).status_code == 200
        assert (await c.get("/metrics")).status_code == 200


async def test_not_ready_is_503() -> None:
    app, _ = make_app(state="loading")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        r = await c.post("/v1/chat/completions", json=chat())
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert (await c.get("/health")).status_code == 503


async def test_error_mid_stream_is_an_event() -> None:
    app, engine = make_app(ReplayEngine(fail_after=3))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        r = await c.post("/v1/chat/completions", json=chat(stream=True))
        assert r.status_code == 200
        events = sse_events(r.text)
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["error"]["message"] == "replay engine failure"
        assert engine.running == 0


async def test_cors() -> None:
    app, _ = make_app(cors_origins=["http://ui.example"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        r = await c.options("/v1/chat/completions", headers={
            "Origin": "http://ui.example", "Access-Control-Request-Method": "POST"})
        assert r.headers["access-control-allow-origin"] == "http://ui.example"


async def test_metrics_count_tokens(client: httpx.AsyncClient) -> None:
    await client.post("/v1/chat/completions", json=chat())
    text = (await client.get("/metrics")).text
    assert 'search_app:generation_tokens_total{model="replay"} 7.0' in text
    assert 'search_app:num_requests_running{model="replay"} 0.0' in text
    assert "search_app:time_to_first_token_seconds_count" in text


async def test_405_keeps_its_allow_header(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/chat/completions")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json()["error"]["code"] == 405


async def test_chunked_body_over_the_limit_is_413() -> None:
    """No Content-Length: the limit is found while reading, and it is still a 413 (not
    FastAPI's 400 "error parsing the body")."""
    app, engine = make_app(max_body_bytes=2048)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"model": "replay", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}]}'

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        r = await c.post("/v1/chat/completions", content=chunks(),
                         headers={"Content-Type": "application/json"})
        assert "content-length" not in r.request.headers
        assert r.status_code == 413, r.text
        assert r.json()["error"]["type"] == "invalid_request_error"
        assert "2048 bytes" in r.json()["error"]["message"]
    assert engine.requests == []


async def test_lone_surrogate_is_a_json_400(client: httpx.AsyncClient) -> None:
    for body in ('{"model": "replay", "messages": [{"role": "user", "content": "a\\udc80"}]}',
                 '{"model": "re\\ud800play", "messages": [{"role": "user", "content": "a"}]}'):
        r = await client.post("/v1/chat/completions", content=body.encode(),
                              headers={"Content-Type": "application/json"})
        assert r.status_code == 400, r.text
        assert r.headers["content-type"] == "application/json"
        assert "surrogate" in r.json()["error"]["message"]


async def test_batch_with_one_bad_prompt_fails_before_any_generation() -> None:
    app, engine = make_app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        r = await c.post("/v1/completions", json={
            "model": "replay", "prompt": ["short one", "word " * 300], "max_tokens": 4})
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
        assert "maximum context length" in r.json()["error"]["message"]
    assert engine.requests == []  # nothing started, so nothing was generated


async def test_request_that_can_never_fit_is_400_not_429() -> None:
    engine = ReplayEngine()
    engine.info = ModelInfo(id="replay", context_length=256, engine="replay", max_sequences=8)
    app, _ = make_app(engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        r = await c.post("/v1/completions", json={
            "model": "replay", "prompt": ["a", "b", "c"], "n": 4, "max_tokens": 2})
        assert r.status_code == 400, r.text
        assert "12 sequences" in r.json()["error"]["message"]
        assert r.json()["error"]["param"] == "n"
        r = await c.post("/v1/completions", json={
            "model": "replay", "prompt": ["a", "b"], "n": 4, "max_tokens": 2})
        assert r.status_code == 200


async def test_generation_time_cap_ends_with_length() -> None:
    """max_tokens null may mean the whole context: the server-side cap ends it."""
    engine = ReplayEngine(["tok "] * 40, delay_s=0.02)
    app, _ = make_app(engine, options=ServerOptions(max_generation_s=0.2))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        r = await c.post("/v1/chat/completions", json=chat(max_tokens=None))
        assert r.status_code == 200
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "length"
        assert 3 <= r.json()["usage"]["completion_tokens"] < 40
    assert engine.aborted  # the engine was told to stop
    app, _ = make_app(ReplayEngine(["tok "] * 40, delay_s=0.0),
                      options=ServerOptions(max_generation_s=0))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        r = await c.post("/v1/chat/completions", json=chat(max_tokens=None))
        assert r.json()["usage"]["completion_tokens"] == 40  # 0: no cap


def test_openapi_documents_the_errors_really_answered() -> None:
    app, _ = make_app(api_keys=["k"])
    schema = app.openapi()
    assert "HTTPValidationError" not in json.dumps(schema)
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            assert "422" not in op["responses"], (method, path)
            if path.startswith("/v1/"):
                for code in ("400", "401", "429", "503"):
                    ref = op["responses"][code]["content"]["application/json"]["schema"]
                    assert ref == {"$ref": "#/components/schemas/ErrorResponse"}
    assert "ErrorResponse" in schema["components"]["schemas"]
