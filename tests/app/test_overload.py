"""More answers than model slots: a queued answer hears its place and is never timed
out for waiting its turn; a full queue is refused at once (model_busy, 429 on the HTTP
faces). In process with a scripted engine whose queue is scripted; the same over a real
``search-app serve`` with llama.cpp in tests/app/test_e2e_llamacpp.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from search_app.events import DeltaEvent, DoneEvent, ErrorEvent, StageEvent
from search_app.pipeline import AnswerRequest, PipelineOptions
from serving.engines.base import EngineLoad, GenerationChunk, GenerationRequest, ModelInfo
from serving.errors import OverloadedError
from tests.app.support import ScriptedEngine, make_app, make_pipeline, parse_sse


class QueuedEngine(ScriptedEngine):
    """Holds each answer in a scripted queue for ``wait_s`` (its place counting down
    from ``ahead``) before the first token; ``report`` False: it cannot tell."""

    def __init__(self, wait_s: float, ahead: int = 2, report: bool = True,
                 full: bool = False) -> None:
        super().__init__()
        self.wait_s, self.ahead, self.report, self.full = wait_s, ahead, report, full
        self._queued: dict[str, float] = {}
        if full:  # one running, one waiting, in two places
            self.info = ModelInfo(id="replay", context_length=2048, engine="replay",
                                  max_sequences=2)

    @property
    def load(self) -> EngineLoad:
        return EngineLoad(running=1, waiting=1) if self.full else super().load

    def queue_position(self, request_id: str) -> int | None:
        since = self._queued.get(request_id)
        if since is None or not self.report:
            return None
        left = self.wait_s - (time.perf_counter() - since)
        return None if left <= 0 else min(self.ahead, int(left / self.wait_s * (self.ahead + 1)))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        if request.sampling.json_schema is None:
            if self.full:
                raise OverloadedError("The server is busy (1 running, 1 waiting).")
            self._queued[request.request_id] = time.perf_counter()
            await asyncio.sleep(self.wait_s)
            self._queued.pop(request.request_id, None)
        async for chunk in super().generate(request):
            yield chunk


def options(first_token_timeout_s: float) -> PipelineOptions:
    return PipelineOptions(first_token_timeout_s=first_token_timeout_s)


async def test_a_queued_answer_hears_its_place_and_is_not_timed_out() -> None:
    engine = QueuedEngine(wait_s=2.0, ahead=2)
    pipeline = make_pipeline(engine, None, options=options(0.6))
    events = [e async for e in pipeline.run(AnswerRequest(query="Eiffel Tower?",
                                                          related=False))]
    queued = [e.detail for e in events if isinstance(e, StageEvent) and e.stage == "queued"]
    assert queued[0] == "2 ahead" and queued[-1] == "0 ahead", queued
    assert queued == sorted(queued, reverse=True) and len(set(queued)) == len(queued)
    assert not any(isinstance(e, ErrorEvent) for e in events)
    assert any(isinstance(e, DeltaEvent) for e in events)
    assert isinstance(events[-1], DoneEvent)


async def test_an_answer_not_queued_still_times_out() -> None:
    engine = QueuedEngine(wait_s=2.0, report=False)  # slow, but not in a queue
    pipeline = make_pipeline(engine, None, options=options(0.6))
    started = time.perf_counter()
    events = [e async for e in pipeline.run(AnswerRequest(query="Eiffel Tower?",
                                                          related=False))]
    assert isinstance(events[-1], ErrorEvent) and events[-1].code == "model_timeout"
    assert time.perf_counter() - started < 1.9
    assert not any(isinstance(e, StageEvent) and e.stage == "queued" for e in events)


async def test_a_full_queue_is_refused_at_once_on_every_face(tmp_path: Path) -> None:
    engine = QueuedEngine(wait_s=0.0, full=True)
    pipeline = make_pipeline(engine, None)
    events = [e async for e in pipeline.run(AnswerRequest(query="Eiffel Tower?"))]
    assert isinstance(events[-1], ErrorEvent) and events[-1].code == "model_busy"
    engine.full = False  # the engine's own refusal, after the sources (a race)
    engine.info = ModelInfo(id="replay", context_length=2048, engine="replay")

    async def refuse(request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        raise OverloadedError("The server is busy (4 running, 64 waiting).")
        yield  # an async generator  # type: ignore[unreachable]

    engine.generate = refuse  # type: ignore[method-assign]
    events = [e async for e in pipeline.run(AnswerRequest(query="Eiffel Tower?"))]
    assert isinstance(events[-1], ErrorEvent) and events[-1].code == "model_busy"
    app, _ = make_app(tmp_path, QueuedEngine(wait_s=0.0, full=True))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        r = await c.post("/api/search", json={"query": "Eiffel Tower?"})
        name, error = parse_sse(r.text)[-1]
        assert name == "error" and error["code"] == "model_busy"
        assert "sources" not in [n for n, _ in parse_sse(r.text)]  # refused before them
        r = await c.post("/query", json={"query": "Eiffel Tower?", "search_uuid": "u"})
        assert r.status_code == 429 and r.json()["error"]["type"] == "model_busy"
        r = await c.post("/v1/chat/completions", json={
            "model": "search-app", "messages": [{"role": "user", "content": "Eiffel?"}]})
        assert r.status_code == 429 and r.headers["retry-after"]
