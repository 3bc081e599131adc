"""Your own documents through a real app process and the real model (the session's
llama.cpp server through the upstream engine; MiniLM embeddings): a PDF uploaded with
the Python client, then asked about over ``/api/search`` and with ``search-app ask
--collection``, answered only from the collection (``web: false``). Two answers."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from search_app.client import SearchClient
from tests.app.support import parse_sse
from tests.app.test_faults_e2e import app_args, wait_ready
from tests.conftest import API_KEY, needs_llama_cpp
from tests.support.documents import pdf_file
from tests.support.server import ROOT, ServerProcess, run_server

pytestmark = [needs_llama_cpp, pytest.mark.llamacpp, pytest.mark.slow]
PAGES = ["Zorbex 4000 coffee machine manual. Read these safety notes before first use.",
         "The Zorbex 4000 coffee machine must be descaled every 30 days with citric acid."]
QUESTION = "How often must the Zorbex 4000 coffee machine be descaled?"


@pytest.fixture(scope="module")
def docs_app(llama_server: ServerProcess, artifacts_dir: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("documents-e2e")  # collections live under data_dir
    env = {"SEARCH_APP_UPSTREAM_API_KEY": API_KEY, "SEARCH_APP_DATA_DIR": str(data)}
    with run_server(app_args(llama_server, data / "store.sqlite", "--provider", "local"),
                    env=env, log_path=artifacts_dir / "documents_app.log") as server:
        wait_ready(server)
        yield server


@pytest.fixture(scope="module")
def manual(docs_app: ServerProcess, tmp_path_factory: pytest.TempPathFactory
           ) -> dict[str, object]:
    path = tmp_path_factory.mktemp("upload") / "zorbex manual.pdf"
    path.write_bytes(pdf_file(PAGES))
    with SearchClient(docs_app.url) as client:
        record = client.upload(path, "manuals")
        assert [(c["name"], c["documents"]) for c in client.collections()] == [("manuals", 1)]
    assert record["kind"] == "pdf" and record["sections"] == 2
    return record


def test_answer_from_an_uploaded_pdf_cites_its_page(docs_app: ServerProcess,
                                                    manual: dict[str, object]) -> None:
    r = httpx.post(f"{docs_app.url}/api/search", timeout=300, json={
        "query": QUESTION, "collections": ["manuals"], "web": False, "related": False})
    assert r.status_code == 200, r.text
    events = parse_sse(r.text)
    assert events[-1][0] == "done", events[-1]
    sources = dict(events)["sources"]
    assert sources["provider"] == "collections" and sources["relevant"], sources
    first = sources["sources"][0]
    assert first["title"] == "zorbex manual.pdf, p. 2"
    assert first["url"] == f"/api/documents/{manual['id']}#page=2"
    assert first["site"] == "your documents" and "30 days" in first["passage"]
    answer = "".join(d["text"] for n, d in events if n == "delta")
    assert answer.strip()
    original = httpx.get(f"{docs_app.url}{first['url'].split('#')[0]}")
    assert original.status_code == 200 and original.content == pdf_file(PAGES)


def test_ask_cli_with_a_collection(docs_app: ServerProcess,
                                   manual: dict[str, object]) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "search_app.cli", "ask", QUESTION, "--base-url", docs_app.url,
         "--collection", "manuals", "--no-web", "--no-related", "--json"],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    assert answer["provider"] == "collections"
    assert answer["sources"][0]["title"] == "zorbex manual.pdf, p. 2"
    missing = subprocess.run(
        [sys.executable, "-m", "search_app.cli", "ask", QUESTION, "--base-url", docs_app.url,
         "--collection", "nope", "--no-web"], capture_output=True, text=True, timeout=60,
        cwd=ROOT)
    assert missing.returncode == 1 and "Collection 'nope' not found" in missing.stderr
