"""The upstream engine against one of our own servers on loopback: a proxy server
(``--engine openai``) in front of the llama.cpp server, both real processes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import API_KEY, needs_llama_cpp
from tests.support.server import ServerProcess, run_server

pytestmark = [pytest.mark.llamacpp, needs_llama_cpp]
MODEL = "SmolLM2-135M-Instruct.Q4_1"
QUESTION = [{"role": "user", "content": "What is the capital of Italy?"}]


@pytest.fixture(scope="module")
def proxy(llama_server: ServerProcess, artifacts_dir: Path) -> Iterator[ServerProcess]:
    with run_server(["serve-model", "--engine", "openai", "--upstream-url",
                     f"{llama_server.url}/v1", "--upstream-api-key", API_KEY,
                     "--served-model-name", "proxied", "--embedding-model", ""],
                    log_path=artifacts_dir / "upstream_proxy.log") as server:
        yield server


def test_models_carry_upstream_context(proxy: ServerProcess) -> None:
    cards = httpx.get(f"{proxy.url}/v1/models").json()["data"]
    assert [(c["id"], c["max_model_len"]) for c in cards] == [("proxied", 2048)]


def test_stream_passes_through(proxy: ServerProcess, llama_server: ServerProcess) -> None:
    direct = openai.OpenAI(base_url=f"{llama_server.url}/v1", api_key=API_KEY)
    via = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused")
    kw = dict(messages=QUESTION, max_tokens=20, temperature=0)
    expected = direct.chat.completions.create(model=MODEL, **kw).choices[0].message.content
    chunks = list(via.chat.completions.create(model="proxied", stream=True,
                                              stream_options={"include_usage": True}, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    assert chunks[-1].usage.completion_tokens > 0
    full = via.chat.completions.create(model="proxied", **kw)
    assert full.choices[0].message.content == expected
    comp = via.completions.create(model="proxied", prompt="Rome is", max_tokens=4,
                                  temperature=0, extra_body={"ignore_eos": True})
    assert comp.choices[0].finish_reason == "length" and comp.usage.completion_tokens == 4


def test_json_schema_through_proxy(proxy: ServerProcess) -> None:
    schema = {"type": "object", "properties": {"capital": {"type": "string"}},
              "required": ["capital"], "additionalProperties": False}
    r = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="x").chat.completions.create(
        model="proxied", messages=QUESTION, max_tokens=40, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}})
    assert set(json.loads(r.choices[0].message.content)) == {"capital"}


def test_upstream_errors_are_mapped(proxy: ServerProcess) -> None:
    r = httpx.post(f"{proxy.url}/v1/chat/completions", timeout=60, json={
        "model": "proxied", "messages": [{"role": "user", "content": "word " * 3000}]})
    assert r.status_code == 400
    assert "maximum context length is 2048" in r.json()["error"]["message"]


def test_disconnect_reaches_upstream(proxy: ServerProcess, llama_server: ServerProcess
                                     ) -> None:
    def upstream_running() -> float:
        for line in httpx.get(f"{llama_server.url}/metrics").text.splitlines():
            if line.startswith("search_app:num_requests_running{"):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError("no running gauge")

    with httpx.Client(timeout=60) as http, http.stream(
            "POST", f"{proxy.url}/v1/chat/completions",
            json={"model": "proxied", "messages": QUESTION, "max_tokens": 1500,
                  "ignore_eos": True, "stream": True}) as r:
        lines = r.iter_lines()
        for _ in range(4):
            next(lines)
        assert upstream_running() >= 1
    deadline = time.monotonic() + 10
    while upstream_running() != 0:
        assert time.monotonic() < deadline, "upstream kept generating after the client left"
        time.sleep(0.1)
