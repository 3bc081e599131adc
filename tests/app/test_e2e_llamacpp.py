"""End to end: a real ``search-app serve`` process with llama.cpp (SmolLM2), MiniLM and
the default local index (10k Wikipedia summaries under data/), over HTTP."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from search_app.prompts import ABSTAIN_TEXT
from tests.app.support import parse_lepton, parse_sse
from tests.conftest import needs_llama_cpp
from tests.support.server import ROOT, ServerProcess, run_server

pytestmark = [needs_llama_cpp, pytest.mark.llamacpp, pytest.mark.slow,
              pytest.mark.skipif(not (ROOT / "data/index/snapshot/snapshot.json").is_file(),
                                 reason="the default local index is not built")]


@pytest.fixture(scope="module")
def app_server(artifacts_dir: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[ServerProcess]:
    store = tmp_path_factory.mktemp("store") / "store.sqlite"
    with run_server(["serve", "--engine", "llamacpp", "--context-length", "2048",
                     "--store-path", str(store)],
                    log_path=artifacts_dir / "search_app_server.log") as server:
        # /health is up before the answer engine: wait until it answers.
        for _ in range(120):
            probe = httpx.get(f"{server.url}/searxng/search",
                              params={"q": "x", "format": "json"})
            if probe.status_code == 200:
                break
            time.sleep(0.5)
        yield server


def _ask(server: ServerProcess, **body: object) -> list[tuple[str, dict]]:
    response = httpx.post(f"{server.url}/api/search", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return parse_sse(response.text)


def test_answer_stream_store_and_follow_up(app_server: ServerProcess) -> None:
    events = _ask(app_server, query="Who designed the Eiffel Tower?")
    names = [n for n, _ in events]
    assert names[:3] == ["search", "stage", "sources"] and names[-4:] == [
        "related", "support", "timings", "done"], names
    assert names[3] == "quote" and set(names[4:-4]) == {"delta"}  # the lead, then text
    assert events[4][1]["text"].startswith(f"> {events[3][1]['text']} [citation:")
    data = dict(events)
    sources = data["sources"]["sources"]
    assert data["sources"]["relevant"] and "Eiffel Tower" in [s["title"] for s in sources]
    questions = data["related"]["questions"]
    assert len(questions) >= 2 and all(q.endswith("?") for q in questions), questions
    assert all(q.lower() != "who designed the eiffel tower?" for q in questions)
    assert data["timings"]["ttft_ms"] > 0 and data["done"]["usage"]["completion_tokens"] > 0

    search_id = events[0][1]["search_id"]
    record = httpx.get(f"{app_server.url}/api/search/{search_id}").json()
    assert [(e["event"], e["data"]) for e in record["events"]] == [
        (n, d) for n, d in events if n != "stage"]  # progress events are not stored
    numbers = {s["number"] for s in record["sources"]}
    for n in re.findall(r"\[citation:(\d+)\]", record["answer"]):
        assert int(n) in numbers
    assert len(record["support"]["sentences"]) >= 1

    follow = _ask(app_server, query="When was it built?", related=False,
                  thread_id=events[0][1]["thread_id"])
    assert "Eiffel Tower" in follow[0][1]["search_query"]
    assert follow[-1][0] == "done"
    thread = httpx.get(f"{app_server.url}/api/threads/{events[0][1]['thread_id']}")
    assert len(thread.json()["answers"]) == 2


def test_off_corpus_question_hits_the_relevance_gate(app_server: ServerProcess) -> None:
    events = _ask(app_server, query="How do I fix npm ERR! ERESOLVE unable to resolve "
                                    "dependency tree?")
    data = dict(events)
    assert data["sources"]["relevant"] is False and data["sources"]["sources"] == []
    answer = "".join(d["text"] for n, d in events if n == "delta")
    assert answer == ABSTAIN_TEXT and "[citation:" not in answer
    assert data["done"]["finish_reason"] == "no_relevant_sources"


def test_lepton_query_as_the_front_end_reads_it(app_server: ServerProcess) -> None:
    body = {"query": "Where is Timbuktu?", "search_uuid": "e2e-timbuktu"}
    with httpx.stream("POST", f"{app_server.url}/query", json=body,
                      timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        text = "".join(response.iter_text())
    sources, answer, related = parse_lepton(text)
    assert sources and all(s["url"].startswith("https://") for s in sources)
    assert "Timbuktu" in [s["name"] for s in sources]
    assert answer.strip()
    for n in re.findall(r"\[citation:(\d+)\]", answer):
        assert 1 <= int(n) <= len(sources)
    assert isinstance(related, list) and all(set(q) == {"question"} for q in related)
    assert len(related) >= 2, related  # they used to come back empty
    replay = httpx.post(f"{app_server.url}/query", json=body, timeout=30)
    assert replay.text == text
    assert httpx.post(f"{app_server.url}/query",
                      json={"query": "x", "search_uuid": ""}).status_code == 400


def test_searxng_json(app_server: ServerProcess) -> None:
    response = httpx.get(f"{app_server.url}/searxng/search",
                         params={"q": "eiffel tower", "format": "json"})
    assert response.status_code == 200
    results = response.json()["results"]
    assert results[0]["title"] == "Eiffel Tower" and results[0]["engine"] == "local"
    bad = httpx.get(f"{app_server.url}/searxng/search", params={"q": "x",
                                                                      "format": "html"})
    assert bad.status_code == 400


def test_client_disconnect_stores_nothing(app_server: ServerProcess) -> None:
    search_id = None
    with httpx.stream("POST", f"{app_server.url}/api/search", timeout=120,
                      json={"query": "What is bronze made of?"}) as response:
        buffer = ""
        for text in response.iter_text():
            buffer += text
            events = parse_sse(buffer.rsplit("\n\n", 1)[0] + "\n\n")
            search_id = search_id or (events and events[0][1].get("search_id"))
            if any(n == "delta" for n, _ in events):
                break  # leave mid-answer: the connection closes here
    assert search_id
    time.sleep(1.0)
    assert httpx.get(f"{app_server.url}/api/search/{search_id}").status_code == 404
    metrics = httpx.get(f"{app_server.url}/metrics").text
    running = [line for line in metrics.splitlines()
               if "num_requests_running" in line and not line.startswith("#")]
    assert running and all(float(line.split()[-1]) == 0 for line in running), running
    assert _ask(app_server, query="Where is Timbuktu?", related=False)[-1][0] == "done"


async def test_model_failure_mid_answer_in_process(tmp_path: Path) -> None:
    """The real app and llama.cpp engine, with the engine failing after a few tokens."""
    from collections.abc import AsyncIterator

    from search_app.app import create_app
    from search_app.config import Settings
    from serving.engines.base import EngineLoad, GenerationChunk, GenerationRequest
    from serving.errors import EngineError

    app = create_app(Settings(engine="llamacpp", context_length=2048,
                              store_path=tmp_path / "store.sqlite",
                              data_dir=ROOT / "data"))
    async with app.router.lifespan_context(app):
        for _ in range(240):
            if app.state.answer is not None or app.state.answer_failure:
                break
            await asyncio.sleep(0.25)
        pipeline = app.state.answer.pipeline
        real = pipeline.engine()

        class Failing:
            info = real.info
            count_tokens = real.count_tokens
            queue_position = staticmethod(real.queue_position)

            @property
            def load(self) -> EngineLoad:
                return real.load

            async def generate(self, request: GenerationRequest
                               ) -> AsyncIterator[GenerationChunk]:
                n = 0
                async for chunk in real.generate(request):
                    n += 1
                    if n > 3:
                        raise EngineError("the engine crashed")
                    yield chunk

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            pipeline.engine = Failing
            failed = parse_sse((await client.post(
                "/api/search", json={"query": "Who was Zheng He?"}, timeout=120)).text)
            assert failed[-1] == ("error", {"code": "model_error",
                                            "message": "the engine crashed"})
            assert (await client.get(f"/api/search/{failed[0][1]['search_id']}")
                    ).status_code == 404
            pipeline.engine = lambda: real
            ok = parse_sse((await client.post(
                "/api/search", json={"query": "Who was Zheng He?", "related": False},
                timeout=120)).text)
            assert ok[-1][0] == "done"


def test_openai_face_through_the_openai_client(app_server: ServerProcess) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{app_server.url}/v1", api_key="unused", timeout=120,
                           max_retries=0)
    models = {m.id for m in client.models.list().data}
    assert "search-app" in models and len(models) >= 2  # beside the served model
    stream = client.chat.completions.create(
        model="search-app", stream=True,
        messages=[{"role": "user", "content": "Who designed the Eiffel Tower?"}])
    chunks = list(stream)
    citations = chunks[0].model_extra["citations"]
    assert "https://en.wikipedia.org/wiki/Eiffel_Tower" in citations
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() and "[citation:" not in text
    for n in re.findall(r"\[(\d+)\]", text):
        assert 1 <= int(n) <= len(citations)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    stored = httpx.get(f"{app_server.url}/api/search/{chunks[0].id}")
    assert stored.status_code == 200


def test_python_client_and_ask_cli(app_server: ServerProcess) -> None:
    import json
    import subprocess
    import sys

    from search_app.client import SearchClient

    with SearchClient(app_server.url, client_id="e2e-client") as client:
        answer = client.ask("What is bronze made of?", related=False)
        assert answer.finish_reason in ("stop", "length") and answer.sources
        assert client.get(answer.search_id).answer == answer.answer
        assert client.history()[0]["thread_id"] == answer.thread_id

    def ask(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "search_app.cli", "ask",
                               "--base-url", app_server.url, *args],
                              capture_output=True, text=True, timeout=180, cwd=ROOT)

    done = ask("When was it built?", "--thread", answer.thread_id, "--json", "--no-related")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["thread_id"] == answer.thread_id and "bronze" in data["search_query"].lower()
    shown = ask("Where is Timbuktu?", "--no-related")
    assert shown.returncode == 0, shown.stderr
    assert "Sources" in shown.stdout and "[1] Timbuktu" in shown.stdout
    # the lead: said where it is from, then the quote as a "> " line
    assert re.search(r"quoted from source \[\d+\]:\n> \S", shown.stdout), shown.stdout
    assert "--thread " in shown.stdout
    unknown = ask("x", "--thread", "no-such-thread")
    assert unknown.returncode == 1 and unknown.stderr.count("\n") == 1
    assert "not found" in unknown.stderr


def test_strict_grounding_with_the_real_model(app_server: ServerProcess) -> None:
    """The default policy on SmolLM2's own answers: what reaches the reader is exactly
    the sentences that passed the check; what failed is listed, withheld, nowhere in the
    text (not in the stream, the stored answer or the Lepton face's text)."""
    import subprocess
    import sys

    from search_app.grounding import strip_citations

    withheld_seen = 0
    for question in ("Who painted the Mona Lisa?", "Who designed the Eiffel Tower?",
                     "What is bronze made of?"):
        events = _ask(app_server, query=question, related=False)
        data = dict(events)
        support = data["support"]
        assert support["policy"] == "strict"
        text = strip_citations("".join(d["text"] for n, d in events if n == "delta"))
        kept = [s for s in support["sentences"] if not s["withheld"]]
        withheld = [s for s in support["sentences"] if s["withheld"]]
        assert all(s["supported"] for s in kept)
        assert all(not s["supported"] for s in withheld)
        assert support["withheld"] == data["done"]["withheld"] == len(withheld)
        for s in withheld:
            if len(s["sentence"]) > 12:
                assert strip_citations(s["sentence"]) not in text
        stored = httpx.get(f"{app_server.url}/api/search/{events[0][1]['search_id']}").json()
        assert strip_citations(stored["answer"]) == text
        withheld_seen += len(withheld)
    # The CLI says how many were withheld, and lists them on request.
    shown = subprocess.run([sys.executable, "-m", "search_app.cli", "ask", "--base-url",
                            app_server.url, "--no-related", "--show-withheld",
                            "Who painted the Mona Lisa?"],
                           capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert shown.returncode == 0, shown.stderr
    if "withheld" in shown.stdout:
        assert "unsupported sentence" in shown.stdout and "withheld: " in shown.stdout


@pytest.fixture(scope="module")
def one_slot_server(artifacts_dir: Path, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[ServerProcess]:
    """One llama.cpp slot and a queue of one: the smallest machine that overloads."""
    store = tmp_path_factory.mktemp("busy") / "store.sqlite"
    with run_server(["serve", "--engine", "llamacpp", "--context-length", "2048",
                     "--parallel", "1", "--max-queue", "1", "--first-token-timeout-s", "8",
                     "--store-path", str(store)],
                    log_path=artifacts_dir / "one_slot_server.log") as server:
        for _ in range(120):
            if httpx.get(f"{server.url}/api/info").json()["state"] == "ready":
                break
            time.sleep(0.5)
        yield server


def test_overload_queues_with_its_place_then_refuses(one_slot_server: ServerProcess) -> None:
    """A long generation holds the only slot for ~20 s. An answer asked meanwhile waits
    in the queue, hears its place, and is answered although it waited far longer than
    the 8 s first-token timeout; one more is refused at once (model_busy before any
    sources; 429 on /query)."""
    url = one_slot_server.url
    model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=180) as http:
            hog = asyncio.create_task(http.post(f"{url}/v1/completions", json={
                "model": model, "prompt": "Once upon a time", "max_tokens": 1000,
                "ignore_eos": True}))
            for _ in range(100):  # until it holds the slot
                metrics = (await http.get(f"{url}/metrics")).text
                if re.search(r'num_requests_running\{[^}]*\} 1\.0', metrics):
                    break
                await asyncio.sleep(0.1)
            events: list[tuple[str, dict]] = []

            async def queued_answer() -> None:
                async with http.stream("POST", f"{url}/api/search", json={
                        "query": "Who designed the Eiffel Tower?", "related": False}) as r:
                    block = ""
                    async for line in r.aiter_lines():
                        block += line + "\n"
                        if not line:
                            events.extend(parse_sse(block + "\n"))
                            block = ""

            waiting = asyncio.create_task(queued_answer())
            for _ in range(200):
                if any(n == "stage" and d["stage"] == "queued" for n, d in events):
                    break
                await asyncio.sleep(0.1)
            assert ("stage", {"stage": "queued", "detail": "0 ahead"}) in events, events
            refused = await http.post(f"{url}/api/search", json={"query": "Where is Paris?"})
            names = [n for n, _ in parse_sse(refused.text)]
            assert names[-1] == "error" and "sources" not in names, names
            assert parse_sse(refused.text)[-1][1]["code"] == "model_busy"
            lepton = await http.post(f"{url}/query", json={"query": "Where is Paris?",
                                                           "search_uuid": "busy-1"})
            assert lepton.status_code == 429 and lepton.headers["retry-after"]
            await waiting
            assert (await hog).status_code == 200
            waited = [n for n, _ in events]
            assert waited[-1] == "done" and "error" not in waited, events[-3:]
            timings = dict(events)["timings"]
            assert timings["ttft_ms"] > 8000  # it waited longer than the timeout allows

    asyncio.run(scenario())
