"""The native API: ``POST /api/search`` (SSE), stored answers, threads and history."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response
from pydantic import ConfigDict, Field, field_validator, model_validator
from sse_starlette import EventSourceResponse, ServerSentEvent

from search_app.collections import chosen
from search_app.deps import (
    CLIENT_COOKIE,
    ClientIdDep,
    MaybeCollectionsDep,
    OwnerDep,
    PipelineDep,
    SettingsDep,
    StoreDep,
    UserDep,
)
from search_app.events import ErrorEvent
from search_app.export import MARKDOWN_TYPE, export_filename, thread_markdown
from search_app.grounding import strip_citations
from search_app.pipeline import AnswerRequest
from search_app.search_controls import SearchControls
from search_app.store import AnswerRecord, Store
from serving.errors import BadRequestError
from serving.protocol import reject_surrogates

__all__ = ["SearchRequest", "router"]

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api", tags=["search"])


class SearchRequest(SearchControls):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(..., min_length=1, max_length=2000)
    thread_id: str | None = Field(None, max_length=100,
                                  description="Continue this thread (a follow-up).")
    provider: str | None = Field(None, description="A configured provider (chain); "
                                                   "default: the configured chain.")
    sources: int | None = Field(None, ge=1, le=20, description="Search results to use.")
    read_pages: bool = Field(True, description="Read the pages (web providers).")
    related: bool = Field(True, description="Generate related questions.")
    return_related_questions: bool | None = Field(
        None, description="Sonar's name for `related`; when given, it wins.")
    mode: Literal["quick", "research"] = Field(
        "quick", description="research: the model plans sub-questions, searches and reads "
                             "for each, and writes a sectioned report (slower; budgets in "
                             "the settings research_*).")
    grounding: Literal["strict", "mark", "off"] | None = Field(
        None, description="Grounding policy for this answer; default: the app's setting "
                          "(strict unless configured otherwise).")
    lead: bool | None = Field(
        None, description="Open the answer with the quote from the sources that answers "
                          "the question (the quote event); default: the app's setting "
                          "(on unless configured otherwise).")
    collections: list[str] = Field(
        default_factory=list, max_length=10,
        description="Your collections of uploaded documents to search as well "
                    "(POST /api/documents); their sections are cited with the file name "
                    "and page.")
    web: bool = Field(True, description="Search the configured providers too; false: "
                                        "only the collections.")

    @model_validator(mode="before")
    @classmethod
    def _unicode_only(cls, data: Any) -> Any:
        return reject_surrogates(data)

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("query must not be blank")
        return value.strip()


@router.post("/search", response_class=EventSourceResponse,
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "Server-Sent Events, JSON data; see "
                                             "docs/search-api.md"}})
async def search(body: SearchRequest, pipeline: PipelineDep, store: StoreDep,
                 settings: SettingsDep, client: ClientIdDep, user: UserDep,
                 collections: MaybeCollectionsDep, owner: OwnerDep) -> EventSourceResponse:
    """Answer a question as a stream of named events (search, sources, delta, ...)."""
    if body.provider is not None and body.provider not in pipeline.chains:
        raise BadRequestError(f"Unknown provider {body.provider!r}; configured: "
                              f"{', '.join(pipeline.chains)}.", param="provider")
    collection_ids = await chosen(collections, owner, body.collections, body.web)
    history: list[tuple[str, str]] = []
    if body.thread_id is not None:
        turns = await _own_thread(store, body.thread_id, user)
        history = [(t.query, strip_citations(t.answer)) for t in turns]
    client_id = user or client or uuid.uuid4().hex
    request = AnswerRequest(query=body.query, history=history,
                            thread_id=body.thread_id or uuid.uuid4().hex,
                            client_id=client_id, provider=body.provider,
                            sources=body.sources, read_pages=body.read_pages,
                            related=body.related if body.return_related_questions is None
                            else body.return_related_questions,
                            grounding=body.grounding, lead=body.lead,
                            filters=body.filters(),
                            mode=body.mode, collections=collection_ids, web=body.web)

    async def events() -> AsyncIterator[ServerSentEvent]:
        # aclosing: a disconnect closes the pipeline at once (engine abort, reads cancelled)
        try:
            async with contextlib.aclosing(pipeline.run(request)) as stream:
                async for event in stream:
                    yield ServerSentEvent(data=event.model_dump_json(), event=event.name)
        except Exception as exc:  # a bug, not a client error: say so as the last event
            log.exception("answer %s failed", request.search_id)
            error = ErrorEvent(code="internal_error", message=type(exc).__name__)
            yield ServerSentEvent(data=error.model_dump_json(), event=error.name)

    response = EventSourceResponse(events(), ping=settings.sse_ping_s)
    if client is None and user is None:
        response.set_cookie(CLIENT_COOKIE, client_id, max_age=365 * 24 * 3600,
                            httponly=True, samesite="lax")
    return response


# ?format=md on a stored answer or a thread: the same record as Markdown with footnotes
# (search_app/export.py), as a download. A plain string checked here rather than a
# Literal, so a wrong value gets a 400 that names the parameter and its choices.
_FORMAT = Query("json", alias="format", description="json (default) or md: Markdown "
                "with citations as footnotes, as a download.",
                json_schema_extra={"enum": ["json", "md"]})
_MARKDOWN_200: dict[int | str, dict[str, Any]] = {200: {"content": {
    "application/json": {}, "text/markdown": {"schema": {"type": "string"}}}}}


def _wants_markdown(fmt: str) -> bool:
    if fmt not in ("json", "md"):
        raise BadRequestError(f"Unknown format {fmt!r}; use format=json (the default) or "
                              "format=md (Markdown).", param="format")
    return fmt == "md"


def _markdown(records: list[AnswerRecord], fallback: str) -> Response:
    name = export_filename(records, fallback)
    return Response(thread_markdown(records), media_type=MARKDOWN_TYPE,
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/search/{search_id}", response_model=None, responses=_MARKDOWN_200)
async def stored_answer(search_id: str, store: StoreDep, fmt: str = _FORMAT
                        ) -> dict[str, Any] | Response:
    """A finished answer: its fields and the exact events that were streamed."""
    markdown = _wants_markdown(fmt)
    record = await store.aget_answer(search_id)
    if record is None:
        raise HTTPException(404, f"Answer {search_id!r} not found.")
    return _markdown([record], "answer") if markdown else record.as_dict()


async def _own_thread(store: Store, thread_id: str, user: str | None) -> list[AnswerRecord]:
    """The thread's answers; 404 when it does not exist or, for a signed-in user of
    multi-user mode, is somebody else's (the same answer: nothing tells them apart)."""
    turns = await store.athread(thread_id)
    if turns is None or (user is not None and await store.athread_owner(thread_id) != user):
        raise HTTPException(404, f"Thread {thread_id!r} not found.")
    return turns


@router.get("/threads/{thread_id}", response_model=None, responses=_MARKDOWN_200)
async def thread(thread_id: str, store: StoreDep, user: UserDep, fmt: str = _FORMAT
                 ) -> dict[str, Any] | Response:
    markdown = _wants_markdown(fmt)
    turns = await _own_thread(store, thread_id, user)
    if markdown:
        return _markdown(turns, "thread")
    return {"thread_id": thread_id, "answers": [t.as_dict() for t in turns]}


@router.get("/history")
async def history(store: StoreDep, client: ClientIdDep, user: UserDep,
                  client_id: str | None = Query(None, max_length=100),
                  limit: int = Query(50, ge=1, le=500)) -> dict[str, Any]:
    """The threads of a client (query parameter, X-Client-Id header or cookie); for a
    signed-in user of multi-user mode, always their own."""
    who = user or client_id or client
    if not who:
        raise BadRequestError("Give client_id (query), an X-Client-Id header or the "
                              "client cookie.", param="client_id")
    return {"client_id": who, "threads": await store.ahistory(who, limit)}
