"""MCP end to end, with the SDK's own client: ``search-app mcp`` over stdio, and
``search-app serve --api-key`` over streamable HTTP at /mcp (on 127.0.0.1), both with
llama.cpp (SmolLM2), MiniLM and the default local index under data/."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import API_KEY, needs_llama_cpp
from tests.support.server import ROOT, ServerProcess, run_server

pytestmark = [needs_llama_cpp, pytest.mark.llamacpp, pytest.mark.slow,
              pytest.mark.skipif(not (ROOT / "data/index/snapshot/snapshot.json").is_file(),
                                 reason="the default local index is not built")]

# mark: every sentence reaches the answer, so SmolLM2's text is there to check.
MODEL_ARGS = ["--engine", "llamacpp", "--context-length", "2048", "--grounding", "mark"]
QUESTION = "Who designed the Eiffel Tower?"


class Progress:
    def __init__(self) -> None:
        self.seen: list[tuple[float, float | None, str | None]] = []

    async def __call__(self, value: float, total: float | None, message: str | None) -> None:
        self.seen.append((value, total, message))

    def stages(self) -> list[str]:
        return [m.split(":")[0] for _, _, m in self.seen if m]


async def _check_tools(session: ClientSession) -> None:
    """What both transports must do: the tools and their schemas, search, ask with
    progress, and a clear error for an empty query."""
    tools = {t.name: t for t in (await session.list_tools()).tools}
    assert set(tools) == {"search", "ask", "list_collections"}
    assert tools["ask"].input_schema["required"] == ["query"]
    assert tools["search"].output_schema is not None

    found = await session.call_tool("search", {"query": "Eiffel Tower", "k": 3})
    assert not found.is_error, found.content
    passages = found.structured_content["passages"]
    assert len(passages) == 3 and passages[0]["title"] == "Eiffel Tower"
    assert all(p["url"].startswith("https://en.wikipedia.org/wiki/") for p in passages)

    progress = Progress()
    asked = await session.call_tool("ask", {"query": QUESTION}, progress_callback=progress)
    assert not asked.is_error, asked.content
    answer = asked.structured_content
    numbers = {s["number"] for s in answer["sources"]}
    assert "Eiffel Tower" in [s["title"] for s in answer["sources"]]
    assert answer["answer"].strip() and answer["finish_reason"] in ("stop", "length")
    assert all(int(n) in numbers for n in re.findall(r"\[(\d+)\]", answer["answer"]))
    assert "Sources:" in asked.content[0].text
    assert progress.stages() == ["searching", "ranking", "writing", "done"], progress.seen

    empty = await session.call_tool("ask", {"query": " "})
    assert empty.is_error and "query is empty" in empty.content[0].text


async def test_stdio(artifacts_dir: Path, tmp_path: Path) -> None:
    params = StdioServerParameters(
        command=sys.executable, cwd=str(ROOT),
        args=["-m", "search_app.cli", "mcp", *MODEL_ARGS,
              "--store-path", str(tmp_path / "store.sqlite")],
        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    with open(artifacts_dir / "mcp_stdio.log", "w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write), \
                ClientSession(read, write) as session:
            started = time.monotonic()
            info = await session.initialize()
            # The protocol is up at once: the models load behind it.
            assert info.server_info.name == "search-app" and time.monotonic() - started < 30
            await _check_tools(session)
    log = (artifacts_dir / "mcp_stdio.log").read_text()
    assert "answer engine ready" in log  # logs went to stderr, stdout stayed protocol


@pytest.fixture(scope="module")
def app_server(artifacts_dir: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[ServerProcess]:
    store = tmp_path_factory.mktemp("mcp-store") / "store.sqlite"
    with run_server(["serve", *MODEL_ARGS, "--api-key", API_KEY, "--store-path", str(store)],
                    log_path=artifacts_dir / "mcp_app_server.log") as server:
        auth = {"Authorization": f"Bearer {API_KEY}"}
        for _ in range(240):  # /health is up before the answer engine
            if httpx.get(f"{server.url}/searxng/search", params={"q": "x", "format": "json"},
                         headers=auth).status_code == 200:
                break
            time.sleep(0.5)
        yield server


def _initialize() -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "test", "version": "0"}}}


def test_http_needs_the_key(app_server: ServerProcess) -> None:
    headers = {"Accept": "application/json, text/event-stream"}
    for auth in ({}, {"Authorization": "Bearer wrong"}):
        response = httpx.post(f"{app_server.url}/mcp", json=_initialize(),
                              headers=headers | auth)
        assert response.status_code == 401, response.text
        assert response.json()["error"]["type"] == "authentication_error"
    ok = httpx.post(f"{app_server.url}/mcp", json=_initialize(),
                    headers=headers | {"Authorization": f"Bearer {API_KEY}"})
    assert ok.status_code == 200, ok.text


async def test_http_tools(app_server: ServerProcess) -> None:
    client = httpx2.AsyncClient(headers={"Authorization": f"Bearer {API_KEY}"},
                                timeout=httpx2.Timeout(30, read=300))
    async with client, streamable_http_client(f"{app_server.url}/mcp",
                                              http_client=client) as (read, write), \
            ClientSession(read, write) as session:
        await session.initialize()
        await _check_tools(session)
