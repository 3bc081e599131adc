"""The answer engine as an OpenAI chat model (``model: "search-app"``).

Why: every OpenAI client (Open WebUI, LibreChat, the ``openai`` package, LangChain) can
then get cited answers without knowing our native API. The response follows
Perplexity's Sonar API, the de-facto shape for search-backed chat: the answer text cites
with ``[N]``, and ``citations`` (URLs, ``citations[N-1]`` is source N) and
``search_results`` (title, url, date) ride on the response and on every stream chunk.
``return_related_questions: true`` (Sonar's flag) adds ``related_questions``; Sonar's
search controls (``search_domain_filter``, ``search_recency_filter``,
``search_after_date_filter``, ``search_before_date_filter``) filter the search. Research
mode is the model ``search-app-research`` (what Sonar calls ``sonar-deep-research``), or
``mode: "research"`` on either name; ``collections`` (names of uploaded collections) and
``web: false`` ask with your own documents, as on ``/api/search``. The content opens with
the lead, a quote of the sources' own words (``> ... [N]``), also given as ``quote``;
``lead: false`` leaves it out.

The conversation is the thread: earlier user/assistant turns are the history (the search
query of a follow-up is rewritten with it, as in ``/api/search``); the last message must
be the user's question. System messages are ignored: the answer prompt is the pipeline's.
Each answer is stored like a native one; the response ``id`` is its search id, so
``GET /api/search/{id}`` replays it.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Literal

from pydantic import BaseModel, Field

from search_app.answer_errors import answer_error
from search_app.events import (
    AnswerEvent,
    DeltaEvent,
    DoneEvent,
    ErrorEvent,
    QuoteEvent,
    RelatedEvent,
    Source,
    SourcesEvent,
)
from search_app.grounding import strip_citations
from search_app.pipeline import AnswerPipeline, AnswerRequest
from search_app.search_controls import filters_from_extra
from serving.errors import (
    BadRequestError,
    EngineError,
    ServingError,
)
from serving.handlers import DONE, sse_error
from serving.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessageOut,
    DeltaMessage,
    ModelCard,
    Usage,
)

__all__ = ["AnswerAgent", "CitedChatCompletion", "CitedChatCompletionChunk", "SearchResult"]

MAX_QUESTION_CHARS = 2000
MAX_COLLECTIONS = 10  # as on /api/search
_CITATION = re.compile(r"\[citation:(\d+)\]")


class SearchResult(BaseModel):
    title: str
    url: str
    date: str | None = None


class Quote(BaseModel):
    text: str = Field(description="A source's own words, copied exactly.")
    source: int = Field(description="Its source's number: citations[source-1].")


class _Cited(BaseModel):
    citations: list[str] = Field(default_factory=list,
                                 description="Source URLs; [N] in the text is citations[N-1].")
    search_results: list[SearchResult] = Field(default_factory=list)
    related_questions: list[str] | None = None
    quote: Quote | None = Field(None, description="The lead: the sentence(s) of a source "
                                "that answer the question; the content opens with it as a "
                                "Markdown block quote.")


class CitedChatCompletion(ChatCompletionResponse, _Cited):
    pass


class CitedChatCompletionChunk(ChatCompletionChunk, _Cited):
    pass


def _to_error(event: ErrorEvent) -> ServingError:
    """The pipeline's error codes as HTTP errors (one table: search_app.answer_errors)."""
    message = f"Search failed: {event.message}" if event.code == "search_failed" \
        else event.message
    return answer_error(event.code, message)


def _conversation(req: ChatCompletionRequest) -> tuple[str, list[tuple[str, str]]]:
    """The question (the last user message) and the earlier (question, answer) turns."""
    try:
        turns = [(m.role, m.text()) for m in req.messages if m.role in ("user", "assistant")]
    except ValueError as exc:
        raise BadRequestError(str(exc), param="messages") from None
    if not turns or turns[-1][0] != "user" or not turns[-1][1].strip():
        raise BadRequestError("The last message must be the user's question (non-empty).",
                              param="messages")
    question = turns[-1][1].strip()
    if len(question) > MAX_QUESTION_CHARS:
        raise BadRequestError(f"The question is longer than {MAX_QUESTION_CHARS} "
                              "characters.", param="messages")
    history: list[tuple[str, str]] = []
    pending: str | None = None
    for role, text in turns[:-1]:
        if role == "user":
            pending = text
        elif pending is not None:
            history.append((pending, strip_citations(text)))
            pending = None
    return question, history


def _finish(reason: str) -> str:
    return {"length": "length", "timeout": "length"}.get(reason, "stop")


class AnswerAgent:
    """Registered in the serving layer's registry under ``name``."""

    def __init__(self, name: str, pipeline: Callable[[], AnswerPipeline],
                 context_length: Callable[[], int | None],
                 limit: Callable[[], Awaitable[None]] | None = None,
                 mode: Literal["quick", "research"] = "quick",
                 collections: Callable[[Sequence[str], bool], Awaitable[list[str]]]
                 | None = None) -> None:
        self.name = name
        self._collections = collections  # names -> the caller's collection ids (or 4xx)
        self.mode = mode  # the default of the extra field `mode` for this model name
        self._limit = limit  # the app's per-client rate limit (raises a 429)
        self._pipeline = pipeline  # raises EngineNotReadyError until the app has built it
        self._context_length = context_length

    def card(self) -> ModelCard:
        length = self._context_length()
        return ModelCard(id=self.name, owned_by="search-app", max_model_len=length,
                         context_length=length)

    async def chat(self, req: ChatCompletionRequest
                   ) -> ChatCompletionResponse | AsyncIterator[str]:
        if req.n != 1:
            raise BadRequestError("The answer engine gives one answer (n must be 1).",
                                  param="n")
        if req.response_format is not None and req.response_format.type != "text":
            raise BadRequestError("The answer engine answers in text; response_format is "
                                  "not supported.", param="response_format")
        question, history = _conversation(req)
        extra = req.model_extra or {}
        related = bool(extra.get("return_related_questions", False))
        filters = filters_from_extra(extra)  # Sonar's search controls, or a 400
        mode = extra.get("mode", self.mode)
        if mode not in ("quick", "research"):
            raise BadRequestError("mode must be 'quick' or 'research'.", param="mode")
        names, web = extra.get("collections") or [], extra.get("web", True)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) \
                or len(names) > MAX_COLLECTIONS or not isinstance(web, bool):
            raise BadRequestError(f"collections must be a list of at most {MAX_COLLECTIONS} "
                                  "names and web a boolean.", param="collections")
        lead = extra.get("lead")
        if lead is not None and not isinstance(lead, bool):
            raise BadRequestError("lead must be a boolean.", param="lead")
        ids = await self._collections(names, web) if self._collections is not None else []
        pipeline = self._pipeline()
        if self._limit is not None:
            await self._limit()
        request = AnswerRequest(query=question, history=history, related=related,
                                filters=filters, mode=mode, collections=ids, web=web,
                                lead=lead)
        events = pipeline.run(request)
        try:
            sources = await self._until_sources(events)
        except BaseException:
            await events.aclose()
            raise
        cited = _Cited(citations=[s.url for s in sources],
                       search_results=[SearchResult(title=s.title, url=s.url, date=s.date)
                                       for s in sources])
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return self._stream(request.search_id, events, cited, include_usage, related)
        return await self._complete(request.search_id, events, cited, related)

    @staticmethod
    async def _until_sources(events: AsyncIterator[AnswerEvent]) -> list[Source]:
        """Run the pipeline up to its sources, so that a failed search or a model that
        is down is an HTTP error, not a broken stream."""
        async for event in events:
            if isinstance(event, ErrorEvent):
                raise _to_error(event)
            if isinstance(event, SourcesEvent):
                return event.sources
        raise EngineError("The answer ended before its sources.")

    async def _complete(self, search_id: str, events: AsyncIterator[AnswerEvent],
                        cited: _Cited, related: bool) -> CitedChatCompletion:
        text, finish, usage = "", "stop", Usage()
        async with contextlib.aclosing(events):
            async for event in events:
                match event:
                    case QuoteEvent() if cited.quote is None:
                        cited.quote = Quote(text=event.text, source=event.source)
                    case DeltaEvent():
                        text += event.text
                    case RelatedEvent() if related:
                        cited.related_questions = event.questions
                    case DoneEvent():
                        finish = _finish(event.finish_reason)
                        usage = _usage(event)
                    case ErrorEvent():
                        raise _to_error(event)
        return CitedChatCompletion(
            id=search_id, model=self.name, usage=usage,
            choices=[ChatChoice(index=0, finish_reason=finish,
                                message=ChatMessageOut(content=_CITATION.sub(r"[\1]", text)))],
            **cited.model_dump())

    async def _stream(self, search_id: str, events: AsyncIterator[AnswerEvent],
                      cited: _Cited, include_usage: bool, related: bool
                      ) -> AsyncIterator[str]:
        created = int(time.time())

        def chunk(delta: DeltaMessage | None, finish: str | None = None,
                  usage: Usage | None = None) -> str:
            choices = [] if delta is None else [
                ChatChunkChoice(index=0, delta=delta, finish_reason=finish)]
            body = CitedChatCompletionChunk(id=search_id, created=created, model=self.name,
                                            choices=choices, usage=usage, **cited.model_dump())
            return f"data: {body.model_dump_json()}\n\n"

        async with contextlib.aclosing(events):
            yield chunk(DeltaMessage(role="assistant", content=""))
            async for event in events:
                match event:
                    case QuoteEvent() if cited.quote is None:  # rides on later chunks
                        cited.quote = Quote(text=event.text, source=event.source)
                    case DeltaEvent():
                        yield chunk(DeltaMessage(content=_CITATION.sub(r"[\1]", event.text)))
                    case RelatedEvent() if related:
                        cited.related_questions = event.questions
                    case DoneEvent():
                        yield chunk(DeltaMessage(), _finish(event.finish_reason))
                        if include_usage:
                            yield chunk(None, usage=_usage(event))
                    case ErrorEvent():  # after the first byte, errors are events
                        yield sse_error(_to_error(event))
                        break
            yield DONE


def _usage(done: DoneEvent) -> Usage:
    u = done.usage
    return Usage(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
                 total_tokens=u.prompt_tokens + u.completion_tokens)

