"""A small Python client for the native answer API (``/api/search`` and friends).

Why a client of our own: the seed's users asked for one, and the evaluation harness and
``search-app ask`` drive the app through it, so the public API is what gets exercised.
Events come back as the same pydantic models the server streams
(:mod:`search_app.events`), so a script reads ``event.text`` rather than raw JSON.

    from search_app.client import SearchClient

    with SearchClient("http://127.0.0.1:8000") as client:
        for event in client.stream("Who designed the Eiffel Tower?"):
            if event.name == "delta":
                print(event.text, end="", flush=True)
        answer = client.ask("When was it built?", thread_id=...)   # a follow-up
        again = client.get(answer.search_id)                       # the stored answer

Every call has a timeout (connect 10 s; 60 s between two bytes of a stream, which the
server's heartbeats keep alive on slow stages). Errors, HTTP or an ``error`` event,
raise :class:`SearchAPIError` with the server's code and message.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import ServerSentEvent, SSEError, aconnect_sse, connect_sse
from pydantic import BaseModel, Field, SerializeAsAny

from search_app.events import (
    EVENT_NAMES,
    AnswerEvent,
    DeltaEvent,
    DoneEvent,
    ErrorEvent,
    PlanEvent,
    QuoteEvent,
    RelatedEvent,
    SearchEvent,
    Source,
    SourcesEvent,
    StageEvent,
    SupportEvent,
    TimingsEvent,
    Usage,
    event_from_dict,
)

__all__ = ["Answer", "AsyncSearchClient", "SearchAPIError", "SearchClient",
           "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
_CLIENT_HEADER = "X-Client-Id"


class SearchAPIError(Exception):
    """The server refused the request (``status`` set) or the answer ended in an
    ``error`` event (``status`` None)."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}" if status is None
                         else f"HTTP {status} {code}: {message}")
        self.code, self.message, self.status = code, message, status


class Answer(BaseModel):
    """One finished answer, collected from its events (or read back from the store)."""

    search_id: str
    thread_id: str
    query: str
    search_query: str
    filters: str | None = None  # the search filters in force, in words
    mode: str = "quick"
    plan: list[str] = Field(default_factory=list)  # research mode: the sub-questions
    answer: str
    sources: list[Source] = Field(default_factory=list)
    provider: str | None = None
    relevant: bool = True
    quotes: list[QuoteEvent] = Field(default_factory=list)  # the lead (one per section)
    related: list[str] = Field(default_factory=list)
    support: SupportEvent | None = None
    timings: TimingsEvent | None = None
    finish_reason: str | None = None
    usage: Usage = Field(default_factory=Usage)
    events: list[SerializeAsAny[AnswerEvent]] = Field(default_factory=list)

    @classmethod
    def from_events(cls, events: Iterable[AnswerEvent]) -> Answer:
        """Fold a stream into an answer; raises :class:`SearchAPIError` on ``error``."""
        fields: dict[str, Any] = {"answer": "", "events": [], "quotes": []}
        for event in events:
            if not isinstance(event, StageEvent):  # progress only; not part of the answer
                fields["events"].append(event)
            match event:
                case SearchEvent():
                    fields.update(search_id=event.search_id, thread_id=event.thread_id,
                                  query=event.query, search_query=event.search_query,
                                  filters=event.filters, mode=event.mode)
                case PlanEvent():
                    fields["plan"] = event.sub_questions
                case SourcesEvent():
                    fields.update(sources=event.sources, provider=event.provider,
                                  relevant=event.relevant)
                case QuoteEvent():
                    fields["quotes"].append(event)
                case DeltaEvent():
                    fields["answer"] += event.text
                case RelatedEvent():
                    fields["related"] = event.questions
                case SupportEvent():
                    fields["support"] = event
                case TimingsEvent():
                    fields["timings"] = event
                case DoneEvent():
                    fields.update(finish_reason=event.finish_reason, usage=event.usage)
                case ErrorEvent():
                    raise SearchAPIError(event.code, event.message)
        if fields.get("finish_reason") is None:
            raise SearchAPIError("incomplete", "the stream ended before the done event")
        return cls.model_validate(fields)

    @classmethod
    def from_stored(cls, record: dict[str, Any]) -> Answer:
        """From ``GET /api/search/{id}``: the exact events that were streamed."""
        return cls.from_events(event_from_dict(e) for e in record["events"])


def _body(query: str, **controls: Any) -> dict[str, Any]:
    """The request body: the question and every control that was given (None: the
    app's default), filters under Sonar's names (``search_domain_filter``, ...)."""
    body = {"query": query, **controls}
    for key in ("search_domain_filter", "collections"):  # one name, not its letters
        if isinstance(body.get(key), str):
            body[key] = [body[key]]
    return {k: v for k, v in body.items() if v is not None}


def _raise_for_status(response: httpx.Response, body: bytes) -> None:
    if response.is_success:
        return
    try:
        error = json.loads(body)["error"]
        code, message = str(error.get("code") or error.get("type")), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", body.decode(errors="replace")[:300] or response.reason_phrase
    raise SearchAPIError(code, message, response.status_code)


def _parse(source_events: Iterable[ServerSentEvent]) -> Iterator[AnswerEvent]:
    for sse in source_events:
        if sse.event in EVENT_NAMES:  # newer servers may send events this client lacks
            yield _event(sse)


def _event(sse: ServerSentEvent) -> AnswerEvent:
    try:
        return event_from_dict({"event": sse.event, "data": json.loads(sse.data)})
    except (KeyError, ValueError) as exc:
        raise SearchAPIError("bad_stream", f"unreadable {sse.event!r} event: {exc}") from None


def _headers(api_key: str | None, client_id: str | None) -> dict[str, str]:
    headers = {"Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    if client_id:
        headers[_CLIENT_HEADER] = client_id
    return headers


class SearchClient:
    """Blocking client. ``client_id`` keys the history listing (``X-Client-Id``)."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, api_key: str | None = None,
                 client_id: str | None = None,
                 timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.client_id = client_id
        self._http = httpx.Client(base_url=base_url, timeout=timeout, transport=transport,
                                  headers=_headers(api_key, client_id))

    def __enter__(self) -> SearchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def stream(self, query: str, *, thread_id: str | None = None,
               provider: str | None = None, sources: int | None = None,
               read_pages: bool | None = None, related: bool | None = None,
               search_domain_filter: Sequence[str] | None = None,
               search_recency_filter: str | None = None,
               search_after_date_filter: str | None = None,
               search_before_date_filter: str | None = None,
               mode: str | None = None, collections: Sequence[str] | None = None,
               web: bool | None = None, lead: bool | None = None
               ) -> Iterator[AnswerEvent]:
        """The answer's events as they arrive. Stopping early (``break``, closing the
        generator) closes the connection, which aborts the generation on the server.
        The ``search_*`` filters are Sonar's (docs/search-api.md#search-filters);
        ``mode="research"`` asks for a planned, sectioned report (a ``plan`` event first).
        ``collections``: your uploaded collections to search too (``web=False``: only
        them); see :meth:`upload`. ``lead=False``: no quote before the model's answer
        (None: the app's setting)."""
        body = _body(query, thread_id=thread_id, provider=provider, sources=sources,
                     read_pages=read_pages, related=related,
                     search_domain_filter=search_domain_filter,
                     search_recency_filter=search_recency_filter,
                     search_after_date_filter=search_after_date_filter,
                     search_before_date_filter=search_before_date_filter, mode=mode,
                     collections=collections or None, web=web, lead=lead)
        with connect_sse(self._http, "POST", "/api/search", json=body) as source:
            _raise_for_status(source.response, b"" if source.response.is_success
                              else source.response.read())
            try:
                yield from _parse(source.iter_sse())
            except SSEError as exc:
                raise SearchAPIError("bad_stream", str(exc)) from None

    def ask(self, query: str, **controls: Any) -> Answer:
        """The whole answer; same arguments as :meth:`stream`."""
        return Answer.from_events(self.stream(query, **controls))

    def get(self, search_id: str) -> Answer:
        return Answer.from_stored(self._get_json(f"/api/search/{search_id}"))

    def thread(self, thread_id: str) -> list[Answer]:
        data = self._get_json(f"/api/threads/{thread_id}")
        return [Answer.from_stored(a) for a in data["answers"]]

    def history(self, limit: int = 50) -> list[dict[str, Any]]:
        """This client's threads, newest first."""
        return self._get_json("/api/history", params={"limit": limit})["threads"]

    def upload(self, path: str | Path, collection: str) -> dict[str, Any]:
        """Add a file (PDF, DOCX, Markdown, HTML, text) to a collection (made if new);
        the document's record. Ask with it: ``ask(..., collections=[collection])``."""
        path = Path(path)
        with path.open("rb") as data:
            response = self._http.post("/api/documents", data={"collection": collection},
                                       files={"file": (path.name, data)})
        _raise_for_status(response, response.content)
        return response.json()

    def collections(self) -> list[dict[str, Any]]:
        """Your collections: name and document count."""
        return self._get_json("/api/collections")["collections"]

    def _get_json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        response = self._http.get(path, params=params)
        _raise_for_status(response, response.content)
        return response.json()


class AsyncSearchClient:
    """The same API for asyncio code (the evaluation harness runs questions in
    parallel with it)."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, api_key: str | None = None,
                 client_id: str | None = None,
                 timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.client_id = client_id
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout,
                                       transport=transport,
                                       headers=_headers(api_key, client_id))

    async def __aenter__(self) -> AsyncSearchClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def stream(self, query: str, *, thread_id: str | None = None,
                     provider: str | None = None, sources: int | None = None,
                     read_pages: bool | None = None, related: bool | None = None,
                     search_domain_filter: Sequence[str] | None = None,
                     search_recency_filter: str | None = None,
                     search_after_date_filter: str | None = None,
                     search_before_date_filter: str | None = None,
                     mode: str | None = None, collections: Sequence[str] | None = None,
                     web: bool | None = None, lead: bool | None = None
                     ) -> AsyncIterator[AnswerEvent]:
        body = _body(query, thread_id=thread_id, provider=provider, sources=sources,
                     read_pages=read_pages, related=related,
                     search_domain_filter=search_domain_filter,
                     search_recency_filter=search_recency_filter,
                     search_after_date_filter=search_after_date_filter,
                     search_before_date_filter=search_before_date_filter, mode=mode,
                     collections=collections or None, web=web, lead=lead)
        async with aconnect_sse(self._http, "POST", "/api/search", json=body) as source:
            _raise_for_status(source.response, b"" if source.response.is_success
                              else await source.response.aread())
            try:
                async for sse in source.aiter_sse():
                    if sse.event in EVENT_NAMES:
                        yield _event(sse)
            except SSEError as exc:
                raise SearchAPIError("bad_stream", str(exc)) from None

    async def ask(self, query: str, **controls: Any) -> Answer:
        return Answer.from_events([e async for e in self.stream(query, **controls)])

    async def get(self, search_id: str) -> Answer:
        return Answer.from_stored(await self._get_json(f"/api/search/{search_id}"))

    async def thread(self, thread_id: str) -> list[Answer]:
        data = await self._get_json(f"/api/threads/{thread_id}")
        return [Answer.from_stored(a) for a in data["answers"]]

    async def history(self, limit: int = 50) -> list[dict[str, Any]]:
        return (await self._get_json("/api/history", params={"limit": limit}))["threads"]

    async def _get_json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        response = await self._http.get(path, params=params)
        _raise_for_status(response, response.content)
        return response.json()

