"""Faults injected into real processes: search providers that fail in each way, the app
killed while it saves answers, a database another process has locked, and clients that
leave mid-answer. The answer model is the session's llama.cpp model server, reached
through the upstream engine (the app starts in seconds); a SearXNG-shaped loopback
server misbehaves on command."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from bench.procs import free_port
from serving.engines.base import GenerationChunk, GenerationRequest
from tests.app.support import ScriptedEngine, make_app, parse_sse
from tests.conftest import API_KEY, needs_llama_cpp
from tests.support.server import ROOT, ServerProcess, run_server

QUESTION = "Who designed the Eiffel Tower?"
def real_servers(test: Any) -> Any:
    """Marks of the tests over real processes (the session's llama.cpp model server and
    the default local index)."""
    for mark in (needs_llama_cpp, pytest.mark.llamacpp, pytest.mark.slow,
                 pytest.mark.skipif(not (ROOT / "data/index/snapshot/snapshot.json")
                                    .is_file(), reason="the default local index is not "
                                                       "built")):
        test = mark(test)
    return test


class FaultySearXNG:
    """``/search`` answers according to ``mode``: down (the connection is cut), slow
    (longer than the app's search timeout), garbage (an HTML page), 429."""

    def __init__(self) -> None:
        self.mode = "down"
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if owner.mode == "down":
                    self.connection.shutdown(2)  # the provider vanishes mid-request
                    return
                if owner.mode == "slow":
                    time.sleep(4)
                if owner.mode == "429":
                    self.send_response(429)
                    self.send_header("Retry-After", "1")
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"error": "too many requests"}')
                    return
                body = b"<html><body>Service temporarily unavailable</body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def app_args(llama_server: ServerProcess, store: Path, *extra: str) -> list[str]:
    return ["serve", "--engine", "openai", "--upstream-url", f"{llama_server.url}/v1",
            "--store-path", str(store), "--answer-max-tokens", "64", *extra]


def wait_ready(server: ServerProcess) -> None:
    for _ in range(240):
        if httpx.get(f"{server.url}/api/info").json()["state"] == "ready":
            return
        time.sleep(0.25)
    raise AssertionError("the answer engine did not become ready")


@pytest.fixture(scope="module")
def faulty() -> Iterator[FaultySearXNG]:
    web = FaultySearXNG()
    yield web
    web.close()


@real_servers
@pytest.mark.parametrize("mode,status", [("down", "unavailable"), ("slow", "timeout"),
                                         ("garbage", "bad_response"),
                                         ("429", "rate_limited")])
def test_search_provider_faults_hand_over_with_the_reason(
        mode: str, status: str, faulty: FaultySearXNG, fault_app: ServerProcess) -> None:
    faulty.mode = mode
    r = httpx.post(f"{fault_app.url}/api/search", timeout=120,
                   json={"query": QUESTION, "related": False})
    events = dict(parse_sse(r.text))
    assert "done" in events, list(events)
    assert events["sources"]["provider"] == "local"
    reasons = [f for f in events["timings"]["fallbacks"] if f.startswith("search: ")]
    assert reasons and reasons[0].startswith(f"search: searxng {status}: "), reasons


@pytest.fixture(scope="module")
def fault_app(faulty: FaultySearXNG, llama_server: ServerProcess, artifacts_dir: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    store = tmp_path_factory.mktemp("faults") / "store.sqlite"
    env = {"SEARCH_APP_UPSTREAM_API_KEY": API_KEY}
    with run_server(app_args(llama_server, store, "--provider", "searxng,local",
                             "--searxng-url", faulty.url, "--search-timeout-s", "2"),
                    env=env, log_path=artifacts_dir / "fault_app.log") as server:
        wait_ready(server)
        yield server


@real_servers
def test_sigkill_while_saving_loses_no_answer_whose_done_was_sent(
        llama_server: ServerProcess, artifacts_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "store.sqlite"
    env = {"SEARCH_APP_UPSTREAM_API_KEY": API_KEY}
    done: list[str] = []
    started: list[str] = []

    async def ask(http: httpx.AsyncClient, url: str, question: str) -> None:
        search_id = None
        try:
            async with http.stream("POST", f"{url}/api/search",
                                   json={"query": question, "related": False}) as r:
                async for line in r.aiter_lines():
                    if search_id is None and line.startswith("data: ") \
                            and '"search_id"' in line:
                        search_id = json.loads(line[6:])["search_id"]
                        started.append(search_id)
                    if line == "event: done" and search_id is not None:
                        done.append(search_id)
        except httpx.HTTPError:
            pass  # the server was killed under it

    questions = [QUESTION, "What is bronze made of?", "Where is Timbuktu?",
                 "Who was Zheng He?", "How does photosynthesis work?", "What is a volcano?"]
    with run_server(app_args(llama_server, store, "--provider", "local"), env=env,
                    log_path=artifacts_dir / "sigkill_app.log") as server:
        wait_ready(server)

        async def scenario() -> None:
            async with httpx.AsyncClient(timeout=120) as http:
                tasks = [asyncio.create_task(ask(http, server.url, q)) for q in questions]
                for _ in range(1200):  # until some are done and some are still running
                    if len(done) >= 2 or all(t.done() for t in tasks):
                        break
                    await asyncio.sleep(0.05)
                os.kill(server.process.pid, signal.SIGKILL)
                await asyncio.gather(*tasks)

        asyncio.run(scenario())
        server.process.wait(timeout=10)
    assert len(done) >= 2, (done, started)
    db = sqlite3.connect(store)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
    with run_server(app_args(llama_server, store, "--provider", "local"), env=env,
                    log_path=artifacts_dir / "sigkill_app_after.log") as again:
        for search_id in done:  # every answer whose done went out is there
            r = httpx.get(f"{again.url}/api/search/{search_id}")
            assert r.status_code == 200, search_id
            assert r.json()["done"] is not None
        for search_id in set(started) - set(done):  # nothing half-stored
            r = httpx.get(f"{again.url}/api/search/{search_id}")
            assert r.status_code in (200, 404)
            if r.status_code == 200:
                assert r.json()["done"] is not None


@real_servers
def test_a_locked_database_is_a_clear_error_and_nothing_breaks(
        llama_server: ServerProcess, artifacts_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "store.sqlite"
    env = {"SEARCH_APP_UPSTREAM_API_KEY": API_KEY}
    with run_server(app_args(llama_server, store, "--provider", "local"), env=env,
                    log_path=artifacts_dir / "locked_db_app.log") as server:
        wait_ready(server)
        holder = sqlite3.connect(store, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # a backup or a stray sqlite3 shell
        try:
            r = httpx.post(f"{server.url}/api/search", timeout=120,
                           json={"query": QUESTION, "related": False})
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        name, error = parse_sse(r.text)[-1]
        assert name == "error" and error["code"] == "store_failed", (name, error)
        assert "database is locked" in error["message"]
        assert str(store) not in error["message"]
        r = httpx.post(f"{server.url}/api/search", timeout=120,
                       json={"query": QUESTION, "related": False})
        events = parse_sse(r.text)
        assert events[-1][0] == "done"
        search_id = events[0][1]["search_id"]
        assert httpx.get(f"{server.url}/api/search/{search_id}").status_code == 200
    db = sqlite3.connect(store)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()


async def test_disconnect_leaves_no_task_and_no_running_generation(tmp_path: Path) -> None:
    """Leave mid-answer many times, over a real socket (uvicorn in this event loop, so
    its tasks can be counted): afterwards the engine runs nothing and the loop holds no
    more tasks than before (no leaked reads, related questions or watchers)."""
    class SlowRelated(ScriptedEngine):  # related questions still running at the leave
        async def generate(self, request: GenerationRequest
                           ) -> AsyncIterator[GenerationChunk]:
            if request.sampling.json_schema is not None:
                await asyncio.sleep(30)
            async for chunk in super().generate(request):
                yield chunk

    engine = SlowRelated([f" word{i}." for i in range(400)], delay_s=0.01)
    app, _ = make_app(tmp_path, engine)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",
                                           log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=30) as c:
            # One whole answer first: sse-starlette starts one watcher per process.
            await c.post(f"{url}/api/search", json={"query": QUESTION, "related": False})
        await asyncio.sleep(0.2)
        before = len(asyncio.all_tasks())
        for _ in range(5):
            async with httpx.AsyncClient(timeout=30) as c:
                async with c.stream("POST", f"{url}/api/search",
                                    json={"query": QUESTION, "grounding": "mark"}) as r:
                    async for line in r.aiter_lines():
                        if line == "event: delta":
                            await asyncio.sleep(0.1)  # a few sentences: related started
                            break  # the client leaves
        for _ in range(200):
            if engine.running == 0 and len(asyncio.all_tasks()) <= before:
                break
            await asyncio.sleep(0.02)
        assert engine.running == 0
        assert len(engine.aborted) >= 5
        assert len(asyncio.all_tasks()) <= before, asyncio.all_tasks()
    finally:
        server.should_exit = True
        await serving


async def test_a_full_disk_is_a_clear_error_and_nothing_is_corrupted(tmp_path: Path) -> None:
    """SQLite's own "database or disk is full" (SQLITE_FULL), made real by capping the
    database's pages at its current size: the answer ends with store_failed saying so,
    the file stays sound, and once there is room again answers are stored."""
    app, store = make_app(tmp_path, ScriptedEngine())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        first = parse_sse((await c.post("/api/search", json={"query": QUESTION})).text)
        assert first[-1][0] == "done"
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute(f"PRAGMA max_page_count={pages}")  # the disk is full now
        full = parse_sse((await c.post("/api/search", json={"query": QUESTION})).text)
        assert full[-1][0] == "error" and full[-1][1]["code"] == "store_failed"
        assert "database or disk is full" in full[-1][1]["message"]
        assert (await c.get(f"/api/search/{full[0][1]['search_id']}")).status_code == 404
        store._db.execute("PRAGMA max_page_count=1073741823")  # room again
        again = parse_sse((await c.post("/api/search", json={"query": QUESTION})).text)
        assert again[-1][0] == "done"
        assert (await c.get(f"/api/search/{again[0][1]['search_id']}")).status_code == 200
    assert store._db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    store.close()
