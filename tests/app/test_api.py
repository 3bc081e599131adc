"""The answer engine's HTTP APIs over a scripted engine (fast, deterministic)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from search_app.events import event_from_dict
from search_app.prompts import ABSTAIN_TEXT
from tests.app.support import ScriptedEngine, make_app, parse_lepton, parse_sse

ORDER = ["search", "stage", "sources", "quote", "delta", "related", "support", "timings",
         "done"]


def _client(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app),  # type: ignore[arg-type]
                             base_url="http://test")


def _collapse(names: list[str]) -> list[str]:
    return [n for i, n in enumerate(names) if i == 0 or names[i - 1] != n]


async def _ask(client: httpx.AsyncClient, **body: object) -> list[tuple[str, dict]]:
    response = await client.post("/api/search", json={"query": "Who designed the Eiffel "
                                                               "Tower?", **body})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return parse_sse(response.text)


async def test_event_order_shapes_and_stored_copy(tmp_path: Path) -> None:
    app, store = make_app(tmp_path, ScriptedEngine())
    async with _client(app) as client:
        events = await _ask(client)
        assert _collapse([n for n, _ in events]) == ORDER
        for name, data in events:  # every payload validates against its model
            assert event_from_dict({"event": name, "data": data}).name == name
        search, sources = events[0][1], dict(events)["sources"]["sources"]
        assert dict(events)["stage"] == {"stage": "rank", "detail": "3 documents"}
        assert [s["number"] for s in sources] == list(range(1, len(sources) + 1))
        assert all(s["url"].startswith("https://") and s["site"] for s in sources)
        answer = "".join(d["text"] for n, d in events if n == "delta")
        cited = {int(n) for n in re.findall(r"\[citation:(\d+)\]", answer)}
        assert cited and cited <= {s["number"] for s in sources}  # [citation:7] removed
        assert "[citation:7]" not in answer
        support = dict(events)["support"]["sentences"]
        assert any(s["supported"] for s in support)
        assert not support[-1]["supported"]  # "Bananas grow on the Moon"
        assert dict(events)["related"]["questions"][0].endswith("?")
        assert set(dict(events)["timings"]) >= {"search_ms", "read_ms", "rank_ms",
                                                 "ttft_ms", "total_ms"}
        assert dict(events)["done"]["finish_reason"] == "stop"

        stored = await client.get(f"/api/search/{search['search_id']}")
        assert stored.status_code == 200
        record = stored.json()
        # stored exactly as streamed, without the progress events
        assert [(e["event"], e["data"]) for e in record["events"]] == [
            (n, d) for n, d in events if n != "stage"]
        assert record["answer"] == answer and record["thread_id"] == search["thread_id"]
        assert (await client.get("/api/search/nope")).status_code == 404


@pytest.mark.parametrize("body, param", [
    ({"query": ""}, "query"), ({"query": "   "}, "query"), ({"query": "x" * 2001}, "query"),
    ({"query": "q", "sources": 0}, "sources"), ({"query": "q", "sources": 21}, "sources"),
    ({"query": "q", "provider": "bing"}, "provider"), ({"query": "q", "extra": 1}, "extra"),
])
async def test_bad_input_is_a_clear_400(tmp_path: Path, body: dict, param: str) -> None:
    app, _ = make_app(tmp_path, ScriptedEngine())
    async with _client(app) as client:
        response = await client.post("/api/search", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert param in (error["param"] or "") + error["message"]


async def test_follow_up_uses_thread_history(tmp_path: Path) -> None:
    engine = ScriptedEngine()
    app, _ = make_app(tmp_path, engine)
    async with _client(app) as client:
        first = await _ask(client, related=False)
        thread_id = first[0][1]["thread_id"]
        second = await _ask(client, query="When was it built?", thread_id=thread_id,
                            related=False)
        assert second[0][1]["thread_id"] == thread_id
        assert second[0][1]["search_query"] == "Who designed the Eiffel Tower? When was " \
                                               "it built?"
        messages = engine.requests[-1].messages or []
        assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
        assert messages[1]["content"] == "Who designed the Eiffel Tower?"
        assert "[citation:" not in messages[2]["content"]
        thread = (await client.get(f"/api/threads/{thread_id}")).json()
        assert [a["query"] for a in thread["answers"]] == [
            "Who designed the Eiffel Tower?", "When was it built?"]
        missing = await client.post("/api/search", json={"query": "q", "thread_id": "nope"})
        assert missing.status_code == 404
        assert (await client.get("/api/threads/nope")).status_code == 404


async def test_history_per_client(tmp_path: Path) -> None:
    app, _ = make_app(tmp_path, ScriptedEngine())
    async with _client(app) as client:
        await client.post("/api/search", json={"query": "Eiffel?", "related": False},
                          headers={"X-Client-Id": "alice"})
        response = await client.post("/api/search", json={"query": "Paris?"})
        cookie = response.cookies.get("search_app_client")
        assert cookie  # a new client gets an id cookie
        alice = (await client.get("/api/history?client_id=alice")).json()
        assert [t["title"] for t in alice["threads"]] == ["Eiffel?"]
        by_header = await client.get("/api/history", headers={"X-Client-Id": "alice"})
        assert by_header.json()["threads"] == alice["threads"]
        client.cookies.clear()
        assert (await client.get("/api/history")).status_code == 400


async def test_model_failure_is_an_error_event_and_the_app_keeps_serving(
        tmp_path: Path) -> None:
    engine = ScriptedEngine(fail_after=3)
    app, store = make_app(tmp_path, engine)
    async with _client(app) as client:
        events = await _ask(client)
        assert events[-1][0] == "error" and events[-1][1]["code"] == "model_error"
        assert store.get_answer(events[0][1]["search_id"]) is None  # nothing half-stored
        engine.fail_after = None
        events = await _ask(client)
        assert events[-1][0] == "done"


async def test_model_not_loaded_is_an_error_event(tmp_path: Path) -> None:
    from serving.errors import EngineNotReadyError

    app, _ = make_app(tmp_path, ScriptedEngine())

    def down() -> None:
        raise EngineNotReadyError("The model failed to load: boom")

    app.state.answer.pipeline.engine = down
    async with _client(app) as client:
        events = await _ask(client)
    assert [n for n, _ in events] == ["search", "stage", "error"]
    assert events[-1][1]["code"] == "model_unavailable"


async def test_relevance_gate_abstains_without_the_model(tmp_path: Path) -> None:
    engine = ScriptedEngine()
    app, _ = make_app(tmp_path, engine, relevance=0.99)
    async with _client(app) as client:
        events = await _ask(client)
    data = dict(events)
    assert data["sources"] == {"sources": [], "provider": "local", "relevant": False}
    answer = "".join(d["text"] for n, d in events if n == "delta")
    assert answer == ABSTAIN_TEXT and "[citation:" not in answer
    assert data["done"]["finish_reason"] == "no_relevant_sources"
    assert engine.requests == []
    assert "quote" not in data  # nothing passed the gate: nothing to quote


async def test_lepton_query_protocol_and_replay(tmp_path: Path) -> None:
    app, _ = make_app(tmp_path, ScriptedEngine())
    async with _client(app) as client:
        empty = await client.post("/query", json={"query": "q", "search_uuid": ""})
        assert empty.status_code == 400
        assert empty.json()["error"]["message"] == "search_uuid must be provided."
        huge = await client.post("/query", json={"query": "x" * 2001, "search_uuid": "h"})
        assert huge.status_code == 400 and "longer than" in huge.json()["error"]["message"]
        body = {"query": "Who designed the Eiffel Tower?", "search_uuid": "u-1"}
        response = await client.post("/query", json=body)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        sources, answer, related = parse_lepton(response.text)
        assert sources and all({"name", "url", "snippet"} <= set(s) for s in sources)
        for n in re.findall(r"\[citation:(\d+)\]", answer):
            assert 1 <= int(n) <= len(sources)
        quote, _, rest = answer.partition("\n\n")  # the lead, then the model's answer
        assert quote.startswith("> ") and rest.startswith("The Eiffel Tower")
        assert [set(q) for q in related] == [{"question"}] * 3
        again = await client.post("/query", json={**body, "query": "ignored"})
        assert again.text == response.text
        plain = await client.post("/query", json={"query": "Paris?", "search_uuid": "u-2",
                                                  "generate_related_questions": False})
        assert "__RELATED_QUESTIONS__" not in plain.text


async def test_not_ready_is_503(tmp_path: Path) -> None:
    app, _ = make_app(tmp_path, ScriptedEngine())
    app.state.answer = None
    async with _client(app) as client:
        response = await client.post("/api/search", json={"query": "q"})
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "service_unavailable"


# ---------------------------------------------------------------- Markdown export
def _footnotes(md: str) -> tuple[list[str], dict[str, str]]:
    """(references in order, definitions by label) of a Markdown document."""
    refs = re.findall(r"\[\^([^\]]+)\](?!:)", md)
    defs = dict(re.findall(r"^\[\^([^\]]+)\]: (.*)$", md, re.MULTILINE))
    return refs, defs


async def test_export_thread_and_answer_as_markdown(tmp_path: Path) -> None:
    app, _ = make_app(tmp_path, ScriptedEngine())
    async with _client(app) as client:
        first = await _ask(client, related=False)
        search_id, thread_id = first[0][1]["search_id"], first[0][1]["thread_id"]
        await _ask(client, query="When was it built?", thread_id=thread_id, related=False)
        as_json = await client.get(f"/api/threads/{thread_id}")
        assert as_json.headers["content-type"] == "application/json"
        assert (await client.get(f"/api/threads/{thread_id}?format=json")).json() == \
            as_json.json()
        turns = as_json.json()["answers"]

        response = await client.get(f"/api/threads/{thread_id}", params={"format": "md"})
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/markdown; charset=utf-8"
        assert response.headers["content-disposition"] == \
            'attachment; filename="who-designed-the-eiffel-tower.md"'
        md = response.text
        assert [line for line in md.splitlines() if line.startswith("# ")] == [
            "# Who designed the Eiffel Tower?", "# When was it built?"]
        assert "citation:" not in md
        refs, defs = _footnotes(md)
        assert {"1-1", "2-1"} <= set(refs) and set(refs) == set(defs)  # all resolve
        for turn, answer in enumerate(turns, 1):
            for source in answer["sources"]:
                label = f"{turn}-{source['number']}"
                if label in defs:
                    assert defs[label] == f"[{source['title']}]({source['url']})"

        single = await client.get(f"/api/search/{search_id}?format=md")
        assert single.status_code == 200
        assert single.headers["content-type"] == "text/markdown; charset=utf-8"
        assert single.headers["content-disposition"].startswith("attachment; filename=")
        assert single.text.startswith("# Who designed the Eiffel Tower?\n\n> The Eiffel Tower")
        refs, defs = _footnotes(single.text)
        assert refs and set(refs) == set(defs) == {"1"}
        assert defs["1"] == "[Eiffel Tower](https://en.wikipedia.org/wiki/Eiffel_Tower)"

        for path in (f"/api/threads/{thread_id}", f"/api/search/{search_id}"):
            bad = await client.get(path, params={"format": "pdf"})
            assert bad.status_code == 400
            error = bad.json()["error"]
            assert error["param"] == "format" and "format=md" in error["message"]
        for path in ("/api/threads/nope?format=md", "/api/search/nope?format=md"):
            missing = await client.get(path)
            assert missing.status_code == 404
            assert missing.json()["error"]["type"] == "not_found_error"


async def test_export_follows_thread_ownership_and_share_links(tmp_path: Path) -> None:
    app, _ = make_app(tmp_path, ScriptedEngine(), settings={"multi_user": True})
    users = app.state.access.users
    alice = {"Authorization": f"Bearer {users.add('alice', 'alice-password-1')}"}
    bob = {"Authorization": f"Bearer {users.add('bob', 'bob-password-22')}"}
    async with _client(app) as client:
        response = await client.post("/api/search", headers=alice,
                                     json={"query": "Eiffel Tower?", "related": False})
        search = parse_sse(response.text)[0][1]
        thread = f"/api/threads/{search['thread_id']}?format=md"
        answer = f"/api/search/{search['search_id']}?format=md"
        mine = await client.get(thread, headers=alice)
        assert mine.status_code == 200 and "[^1]: [Eiffel Tower](" in mine.text
        assert (await client.get(thread, headers=bob)).status_code == 404
        assert (await client.get(thread)).status_code == 401
        shared = await client.get(answer)  # a share link: readable without signing in
        assert shared.status_code == 200 and shared.text == mine.text
    app2, _ = make_app(tmp_path / "private", ScriptedEngine(),
                       settings={"multi_user": True, "public_share_links": False})
    async with _client(app2) as client:
        assert (await client.get(answer)).status_code == 401
