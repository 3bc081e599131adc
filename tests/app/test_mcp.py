"""The MCP face (search_app/mcp_server.py) in-process: the real app's MCP server over the
SDK's in-memory client, with the scripted engine and fixed search results of
tests/app/support.py. The transports (stdio, streamable HTTP behind the lock) are tested
over real processes in test_mcp_e2e.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from retrieval.providers import FallbackSearch, LocalProvider
from search_app.app import create_app
from search_app.config import Settings
from tests.app.support import ScriptedEngine, make_app

QUESTION = "Who designed the Eiffel Tower?"


async def test_tools_list_with_schemas(tmp_path: Path) -> None:
    app, _ = make_app(tmp_path, ScriptedEngine())
    async with Client(app.state.mcp) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == {"search", "ask", "list_collections"}
    assert tools["search"].input_schema["required"] == ["query"]
    assert tools["search"].input_schema["properties"]["k"]["maximum"] == 50
    assert "passages" in tools["search"].output_schema["properties"]
    assert {"answer", "sources"} <= set(tools["ask"].output_schema["properties"])


async def test_search_returns_ranked_passages_with_urls(tmp_path: Path) -> None:
    app, _ = make_app(tmp_path, ScriptedEngine())
    async with Client(app.state.mcp) as client:
        result = await client.call_tool("search", {"query": "Eiffel Tower engineer", "k": 2})
    assert not result.is_error
    passages = result.structured_content["passages"]
    assert len(passages) == 2 and passages[0]["title"] == "Eiffel Tower"
    assert passages[0]["url"] == "https://en.wikipedia.org/wiki/Eiffel_Tower"
    assert passages[0]["score"] >= passages[1]["score"] and passages[0]["text"]


async def test_ask_answers_with_sources_and_progress(tmp_path: Path) -> None:
    from tests.app.test_lead import LEAD, FixedLead

    app, store = make_app(tmp_path, ScriptedEngine())
    app.state.answer.pipeline.lead = FixedLead()
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    async with Client(app.state.mcp) as client:
        result = await client.call_tool("ask", {"query": QUESTION},
                                        progress_callback=on_progress)
    assert not result.is_error, result.content
    data = result.structured_content
    assert "Gustave Eiffel" in data["answer"] and "[citation:" not in data["answer"]
    assert data["sources"][0] == {"number": 1, "title": "Eiffel Tower",
                                  "url": "https://en.wikipedia.org/wiki/Eiffel_Tower"}
    assert data["quote"] == {"text": LEAD, "source": 1}  # the lead, the answer's first line
    assert data["answer"].startswith(f"> {LEAD} [1]")
    text = result.content[0].text
    assert text.startswith(data["answer"]) and \
        "[1] Eiffel Tower - https://en.wikipedia.org/wiki/Eiffel_Tower" in text
    stages = [m.split(":")[0] for _, _, m in progress if m]
    assert stages == ["searching", "ranking", "writing", "done"], progress
    values = [v for v, _, _ in progress]
    assert values == sorted(values) and {t for _, t, _ in progress} == {5.0}
    assert store.get_answer(data["search_id"]) is not None  # stored like any answer


async def test_pipeline_error_is_a_tool_error(tmp_path: Path) -> None:
    app, _ = make_app(tmp_path, ScriptedEngine())

    async def broken(query: str, k: int) -> list[Any]:
        raise RuntimeError("index gone")

    app.state.answer.pipeline.chains = {"local": FallbackSearch([LocalProvider(broken)])}
    async with Client(app.state.mcp) as client:
        asked = await client.call_tool("ask", {"query": QUESTION})
        searched = await client.call_tool("search", {"query": QUESTION})
    assert asked.is_error and "(search_failed)" in asked.content[0].text
    assert searched.is_error and "Search failed" in searched.content[0].text


@pytest.mark.parametrize("query", ["", "   "])
async def test_empty_query_is_a_clear_tool_error(tmp_path: Path, query: str) -> None:
    app, _ = make_app(tmp_path, ScriptedEngine())
    async with Client(app.state.mcp) as client:
        for tool in ("search", "ask"):
            result = await client.call_tool(tool, {"query": query})
            assert result.is_error
            assert "query is empty" in result.content[0].text, result.content


async def test_tools_say_so_while_the_app_is_loading(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path, embedding_model=""))  # no lifespan run
    async with Client(app.state.mcp) as client:
        result = await client.call_tool("ask", {"query": QUESTION})
        assert result.is_error and "still loading" in result.content[0].text
        app.state.answer_failure = "OSError: no index"
        result = await client.call_tool("search", {"query": QUESTION})
        assert result.is_error and "failed to start: OSError: no index" in \
            result.content[0].text


async def test_ask_is_rate_limited_per_caller(tmp_path: Path) -> None:
    app, _ = make_app(tmp_path, ScriptedEngine(),
                      settings={"rate_limit_per_minute": 1, "rate_limit_burst": 1})
    async with Client(app.state.mcp) as client:
        first = await client.call_tool("ask", {"query": QUESTION})
        second = await client.call_tool("ask", {"query": QUESTION})
    assert not first.is_error
    assert second.is_error and "Rate limited" in second.content[0].text


async def test_search_filters_and_research_mode_reach_the_pipeline(tmp_path: Path) -> None:
    from tests.app.test_research import Planner

    app, _ = make_app(tmp_path, Planner())
    async with Client(app.state.mcp) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert {"search_domain_filter", "search_recency_filter"} <= \
            set(tools["search"].input_schema["properties"])
        assert tools["ask"].input_schema["properties"]["mode"]["enum"] == ["quick",
                                                                           "research"]
        found = await client.call_tool("search", {"query": "Eiffel Tower engineer",
                                                  "search_domain_filter": ["-wikipedia.org"]})
        assert not found.is_error and found.structured_content["passages"] == []
        bad = await client.call_tool("ask", {"query": QUESTION,
                                             "search_after_date_filter": "2/30/2024"})
        assert bad.is_error and "M/D/YYYY" in bad.content[0].text
        report = await client.call_tool("ask", {"query": QUESTION + " And what is bronze?",
                                                "mode": "research"})
    assert not report.is_error, report.content
    assert "## Conclusion" in report.structured_content["answer"]


async def test_collections_list_and_ask_with_them(tmp_path: Path) -> None:
    from tests.app.test_documents import ANSWER as DOC_ANSWER
    from tests.app.test_documents import PAGES, _app
    from tests.app.test_documents import QUESTION as DOC_QUESTION
    from tests.support.documents import pdf_file

    app, _, collections = _app(tmp_path)
    await collections.add("app", "reports", "rivers.pdf", pdf_file(PAGES))
    async with Client(app.state.mcp) as client:
        listed = await client.call_tool("list_collections", {})
        assert listed.structured_content == {"collections": [{"name": "reports",
                                                              "documents": 1}]}
        answer = await client.call_tool("ask", {"query": DOC_QUESTION, "web": False,
                                                "collections": ["reports"]})
        assert not answer.is_error, answer.content
        sources = answer.structured_content["sources"]
        assert sources and all("rivers.pdf" in s["title"] for s in sources), sources
        assert DOC_ANSWER[0] in answer.structured_content["answer"]
        unknown = await client.call_tool("ask", {"query": DOC_QUESTION,
                                                 "collections": ["nope"]})
        assert unknown.is_error and "nope" in unknown.content[0].text
        alone = await client.call_tool("ask", {"query": DOC_QUESTION, "web": False})
        assert alone.is_error and "collection" in alone.content[0].text


async def test_ask_holds_a_place_under_the_cap_of_answers_in_progress(tmp_path: Path
                                                                      ) -> None:
    import asyncio

    app, _ = make_app(tmp_path, ScriptedEngine(delay_s=0.05),
                      settings={"max_streams_per_client": 1})
    async with Client(app.state.mcp) as client:
        first = asyncio.ensure_future(client.call_tool("ask", {"query": QUESTION}))
        await asyncio.sleep(0.2)  # the first is writing its answer
        second = await client.call_tool("ask", {"query": QUESTION})
        assert second.is_error and "answers in progress" in second.content[0].text
        assert not (await first).is_error
        third = await client.call_tool("ask", {"query": QUESTION})  # the place was freed
        assert not third.is_error, third.content
