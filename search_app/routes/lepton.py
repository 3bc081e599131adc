"""``POST /query``: the search_with_lepton protocol, a thin adapter over the pipeline.

The Lepton front end reads one ``text/html`` stream: the sources as a JSON array, the
``__LLM_RESPONSE__`` marker, the answer text, then (when asked) the
``__RELATED_QUESTIONS__`` marker and a JSON array of ``{"question"}``. A finished
response is stored under ``search_uuid`` and replayed in one chunk on a later request
with the same id (the query is not compared, as upstream). See
docs/search-api.md and the wire-format notes.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, model_validator

from search_app.answer_errors import ANSWER_ERROR_STATUS, error_headers
from search_app.deps import PipelineDep, StoreDep
from search_app.events import (
    AnswerEvent,
    DeltaEvent,
    DoneEvent,
    ErrorEvent,
    RelatedEvent,
    SearchEvent,
    SourcesEvent,
    StageEvent,
)
from search_app.pipeline import AnswerRequest
from serving.api import error_response
from serving.errors import BadRequestError, error_body
from serving.protocol import reject_surrogates

__all__ = ["LeptonQuery", "MarkerGuard", "router"]

router = APIRouter(tags=["lepton"])

LLM_MARKER = "\n\n__LLM_RESPONSE__\n\n"
RELATED_MARKER = "\n\n__RELATED_QUESTIONS__\n\n"
MAX_QUERY_CHARS = 2000  # as /api/search


class LeptonQuery(BaseModel):
    query: str
    search_uuid: str
    generate_related_questions: bool = True

    @model_validator(mode="before")
    @classmethod
    def _unicode_only(cls, data: Any) -> Any:
        return reject_surrogates(data)


@router.post("/query", response_class=StreamingResponse,
             responses={200: {"content": {"text/html": {}}}})
async def query(body: LeptonQuery, pipeline: PipelineDep, store: StoreDep) -> Response:
    """search_with_lepton's endpoint, byte-compatible with its front end."""
    if not body.search_uuid:
        raise BadRequestError("search_uuid must be provided.", param="search_uuid")
    cached = await store.aget_lepton(body.search_uuid)
    if cached is not None:
        return Response(cached, media_type="text/html")
    if not body.query.strip():
        raise BadRequestError("query must be provided.", param="query")
    if len(body.query) > MAX_QUERY_CHARS:
        raise BadRequestError(f"query is longer than {MAX_QUERY_CHARS} characters.",
                              param="query")
    request = AnswerRequest(query=body.query.strip(),
                            related=body.generate_related_questions)
    stream = pipeline.run(request)
    # Wait for the first real event: an error before any output can still be a status
    # code (the front end shows its error overlay for anything but 200).
    first: AnswerEvent | None = None
    async for event in stream:
        if not isinstance(event, (SearchEvent, StageEvent)):
            first = event
            break
    if isinstance(first, ErrorEvent) or first is None:
        await stream.aclose()
        code = first.code if first else "internal_error"
        message = first.message if first else "The pipeline ended without an answer."
        status = ANSWER_ERROR_STATUS.get(code, 500)
        return error_response(status, error_body(message, code, status),
                              headers=error_headers(code))

    async def text() -> AsyncIterator[str]:
        parts: list[str] = []
        finished = False
        guard = MarkerGuard()
        async with contextlib.aclosing(stream):
            event: AnswerEvent | None = first
            while event is not None and not isinstance(event, ErrorEvent):
                if isinstance(event, DoneEvent):
                    finished = True
                    break
                if isinstance(event, DeltaEvent):
                    piece = guard.feed(event.text)
                else:  # only events with a place in the protocol end the answer text
                    piece = _translate(event, body.generate_related_questions)
                    piece = guard.flush() + piece if piece else ""
                if piece:
                    parts.append(piece)
                    yield piece
                event = await anext(stream, None)
            if rest := guard.flush():  # an answer without related questions ends here
                parts.append(rest)
                yield rest
        if finished:  # nothing is stored for a client that left or an answer that failed
            await store.asave_lepton(body.search_uuid, "".join(parts))

    return StreamingResponse(text(), media_type="text/html")


class MarkerGuard:
    """Keeps the protocol's markers out of the answer text. The front end splits the
    whole response on them, so an answer that wrote ``__RELATED_QUESTIONS__`` (a page
    can ask a model to) would make the rest of it parse as related questions. A marker
    may arrive split over several deltas, so the last few characters are held until the
    next delta or the end shows they do not start one."""

    _MARKERS = ("__LLM_RESPONSE__", "__RELATED_QUESTIONS__")
    _HOLD = max(len(m) for m in _MARKERS) - 1

    def __init__(self) -> None:
        self._tail = ""

    @classmethod
    def _defuse(cls, text: str) -> str:
        for marker in cls._MARKERS:
            text = text.replace(marker, marker[0] + "\u200b" + marker[1:])
        return text

    def feed(self, text: str) -> str:
        combined = self._defuse(self._tail + text)
        cut = max(0, len(combined) - self._HOLD)
        if "_" not in combined[cut:]:
            cut = len(combined)  # nothing held back can start a marker
        self._tail = combined[cut:]
        return combined[:cut]

    def flush(self) -> str:
        rest, self._tail = self._defuse(self._tail), ""
        return rest


def _translate(event: AnswerEvent, related: bool) -> str:
    """One native event as Lepton text (events Lepton has no place for give "")."""
    if isinstance(event, SourcesEvent):
        contexts = [{"id": str(s.number), "name": s.title, "url": s.url,
                     "snippet": s.snippet} for s in event.sources]
        return json.dumps(contexts) + LLM_MARKER
    if isinstance(event, DeltaEvent):
        return event.text
    if isinstance(event, RelatedEvent) and related:
        return RELATED_MARKER + json.dumps([{"question": q} for q in event.questions[:5]])
    return ""
