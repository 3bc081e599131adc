"""Fault injection over a real ``search-app serve``: the model engine's process is killed
mid-stream (SIGSEGV as a crashing kernel would, SIGKILL as the OOM killer does).

What must hold: the answer in flight ends with an ``error`` event (``model_crashed``),
the OpenAI face with a 5xx in OpenAI's shape; ``/health`` says 503 and why; the UI,
stored answers and share links keep working while the engine is down; the engine comes
back by itself and the next question is answered.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.app.support import parse_sse
from tests.conftest import needs_llama_cpp
from tests.support.server import ROOT, ServerProcess, alive, child_pids, run_server

pytestmark = [needs_llama_cpp, pytest.mark.llamacpp, pytest.mark.slow,
              pytest.mark.skipif(not (ROOT / "data/index/snapshot/snapshot.json").is_file(),
                                 reason="the default local index is not built")]
MODEL = "SmolLM2-135M-Instruct.Q4_1"


@pytest.fixture(scope="module")
def app_server(artifacts_dir: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[ServerProcess]:
    store = tmp_path_factory.mktemp("faults") / "store.sqlite"
    # A 2 s first restart delay keeps the "down" window long enough to look at.
    with run_server(["serve", "--engine", "llamacpp", "--context-length", "2048",
                     "--store-path", str(store), "--engine-restart-backoff-s", "2"],
                    log_path=artifacts_dir / "engine_faults_server.log") as server:
        _wait_answering(server)
        yield server


def _wait_answering(server: ServerProcess, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(f"{server.url}/searxng/search", params={"q": "x", "format": "json"},
                    timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the answer engine did not come up"
        time.sleep(0.5)


def _engine_pid(server: ServerProcess) -> int:
    pids = child_pids(server.process.pid, "serving.engines._engine_child")
    assert len(pids) == 1, pids
    return pids[0]


def _wait_healthy(server: ServerProcess, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(f"{server.url}/health", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the engine did not come back"
        time.sleep(0.2)


def _ask(server: ServerProcess, query: str) -> list[tuple[str, dict]]:
    response = httpx.post(f"{server.url}/api/search", json={"query": query}, timeout=120)
    assert response.status_code == 200, response.text
    return parse_sse(response.text)


def _stream_and_kill(server: ServerProcess, sig: signal.Signals, query: str
                     ) -> tuple[list[tuple[str, dict]], int]:
    """Stream an answer; kill the engine process as soon as the first delta arrives."""
    pid = _engine_pid(server)
    events: list[tuple[str, dict]] = []
    name = "message"
    with httpx.stream("POST", f"{server.url}/api/search", json={"query": query},
                      timeout=120) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                events.append((name, json.loads(line[5:])))
                if name == "delta" and alive(pid):
                    os.kill(pid, sig)
    return events, pid


def _checks_while_down(server: ServerProcess, sig: signal.Signals, stored_id: str) -> None:
    """Everything that does not need the model keeps working; what needs it says 503."""
    health = httpx.get(f"{server.url}/health", timeout=10)
    assert health.status_code == 503
    message = health.json()["error"]["message"]
    assert "crashed" in message and sig.name in message and "restarting" in message
    assert httpx.get(f"{server.url}/", timeout=10).status_code == 200
    share = httpx.get(f"{server.url}/s/{stored_id}", timeout=10)
    assert share.status_code == 200 and "Eiffel" in share.text
    stored = httpx.get(f"{server.url}/api/search/{stored_id}", timeout=10)
    assert stored.status_code == 200 and stored.json()["answer"]
    chat = httpx.post(f"{server.url}/v1/chat/completions", timeout=10, json={
        "model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
    assert chat.status_code == 503 and chat.headers.get("Retry-After")
    error = chat.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == 503
    lepton = httpx.post(f"{server.url}/query", timeout=30,
                        json={"query": "Who designed the Eiffel Tower?", "search_uuid": "x1"})
    assert lepton.status_code == 503


def test_sigsegv_mid_answer(app_server: ServerProcess) -> None:
    before = _ask(app_server, "Who designed the Eiffel Tower?")
    assert before[-1][0] == "done"
    stored_id = before[0][1]["search_id"]

    events, pid = _stream_and_kill(app_server, signal.SIGSEGV,
                                   "What is the history of the Eiffel Tower?")
    names = [n for n, _ in events]
    assert "delta" in names and names[-1] == "error", names
    assert events[-1][1]["code"] == "model_crashed"
    assert "SIGSEGV" in events[-1][1]["message"]
    failed_id = events[0][1]["search_id"]
    _checks_while_down(app_server, signal.SIGSEGV, stored_id)
    # The failed answer was not stored as if it were complete.
    assert httpx.get(f"{app_server.url}/api/search/{failed_id}").status_code == 404

    _wait_healthy(app_server)
    assert _engine_pid(app_server) != pid
    after = _ask(app_server, "Who designed the Eiffel Tower?")
    assert after[-1][0] == "done" and dict(after)["done"]["usage"]["completion_tokens"] > 0
    metrics = httpx.get(f"{app_server.url}/metrics").text
    assert f'search_app:num_requests_running{{model="{MODEL}"}} 0.0' in metrics


def test_sigkill_mid_openai_completion(app_server: ServerProcess) -> None:
    _wait_healthy(app_server)
    before = _ask(app_server, "Who designed the Eiffel Tower?")
    stored_id = before[0][1]["search_id"]
    pid = _engine_pid(app_server)
    lines = []
    with httpx.stream("POST", f"{app_server.url}/v1/chat/completions", timeout=120, json={
            "model": MODEL, "stream": True, "max_tokens": 400, "ignore_eos": True,
            "messages": [{"role": "user", "content": "Tell me a long story."}]}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data:"):
                lines.append(line[5:].strip())
                if len(lines) == 3:
                    os.kill(pid, signal.SIGKILL)
    assert lines[-1] == "[DONE]"
    error = json.loads(lines[-2])["error"]
    assert error["code"] == 503 and error["type"] == "model_crashed"
    assert "SIGKILL" in error["message"]
    _checks_while_down(app_server, signal.SIGKILL, stored_id)

    _wait_healthy(app_server)
    chat = httpx.post(f"{app_server.url}/v1/chat/completions", timeout=60, json={
        "model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
    assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"]
    after = _ask(app_server, "Where is the Eiffel Tower?")
    assert after[-1][0] == "done"
