"""Research mode (search_app/research.py) over a scripted engine: the plan, one search per
step, sections with the report's own source numbers, budgets, and the faces that ask for
it. The real model writes a report in tests/app/test_research_e2e.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from search_app.events import DeltaEvent, DoneEvent, PlanEvent, SearchEvent, SourcesEvent
from search_app.pipeline import AnswerRequest, PipelineOptions
from search_app.prompts import ABSTAIN_TEXT
from search_app.research import parse_plan, split_question
from search_app.store import Store
from serving.engines.base import GenerationChunk, GenerationRequest
from tests.app.support import RESULTS, ScriptedEngine, make_app, make_pipeline, parse_sse

QUESTION = "Who designed the Eiffel Tower and what is the capital of France?"
PLAN = json.dumps({"sub_questions": ["Who designed the Eiffel Tower?",
                                     "What is the capital of France?",
                                     "Who designed the Eiffel Tower?"]})  # a repeat


class Planner(ScriptedEngine):
    """Answers a plan request with ``plan``, a section with its own sources' first title."""

    def __init__(self, plan: str = PLAN, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plan = plan

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        schema = request.sampling.json_schema or {}
        if "sub_questions" in json.dumps(schema):
            self.requests.append(request)
            yield GenerationChunk(self.plan, 10, 10, "stop")
            return
        async for chunk in super().generate(request):
            yield chunk


async def run(engine: Planner, *, options: PipelineOptions | None = None,
              store: Store | None = None, **req: Any) -> list[Any]:
    pipeline = make_pipeline(engine, store, options=options)
    request = AnswerRequest(query=req.pop("query", QUESTION), mode="research", **req)
    return [e async for e in pipeline.run(request)]


def test_plan_parsing_drops_repeats_the_question_and_copied_examples() -> None:
    assert parse_plan(PLAN, QUESTION, 4) == ["Who designed the Eiffel Tower?",
                                             "What is the capital of France?"]
    assert parse_plan(json.dumps({"sub_questions": [
        QUESTION, "Where is France?", "Who conquered Rome in 476?"]}),  # last: off topic
        QUESTION, 4) == ["Where is France?"]
    assert parse_plan("not json", QUESTION, 4) == []
    assert parse_plan('{"sub_questions": "one"}', QUESTION, 4) == []
    many = json.dumps({"sub_questions": [f"What about France, part {i}?" for i in range(9)]})
    assert len(parse_plan(many, QUESTION, 3)) == 3


def test_a_question_of_two_parts_splits_when_the_model_gives_no_plan() -> None:
    assert split_question("Who designed the Eiffel Tower, and where is the Statue of "
                          "Liberty?", 4) == ["Who designed the Eiffel Tower?",
                                             "Where is the Statue of Liberty?"]
    assert split_question("What are salt and pepper?", 4) == []  # "and" inside a clause
    assert split_question("What is bronze made of?", 4) == []


async def test_report_has_a_section_per_step_and_one_numbering(tmp_path: Path) -> None:
    engine = Planner()
    store = Store(tmp_path / "store.sqlite")
    events = await run(engine, store=store)
    names = [e.name for e in events]
    assert names[:3] == ["search", "stage", "plan"] and names[-4:] == [
        "related", "support", "timings", "done"], names
    search = events[0]
    assert isinstance(search, SearchEvent) and search.mode == "research"
    plan = next(e for e in events if isinstance(e, PlanEvent))
    assert plan.sub_questions == ["Who designed the Eiffel Tower?",
                                  "What is the capital of France?"] and plan.planned
    stages = [(e.stage, e.detail) for e in events if e.name == "stage"]
    assert ("step", "1 of 2: Who designed the Eiffel Tower?") in stages
    assert [d for s, d in stages if s == "write"] == ["1 of 3", "2 of 3", "3 of 3"]
    # the plan is JSON-schema constrained: the engine got a schema, not a hope
    plan_request = engine.requests[0]
    assert plan_request.sampling.json_schema["properties"]["sub_questions"]["maxItems"] == 4
    text = "".join(e.text for e in events if isinstance(e, DeltaEvent))
    assert text.index("## Who designed the Eiffel Tower?") < \
        text.index("## What is the capital of France?") < text.index("## Conclusion")
    sources = next(e for e in events if isinstance(e, SourcesEvent)).sources
    assert [s.number for s in sources] == list(range(1, len(sources) + 1))
    assert len({s.url for s in sources}) == len(sources)  # each document numbered once
    # every section's prompt numbers its sources as the report does
    matched = 0
    for request in engine.requests[1:4]:
        system = str(request.messages[0]["content"])
        for s in sources:
            if f"[[citation:{s.number}]] {s.title}:" in system:
                matched += 1
                assert s.passage and s.passage.split("\n\n")[0][:40] in system
    assert matched >= len(sources)  # each source appears, under its number, somewhere
    # the conclusion is told the findings
    assert "Findings so far:" in str(engine.requests[3].messages[-1]["content"])
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.finish_reason == "stop"
    stored = await store.aget_answer(search.search_id)
    assert stored is not None and "plan" in [e["event"] for e in stored.events]
    assert stored.answer == text


async def test_a_failed_plan_splits_the_question_or_is_one_step() -> None:
    events = await run(Planner(plan='{"sub_questions": []}'))
    plan = next(e for e in events if isinstance(e, PlanEvent))
    assert plan.sub_questions == ["Who designed the Eiffel Tower?",
                                  "What is the capital of France?"] and not plan.planned
    single = "Who designed the Eiffel Tower?"
    events = await run(Planner(plan='{"sub_questions": []}'), query=single)
    plan = next(e for e in events if isinstance(e, PlanEvent))
    assert plan.sub_questions == [single] and not plan.planned
    text = "".join(e.text for e in events if isinstance(e, DeltaEvent))
    assert text.count("## ") == 2  # the question itself, then the conclusion


async def test_the_deadline_leaves_sections_out_and_says_so() -> None:
    events = await run(Planner(delay_s=0.05),
                       options=PipelineOptions(research_timeout_s=0.3))
    text = "".join(e.text for e in events if isinstance(e, DeltaEvent))
    assert "## Conclusion" not in text
    assert events[-1].finish_reason == "timeout"
    fallbacks = next(e for e in events if e.name == "timings").fallbacks
    assert any("sections left out" in f for f in fallbacks), fallbacks


async def test_nothing_relevant_abstains_once_without_sections() -> None:
    pipeline = make_pipeline(Planner(), None, relevance=0.99)
    events = [e async for e in pipeline.run(AnswerRequest(query=QUESTION, mode="research"))]
    text = "".join(e.text for e in events if isinstance(e, DeltaEvent))
    assert "## " not in text and text == ABSTAIN_TEXT
    assert events[-1].finish_reason == "no_relevant_sources"


async def test_page_budget_is_shared_by_all_steps() -> None:
    events = await run(Planner(), options=PipelineOptions(research_pages=2))
    assert len(next(e for e in events if isinstance(e, SourcesEvent)).sources) <= 2


def test_native_api_and_answer_model_take_research_mode(tmp_path: Path) -> None:
    app, _ = make_app(tmp_path, Planner(), results=RESULTS)
    with TestClient(app) as client:
        response = client.post("/api/search", json={"query": QUESTION, "mode": "research",
                                                    "related": False})
        assert response.status_code == 200
        events = parse_sse(response.text)
        assert [n for n, _ in events][2] == "plan" and events[0][1]["mode"] == "research"
        bad = client.post("/api/search", json={"query": QUESTION, "mode": "deep"})
        assert bad.status_code == 400 and "mode" in bad.text
        models = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert "search-app-research" in models
        chat = client.post("/v1/chat/completions", json={
            "model": "search-app-research",
            "messages": [{"role": "user", "content": QUESTION}]})
        assert chat.status_code == 200, chat.text
        content = chat.json()["choices"][0]["message"]["content"]
        assert "## Conclusion" in content and "[citation:" not in content
        wrong = client.post("/v1/chat/completions", json={
            "model": "search-app", "mode": "deep",
            "messages": [{"role": "user", "content": QUESTION}]})
        assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "mode"


async def test_a_section_cites_only_the_sources_it_was_given() -> None:
    import re

    engine = Planner()  # its answer cites [citation:1] and [citation:7] in every section
    events = await run(engine, options=PipelineOptions(grounding="mark"))
    text = "".join(e.text for e in events if isinstance(e, DeltaEvent))
    sections = re.split(r"^## .*$", text, flags=re.MULTILINE)[1:]
    prompts = [str(r.messages[0]["content"]) for r in engine.requests[1:1 + len(sections)]]
    assert len(sections) == len(prompts) == 3
    for body, prompt in zip(sections, prompts, strict=True):
        given = {int(n) for n in re.findall(r"\[\[citation:(\d+)\]\]", prompt)}
        cited = {int(n) for n in re.findall(r"\[citation:(\d+)\]", body)}
        assert cited <= given, (cited, given)
