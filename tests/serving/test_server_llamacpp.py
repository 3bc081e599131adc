"""End to end: the model server with the real llama.cpp engine (SmolLM2-135M-Instruct)
and MiniLM embeddings, driven over 127.0.0.1 with the official ``openai`` client, and
raw HTTP where the client would hide the wire format."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time

import httpx
import openai
import pytest

from tests.conftest import API_KEY, needs_llama_cpp
from tests.support.server import ServerProcess, run_server

pytestmark = [pytest.mark.llamacpp, needs_llama_cpp]
MODEL = "SmolLM2-135M-Instruct.Q4_1"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
QUESTION = [{"role": "user", "content": "Name three colours of the rainbow."}]


@pytest.fixture(scope="module")
def client(llama_server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{llama_server.url}/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture(scope="module")
def model(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


def running(server: ServerProcess) -> tuple[float, float]:
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    values = {}
    for line in text.splitlines():
        for name in ("num_requests_running", "num_requests_waiting"):
            if line.startswith(f"search_app:{name}{{"):
                values[name] = float(line.rsplit(" ", 1)[1])
    return values["num_requests_running"], values["num_requests_waiting"]


def test_models_report_context_length(client: openai.OpenAI, model: str) -> None:
    cards = {m.id: m for m in client.models.list().data}
    assert model == MODEL
    assert cards[model].model_extra["max_model_len"] == 2048
    assert "all-MiniLM-L6-v2" in cards


def test_chat_non_streaming(client: openai.OpenAI, model: str) -> None:
    r = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=24, seed=1)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content.strip()
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 5
    assert 0 < r.usage.completion_tokens <= 24
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_streaming_with_usage(client: openai.OpenAI, model: str) -> None:
    stream = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=16,
                                            stream=True, seed=3, temperature=0,
                                            stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16
    full = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=16,
                                          seed=3, temperature=0,
                                          extra_body={"ignore_eos": True})
    assert full.choices[0].message.content == text  # same greedy text either way


def test_raw_sse_framing(llama_server: ServerProcess, model: str) -> None:
    with httpx.stream("POST", f"{llama_server.url}/v1/chat/completions", headers=AUTH,
                      json={"model": model, "messages": QUESTION, "max_tokens": 8,
                            "stream": True}, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    blocks = raw.split("\n\n")
    assert blocks[-1] == "" and blocks[-2] == "data: [DONE]"
    events = [json.loads(b.removeprefix("data: ")) for b in blocks[:-2]]
    assert all(b.startswith("data: ") for b in blocks[:-1])
    assert len({(e["id"], e["created"]) for e in events}) == 1
    finishes = [e["choices"][0]["finish_reason"] for e in events]
    assert finishes[-1] in ("stop", "length") and set(finishes[:-1]) == {None}


def test_text_completions(client: openai.OpenAI, model: str) -> None:
    r = client.completions.create(model=model, prompt="The capital of France is",
                                  max_tokens=5, temperature=0, extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=model, prompt="The capital of France is", max_tokens=5, temperature=0,
        stream=True, extra_body={"ignore_eos": True}) if c.choices)
    assert streamed == r.choices[0].text


def test_stop_sequence_is_cut(client: openai.OpenAI, model: str) -> None:
    base = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=40,
                                          temperature=0).choices[0].message.content
    words = base.split()
    assert len(words) > 3, base
    stop = words[2]
    cut = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=40,
                                         temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert stop not in cut.choices[0].message.content
    assert base.startswith(cut.choices[0].message.content)


def test_n_and_seed(client: openai.OpenAI, model: str) -> None:
    kw = dict(model=model, messages=QUESTION, max_tokens=12, n=2, seed=42, temperature=1.0)
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]


def test_json_schema_output_validates(client: openai.OpenAI, model: str) -> None:
    schema = {"type": "object", "properties": {
        "city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"], "additionalProperties": False}
    r = client.chat.completions.create(
        model=model, max_tokens=64, temperature=0,
        messages=[{"role": "user", "content": "Give the largest city of Japan as JSON."}],
        response_format={"type": "json_schema",
                         "json_schema": {"name": "city", "schema": schema}})
    assert r.choices[0].finish_reason == "stop"
    data = json.loads(r.choices[0].message.content)
    assert set(data) == {"city", "population"}
    assert isinstance(data["city"], str) and isinstance(data["population"], int)
    r = client.chat.completions.create(
        model=model, max_tokens=64, temperature=0, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Describe Paris as JSON."}])
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_embeddings(client: openai.OpenAI) -> None:
    r = client.embeddings.create(model="all-MiniLM-L6-v2", input=["a cat", "a dog", "tax law"])
    vectors = [d.embedding for d in r.data]
    assert [len(v) for v in vectors] == [384, 384, 384]
    dot = lambda a, b: sum(x * y for x, y in zip(a, b, strict=True))  # noqa: E731
    assert dot(vectors[0], vectors[1]) > dot(vectors[0], vectors[2])
    assert r.usage.prompt_tokens > 0
    b64 = client.embeddings.create(model="all-MiniLM-L6-v2", input="a cat",
                                   encoding_format="base64")
    raw = base64.b64decode(b64.data[0].embedding)
    decoded = struct.unpack("<384f", raw)
    assert abs(sum(x * y for x, y in zip(decoded, vectors[0], strict=True)) - 1.0) < 1e-4


@pytest.mark.parametrize(("payload", "status", "fragment"), [
    ({"model": "gpt-4", "messages": QUESTION}, 404, "does not exist"),
    ({"messages": []}, 400, "messages"),
    ({"messages": QUESTION, "max_tokens": 0}, 400, "max_tokens"),
    ({"messages": QUESTION, "max_tokens": 5000}, 400, "maximum context length is 2048"),
    ({"messages": [{"role": "user", "content": "word " * 3000}]}, 400,
     "maximum context length is 2048"),
    ({"messages": QUESTION, "temperature": "warm"}, 400, "temperature"),
])
def test_errors_are_openai_shaped(llama_server: ServerProcess, model: str,
                                  payload: dict[str, object], status: int,
                                  fragment: str) -> None:
    body = {"model": model, **payload}
    r = httpx.post(f"{llama_server.url}/v1/chat/completions", json=body, headers=AUTH,
                   timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == status and fragment in err["message"]


def test_malformed_and_huge_bodies(llama_server: ServerProcess, client: openai.OpenAI,
                                   model: str) -> None:
    url = f"{llama_server.url}/v1/chat/completions"
    r = httpx.post(url, content=b"{not json", headers={**AUTH, "content-type":
                                                        "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = httpx.post(url, content=b"x" * (9 * 1024 * 1024), headers={
        **AUTH, "content-type": "application/json"}, timeout=60)
    assert r.status_code == 413
    assert client.chat.completions.create(model=model, messages=QUESTION, max_tokens=4)


def test_auth_required(llama_server: ServerProcess) -> None:
    bad = openai.OpenAI(base_url=f"{llama_server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    assert httpx.get(f"{llama_server.url}/health").status_code == 200


def test_eight_concurrent_streams_complete(llama_server: ServerProcess, model: str) -> None:
    async def one(client: openai.AsyncOpenAI, i: int) -> tuple[str, str | None]:
        stream = await client.chat.completions.create(
            model=model, max_tokens=24, stream=True, seed=i,
            messages=[{"role": "user", "content": f"Write a sentence about number {i}."}])
        text, finish = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        return text, finish

    async def main() -> list[tuple[str, str | None]]:
        async with openai.AsyncOpenAI(base_url=f"{llama_server.url}/v1", api_key=API_KEY,
                                      max_retries=0, timeout=120) as client:
            return await asyncio.gather(*(one(client, i) for i in range(8)))

    results = asyncio.run(main())
    assert all(text.strip() and finish in ("stop", "length") for text, finish in results)
    assert running(llama_server) == (0.0, 0.0)


def test_client_disconnect_aborts(llama_server: ServerProcess, model: str) -> None:
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", f"{llama_server.url}/v1/chat/completions", headers=AUTH,
                         json={"model": model, "messages": QUESTION, "max_tokens": 1500,
                               "stream": True, "ignore_eos": True}) as r:
            lines = r.iter_lines()
            for _ in range(4):
                next(lines)
            assert running(llama_server)[0] >= 1
    deadline = time.monotonic() + 10
    while running(llama_server) != (0.0, 0.0):
        assert time.monotonic() < deadline, "the engine kept generating for a gone client"
        time.sleep(0.1)
    # non-streaming request whose client gives up
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{llama_server.url}/v1/chat/completions", headers=AUTH, timeout=1.5,
                   json={"model": model, "messages": QUESTION, "max_tokens": 1500,
                         "ignore_eos": True})
    deadline = time.monotonic() + 10
    while running(llama_server) != (0.0, 0.0):
        assert time.monotonic() < deadline, "a gone non-streaming client kept its slot"
        time.sleep(0.1)
    # a client leaving is not a server error: no traceback in the log
    assert "Exception in ASGI application" not in llama_server.log()
    assert "Traceback" not in llama_server.log()


def test_metrics_after_traffic(llama_server: ServerProcess) -> None:
    text = httpx.get(f"{llama_server.url}/metrics").text
    for name in ("time_to_first_token_seconds_bucket", "inter_token_latency_seconds_bucket",
                 "prompt_tokens_total", "generation_tokens_total", "requests_total",
                 "e2e_request_latency_seconds_count"):
        assert f"search_app:{name}" in text, name


def test_queue_full_is_429(artifacts_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with run_server(["serve-model", "--engine", "llamacpp", "--context-length", "1024",
                     "--parallel", "1", "--max-queue", "1", "--embedding-model", ""],
                    log_path=artifacts_dir / "llama_server_queue.log") as server:
        async def one(http: httpx.AsyncClient) -> int:
            r = await http.post(f"{server.url}/v1/chat/completions", json={
                "model": MODEL, "messages": QUESTION, "max_tokens": 64, "ignore_eos": True})
            return r.status_code

        async def main() -> list[int]:
            async with httpx.AsyncClient(timeout=120) as http:
                return await asyncio.gather(*(one(http) for _ in range(4)))

        statuses = asyncio.run(main())
        assert statuses.count(200) >= 2 and 429 in statuses, statuses
        ok = httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={
            "model": MODEL, "messages": QUESTION, "max_tokens": 4})
        assert ok.status_code == 200


def test_lone_surrogates_are_a_400_everywhere(llama_server: ServerProcess, model: str) -> None:
    """JSON can spell an unpaired surrogate; it must be refused as bad input (400 JSON),
    never reach the tokenizer or crash the error handler (a plain-text 500)."""
    bad = '"x\\ud800y"'
    bodies = {
        "/v1/chat/completions": f'{{"model": "{model}", "messages": [{{"role": "user", '
                                f'"content": {bad}}}], "max_tokens": 2}}',
        "/v1/completions": f'{{"model": "{model}", "prompt": {bad}, "max_tokens": 2}}',
        "/v1/embeddings": f'{{"model": "all-MiniLM-L6-v2", "input": {bad}}}',
    }
    bodies["unknown model"] = f'{{"model": {bad}, "prompt": "hi", "max_tokens": 2}}'
    for name, body in bodies.items():
        path = "/v1/completions" if name == "unknown model" else name
        r = httpx.post(f"{llama_server.url}{path}", content=body.encode(), timeout=30,
                       headers={**AUTH, "Content-Type": "application/json"})
        assert r.status_code == 400, (name, r.status_code, r.text)
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error" and "surrogate" in error["message"]
