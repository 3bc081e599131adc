"""Research mode end to end: a real app process, the session's llama.cpp model (SmolLM2)
planning with JSON-schema constrained decoding, the default Wikipedia index, and
``search-app ask --research``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.app.support import parse_sse
from tests.app.test_faults_e2e import app_args, real_servers, wait_ready
from tests.conftest import API_KEY
from tests.support.server import ROOT, ServerProcess, run_server

QUESTION = "Who designed the Eiffel Tower, and where is the Statue of Liberty?"


@pytest.fixture(scope="module")
def research_app(llama_server: ServerProcess, artifacts_dir: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    store = tmp_path_factory.mktemp("research") / "store.sqlite"
    with run_server(app_args(llama_server, store, "--provider", "local",
                             "--research-max-steps", "3", "--research-section-tokens", "64",
                             "--grounding", "mark"),
                    env={"SEARCH_APP_UPSTREAM_API_KEY": API_KEY},
                    log_path=artifacts_dir / "research_app.log") as server:
        wait_ready(server)
        yield server


@real_servers
def test_the_model_plans_and_the_report_has_its_sections(research_app: ServerProcess
                                                         ) -> None:
    response = httpx.post(f"{research_app.url}/api/search", timeout=300, json={
        "query": QUESTION, "mode": "research", "related": False})
    assert response.status_code == 200, response.text
    events = parse_sse(response.text)
    names = [n for n, _ in events]
    assert names[-1] == "done", events[-1]
    data = dict(events)
    plan = data["plan"]
    # constrained decoding: the 135M model's plan parses; its steps (or, when it only
    # repeated the question, the question split at "and") are real, distinct questions
    assert 2 <= len(plan["sub_questions"]) <= 3, plan
    assert all(q.endswith("?") and q != QUESTION for q in plan["sub_questions"]), plan
    assert any("Eiffel Tower" in q for q in plan["sub_questions"]), plan
    steps = [d["detail"] for n, d in events if n == "stage" and d["stage"] == "step"]
    assert len(steps) == len(plan["sub_questions"])
    text = "".join(d["text"] for n, d in events if n == "delta")
    headings = re.findall(r"^## (.+)$", text, re.MULTILINE)
    assert headings == [*plan["sub_questions"], "Conclusion"], headings
    titles = [s["title"] for s in data["sources"]["sources"]]
    assert "Eiffel Tower" in titles, titles
    for n in re.findall(r"\[citation:(\d+)\]", text):
        assert 1 <= int(n) <= len(titles)
    stored = httpx.get(f"{research_app.url}/api/search/{data['search']['search_id']}")
    assert stored.json()["answer"] == text


@real_servers
def test_ask_command_research(research_app: ServerProcess) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "search_app.cli", "ask", "What is bronze made of?",
         "--base-url", research_app.url, "--research", "--no-related", "--json"],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["mode"] == "research" and answer["plan"]
    assert "## Conclusion" in answer["answer"]
