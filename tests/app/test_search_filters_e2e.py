"""Search filters through every face of a real app process: ``/api/search``, the
``search-app`` answer model, the Python client and ``search-app ask``. The app searches a
SearXNG-shaped mock on loopback that ignores every filter (it always returns alpha.example
dated 2024-03-05, beta.example undated and gamma.example dated 2023-11-20), so whatever
is filtered out was filtered by the app; the model is the session's llama.cpp server."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from search_app.client import SearchAPIError, SearchClient
from tests.app.support import parse_sse
from tests.app.test_faults_e2e import app_args, real_servers, wait_ready
from tests.conftest import API_KEY
from tests.support.loopback_web import LoopbackWeb, serve_loopback_web
from tests.support.server import ROOT, ServerProcess, run_server

SITES = {"alpha": "https://alpha.example/a", "beta": "https://beta.example/b",
         "gamma": "https://gamma.example/g"}


@pytest.fixture(scope="module")
def web() -> Iterator[LoopbackWeb]:
    with serve_loopback_web() as server:
        yield server


@pytest.fixture(scope="module")
def filter_app(web: LoopbackWeb, llama_server: ServerProcess, artifacts_dir: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    store = tmp_path_factory.mktemp("filters") / "store.sqlite"
    env = {"SEARCH_APP_UPSTREAM_API_KEY": API_KEY}
    # relevance gate off: the mock's snippets are short, and the test is about which
    # sources pass the filters, not whether they answer
    with run_server(app_args(llama_server, store, "--provider", "searxng",
                             "--searxng-url", web.url("/searxng"),
                             "--relevance-threshold", "-1"),
                    env=env, log_path=artifacts_dir / "filter_app.log") as server:
        wait_ready(server)
        yield server


def ask(server: ServerProcess, **body: object) -> dict[str, dict]:
    body = {"query": "river levels", "read_pages": False, "related": False, **body}
    response = httpx.post(f"{server.url}/api/search", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return dict(parse_sse(response.text))


def urls(events: dict[str, dict]) -> list[str]:
    return [s["url"] for s in events["sources"]["sources"]]


@real_servers
def test_native_api_filters_sites_and_dates(filter_app: ServerProcess,
                                            web: LoopbackWeb) -> None:
    events = ask(filter_app, search_domain_filter=["-alpha.example"])
    assert set(urls(events)) == {SITES["beta"], SITES["gamma"]}
    assert events["search"]["filters"] == "-site:alpha.example"
    sent = [r for r in web.requests if r["path"].startswith("/searxng/")][-1]["query"]
    assert sent["q"] == "river levels -site:alpha.example"  # the native form went out too

    # a range SearXNG cannot express: only results whose date is known and inside pass
    events = ask(filter_app, search_after_date_filter="1/1/2024",
                 search_before_date_filter="12/31/2024")
    assert urls(events) == [SITES["alpha"]]
    assert events["sources"]["sources"][0]["date"] == "2024-03-05"
    assert events["done"]["finish_reason"] != "no_results"


@real_servers
def test_nothing_in_range_says_so_and_is_stored(filter_app: ServerProcess) -> None:
    events = ask(filter_app, search_domain_filter=["nowhere.example"])
    assert events["sources"]["sources"] == []
    assert events["done"]["finish_reason"] == "no_results"
    assert "No results match the search filters (site:nowhere.example)" in \
        events["delta"]["text"]
    stored = httpx.get(f"{filter_app.url}/api/search/{events['search']['search_id']}")
    assert stored.status_code == 200 and "No results match" in stored.json()["answer"]


@real_servers
@pytest.mark.parametrize(("body", "param", "words"), [
    ({"search_after_date_filter": "3/5/2025", "search_before_date_filter": "3/1/2025"},
     "search_after_date_filter", "No results in that range"),
    ({"search_domain_filter": ["not a domain"]}, "search_domain_filter", "not a domain"),
    ({"search_recency_filter": "fortnight"}, "search_recency_filter", ""),
])
def test_bad_filters_are_a_400_naming_the_field(filter_app: ServerProcess, body: dict,
                                                param: str, words: str) -> None:
    for path, payload in (
            ("/api/search", {"query": "river", **body}),
            ("/v1/chat/completions", {"model": "search-app", **body,
                                      "messages": [{"role": "user", "content": "river"}]})):
        response = httpx.post(f"{filter_app.url}{path}", json=payload, timeout=30)
        assert response.status_code == 400, (path, response.text)
        error = response.json()["error"]
        assert param in (error.get("param") or "") + error["message"], (path, error)
        assert words in error["message"], (path, error)


@real_servers
def test_answer_model_takes_sonar_fields(filter_app: ServerProcess) -> None:
    response = httpx.post(f"{filter_app.url}/v1/chat/completions", timeout=120, json={
        "model": "search-app", "messages": [{"role": "user", "content": "river levels"}],
        "search_domain_filter": ["gamma.example", "beta.example"],
        "search_before_date_filter": "1/1/2024", "return_related_questions": False})
    assert response.status_code == 200, response.text
    body = response.json()
    # gamma is dated inside; beta is undated and SearXNG cannot vouch for a range
    assert body["citations"] == [SITES["gamma"]]
    assert body["search_results"][0]["date"] == "2023-11-20"


@real_servers
def test_python_client_and_ask_command(filter_app: ServerProcess) -> None:
    with SearchClient(filter_app.url) as client:
        answer = client.ask("river levels", read_pages=False, related=False,
                            search_domain_filter="beta.example")
        assert [s.url for s in answer.sources] == [SITES["beta"]]
        assert answer.filters == "site:beta.example"
        with pytest.raises(SearchAPIError) as info:
            client.ask("river", search_recency_filter="hour",
                       search_before_date_filter="1/1/2020")
        assert info.value.status == 400 and "No results in that range" in info.value.message

    command = [sys.executable, "-m", "search_app.cli", "ask", "river levels",
               "--base-url", filter_app.url, "--snippets-only", "--no-related",
               "--exclude-site", "alpha.example", "--before", "2024-12-31", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert [s["url"] for s in printed["sources"]] == [SITES["gamma"]]
    assert printed["filters"] == "-site:alpha.example, until 2024-12-31"

    bad = subprocess.run([*command[:-1], "--after", "12/31/2099"], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith("error: ") and "in the future" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
