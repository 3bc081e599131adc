"""The Python client against the real app routes (scripted engine, in-process)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from search_app.client import Answer, AsyncSearchClient, SearchAPIError
from search_app.events import DeltaEvent, ErrorEvent, SearchEvent, event_from_dict
from tests.app.support import ScriptedEngine, make_app


def _client(app: object, **kwargs: object) -> AsyncSearchClient:
    return AsyncSearchClient("http://test", transport=httpx.ASGITransport(app=app),  # type: ignore[arg-type]
                             **kwargs)  # type: ignore[arg-type]


async def test_ask_follow_up_get_thread_and_history(tmp_path: Path) -> None:
    app, _ = make_app(tmp_path, ScriptedEngine())
    async with _client(app, client_id="alice") as client:
        first = await client.ask("Who designed the Eiffel Tower?")
        assert first.finish_reason == "stop" and first.sources and first.related
        assert "[citation:1]" in first.answer and first.timings is not None
        assert first.support is not None and first.support.sentences
        names = [e.name for e in first.events]
        assert names[0] == "search" and names[-1] == "done"

        follow = await client.ask("When was it built?", thread_id=first.thread_id,
                                  related=False)
        assert follow.thread_id == first.thread_id and follow.related == []
        assert "Eiffel" in follow.search_query

        stored = await client.get(first.search_id)
        assert stored.model_dump() == first.model_dump()  # replay == what was streamed
        assert [a.search_id for a in await client.thread(first.thread_id)] == [
            first.search_id, follow.search_id]
        history = await client.history()
        assert [t["thread_id"] for t in history] == [first.thread_id]


async def test_stream_yields_typed_events_as_they_come(tmp_path: Path) -> None:
    app, _ = make_app(tmp_path, ScriptedEngine())
    async with _client(app) as client:
        events = [e async for e in client.stream("Who designed the Eiffel Tower?")]
    assert isinstance(events[0], SearchEvent)
    assert any(isinstance(e, DeltaEvent) and e.text for e in events)


async def test_http_errors_raise_with_the_servers_code(tmp_path: Path) -> None:
    app, _ = make_app(tmp_path, ScriptedEngine())
    async with _client(app) as client:
        with pytest.raises(SearchAPIError) as info:
            await client.ask("x", thread_id="no-such-thread")
        assert info.value.status == 404 and "no-such-thread" in info.value.message
        with pytest.raises(SearchAPIError) as info:
            await client.ask("   ")
        assert info.value.status == 400
        with pytest.raises(SearchAPIError) as info:
            await client.get("missing")
        assert info.value.status == 404


def test_an_error_event_raises_and_a_cut_stream_is_incomplete() -> None:
    search = SearchEvent(search_id="s", thread_id="t", query="q", search_query="q")
    with pytest.raises(SearchAPIError) as info:
        Answer.from_events([search, ErrorEvent(code="model_error", message="boom")])
    assert (info.value.code, info.value.status) == ("model_error", None)
    with pytest.raises(SearchAPIError, match="incomplete"):
        Answer.from_events([search, DeltaEvent(text="half")])
    assert event_from_dict(search.record()) == search
