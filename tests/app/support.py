"""Helpers for the answer-engine tests: an SSE parser, a scripted engine and a small
in-process app whose pipeline runs over fixed search results and a lexical embedder."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from retrieval.providers import FallbackSearch, LocalProvider
from retrieval.ranking import Ranker
from retrieval.types import SearchResult
from search_app.app import create_app
from search_app.config import Settings
from search_app.deps import AnswerServices
from search_app.grounding import Grounder
from search_app.metrics import AnswerMetrics
from search_app.pipeline import AnswerPipeline, PipelineOptions
from search_app.store import Store
from serving.engines.base import GenerationChunk, GenerationRequest
from tests.support.replay_engine import ReplayEngine
from tests.support.retrieval_fixtures import CountingModel

RESULTS = [
    SearchResult("Eiffel Tower", "https://en.wikipedia.org/wiki/Eiffel_Tower",
                 "The Eiffel Tower is a lattice tower in Paris. It was designed by the "
                 "company of the engineer Gustave Eiffel and built from 1887 to 1889.",
                 "local", 1),
    SearchResult("Paris", "https://en.wikipedia.org/wiki/Paris",
                 "Paris is the capital and largest city of France.", "local", 2),
    SearchResult("Bronze", "https://en.wikipedia.org/wiki/Bronze",
                 "Bronze is an alloy of copper and tin.", "local", 3),
]
ANSWER = ["The Eiffel", " Tower was", " designed by", " the company of", " Gustave Eiffel",
          "[citation:1].", " It is", " in Paris", ".", " Bananas", " grow on the Moon",
          "[citation:7]."]
RELATED = '{"questions": ["When was the Eiffel Tower built?", "How tall is the Eiffel ' \
          'Tower?", "Who was Gustave Eiffel?"]}'


class ScriptedEngine(ReplayEngine):
    """Answers with ``tokens``; JSON-schema requests (related questions) get ``related``."""

    def __init__(self, tokens: list[str] | None = None, *, related: str = RELATED,
                 **kwargs: Any) -> None:
        kwargs.setdefault("context_length", 2048)
        super().__init__(tokens or ANSWER, **kwargs)
        self.related = related

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        if request.sampling.json_schema is not None:
            self.requests.append(request)
            yield GenerationChunk(self.related, 10, 10, "stop")
            return
        async with contextlib.aclosing(super().generate(request)) as inner:
            async for chunk in inner:  # closing this closes the replay (its abort path)
                yield chunk


def search_fn(results: list[SearchResult]) -> Any:
    async def search(query: str, k: int, filters: object = None) -> list[SearchResult]:
        return list(results[:k])  # filters ignored, as a careless provider would: the
        # chain must enforce them (tests/retrieval/test_filters.py)
    return search


def make_pipeline(engine: ReplayEngine, store: Store | None, *,
                  results: list[SearchResult] | None = None, relevance: float = 0.05,
                  options: PipelineOptions | None = None,
                  metrics: AnswerMetrics | None = None) -> AnswerPipeline:
    model = CountingModel()
    chain = FallbackSearch([LocalProvider(search_fn(RESULTS if results is None
                                                    else results))])
    return AnswerPipeline(
        engine=lambda: engine, chains={"local": chain}, default_provider="local",
        ranker=Ranker(model, use_gpu=False),
        grounder=Grounder(model, relevance_threshold=relevance, support_threshold=0.3),
        store=store, options=options or PipelineOptions(), metrics=metrics)


def make_app(tmp_path: Path, engine: ReplayEngine, *,
             settings: dict[str, Any] | None = None, **kwargs: Any) -> tuple[FastAPI, Store]:
    """The real app and routes, with state set by hand instead of the lifespan: the
    scripted engine is the served model ("tiny") and the pipeline's engine."""
    app = create_app(Settings(data_dir=tmp_path, embedding_model="", sse_ping_s=1,
                              **(settings or {})))
    store = Store(tmp_path / "store.sqlite")
    app.state.store = store
    app.state.registry.add_engine(engine, "tiny")
    app.state.registry.state = "ready"
    app.state.answer = AnswerServices(
        pipeline=make_pipeline(engine, store, metrics=app.state.answer_metrics, **kwargs),
        index=None)  # type: ignore[arg-type]
    return app, store


def parse_sse(body: str) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) pairs from an SSE body; comments (pings) are skipped."""
    events = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        if data:
            events.append((name, json.loads("\n".join(data))))
    return events


def parse_lepton(body: str) -> tuple[list[dict[str, Any]], str, list[dict[str, Any]]]:
    """As the Lepton front end does: sources JSON before the LLM marker (parse failure:
    no sources), the answer up to the related marker, then the related JSON."""
    llm, related_marker = "\n\n__LLM_RESPONSE__\n\n", "\n\n__RELATED_QUESTIONS__\n\n"
    assert llm in body
    head, rest = body.split(llm, 1)
    try:
        sources = json.loads(head)
    except ValueError:
        sources = []
    answer, _, related = rest.partition(related_marker)
    return sources, answer, (json.loads(related) if related else [])
