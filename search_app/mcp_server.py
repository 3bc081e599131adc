"""The app as an MCP server: ``search`` (ranked passages) and ``ask`` (a cited answer).

Why a face of its own rather than a wrapper around the HTTP API: MCP clients (Claude
Desktop, IDE agents) want tools with schemas and structured results, and progress as
protocol notifications, not SSE to parse. The tools run the same services as every
other face (:class:`~search_app.deps.AnswerServices`: the provider chains, page reader,
ranker and :class:`~search_app.pipeline.AnswerPipeline`), over two transports:

- stdio, ``search-app mcp`` (:func:`serve_stdio`): a process of its own that loads the
  model and the index in the background as soon as the client has started it; tool
  calls wait for that (up to ``STDIO_READY_TIMEOUT_S``). stdout is the protocol, so
  nothing else may write there: logs go to stderr, and the SDK points fd 1 at stderr
  while it serves (C libraries that print are covered too).
- streamable HTTP at ``/mcp`` inside ``search-app serve`` (:func:`mount`): behind the
  app's own lock (search_app/access.py: a Bearer key when keys are set), stateless so
  that replicas behind a load balancer need no sticky sessions; while the app is still
  loading, tools answer with a tool error that says so (the HTTP routes' 503).

Pipeline errors (the ``error`` event) and bad arguments come back as tool errors
(``isError``) with a message the caller can act on; only bugs are crashes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import FastAPI
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from retrieval.filters import Recency, SearchFilters
from retrieval.providers import ProviderError
from retrieval.types import Document
from search_app.collections import chosen, owner_of
from search_app.config import Settings
from search_app.deps import AnswerServices, answer_services
from search_app.events import (
    DeltaEvent,
    DoneEvent,
    ErrorEvent,
    QuoteEvent,
    RelatedEvent,
    SearchEvent,
    SourcesEvent,
    StageEvent,
)
from search_app.pipeline import AnswerRequest
from search_app.ratelimit import RateLimitedError
from search_app.search_controls import SearchControls
from search_app.users import USER_PREFIX
from serving.errors import BadRequestError, EngineNotReadyError, ServingError

__all__ = ["MCP_PATH", "AskResult", "SearchResults", "build_server", "lifespan_with_mcp",
           "mount", "serve_stdio"]

log = logging.getLogger(__name__)

MCP_PATH = "/mcp"                 # where ``serve`` mounts the streamable HTTP transport
STDIO_READY_TIMEOUT_S = 300.0     # stdio: how long a tool call waits for the models to load
MAX_QUERY_CHARS = 2000
# ask's progress: one notification per stage, out of ``_STAGES`` steps in all.
_STAGES = {"searching": 1, "reading": 2, "ranking": 3, "writing": 4, "done": 5}
_CITATION = re.compile(r"\[citation:(\d+)\]")

# A services getter: what the tools run on, or ToolError("...loading...").
ServicesGetter = Callable[[], Awaitable[AnswerServices]]
# Holds one answer of the caller's (a place under the cap of answers in progress and a
# token of its rate) while it runs, or raises RateLimitedError on entry.
Slot = Callable[[str], contextlib.AbstractAsyncContextManager[None]]

# No minLength in the schemas: an empty query gets _clean's message, not pydantic's.
Query = Annotated[str, Field(max_length=MAX_QUERY_CHARS,
                             description="What to search for: a question or keywords.")]
Question = Annotated[str, Field(max_length=MAX_QUERY_CHARS,
                                description="The question to answer.")]
# Sonar's search filters, as on every other face (docs/search-api.md#search-filters).
Domains = Annotated[list[str] | None, Field(
    description="Up to 20 domains to search in (example.com); '-example.com' excludes.")]
RecencyArg = Annotated[Recency | None, Field(
    description="Only results published in the past hour, day, week, month or year.")]
After = Annotated[str | None, Field(
    description="Only results published on or after this day (M/D/YYYY or YYYY-MM-DD).")]
Before = Annotated[str | None, Field(
    description="Only results published on or before this day.")]


# --- results (pydantic at the edge: these are the tools' output schemas) ------------

class PassageOut(BaseModel):
    title: str
    url: str
    text: str = Field(description="The passage: a chunk of the page or index document.")
    score: float = Field(description="Fused relevance score (higher is better).")


class SearchResults(BaseModel):
    query: str
    provider: str | None = Field(description="The search provider that answered.")
    passages: list[PassageOut] = Field(description="Best first.")


class SourceOut(BaseModel):
    number: int = Field(description="The N of the answer's [N] citations.")
    title: str
    url: str


class QuoteOut(BaseModel):
    text: str = Field(description="A source's own words, copied exactly.")
    source: int = Field(description="The number of the source it is quoted from.")


class AskResult(BaseModel):
    answer: str = Field(description="The answer, with [N] citing the numbered sources; "
                                    "it opens with the quote as a Markdown block quote.")
    quote: QuoteOut | None = Field(None, description="The sentence(s) of a source that "
                                   "answer the question, quoted (the answer's first line).")
    sources: list[SourceOut]
    related: list[str] = Field(default_factory=list, description="Follow-up questions.")
    finish_reason: str = Field(description="stop, length, timeout; or how it abstained: "
                                           "no_relevant_sources (nothing relevant found), "
                                           "unverified (the model's words could not be "
                                           "checked: the quote is the answer), declined "
                                           "(the model said the sources lack it), "
                                           "no_results (nothing passed the filters).")
    search_id: str = Field(description="The stored answer's id (GET /api/search/{id}).")


class CollectionOut(BaseModel):
    name: str
    documents: int


class CollectionList(BaseModel):
    collections: list[CollectionOut]


# --- the server ---------------------------------------------------------------------

def build_server(services: ServicesGetter, *, slot: Slot | None = None,
                 lifespan: Callable[[MCPServer], contextlib.AbstractAsyncContextManager[None]]
                 | None = None) -> MCPServer:
    """The MCP server and its two tools, over whatever ``services`` returns."""
    server: MCPServer = MCPServer(
        "search-app", lifespan=lifespan,
        instructions="Self-hosted AI search. `search` returns ranked passages with URLs "
                     "(no language model: fast); `ask` returns an answer written by the "
                     "app's own model, citing numbered sources as [N].")

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=True))
    async def search(query: Query,
                     k: Annotated[int, Field(ge=1, le=50, description="Passages to return.")]
                     = 8, search_domain_filter: Domains = None,
                     search_recency_filter: RecencyArg = None,
                     search_after_date_filter: After = None,
                     search_before_date_filter: Before = None) -> SearchResults:
        """Search, read and rank: the best passages for QUERY, each with its page's title
        and URL and a relevance score (retrieval only, no language model)."""
        filters = _filters(search_domain_filter, search_recency_filter,
                           search_after_date_filter, search_before_date_filter)
        return await ranked_passages(await services(), _clean(query), k, filters)

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, open_world_hint=True))
    async def ask(query: Question, ctx: Context,
                  sources: Annotated[int | None, Field(
                      ge=1, le=20, description="Search results to use (default: the "
                                               "app's setting).")] = None,
                  related: Annotated[bool, Field(
                      description="Also suggest follow-up questions (slower).")] = False,
                  mode: Annotated[Literal["quick", "research"], Field(
                      description="research: plan sub-questions, search each, and write "
                                  "a report with a section per sub-question (slower).")]
                  = "quick",
                  search_domain_filter: Domains = None,
                  search_recency_filter: RecencyArg = None,
                  search_after_date_filter: After = None,
                  search_before_date_filter: Before = None,
                  collections: Annotated[list[str] | None, Field(
                      max_length=10, description="Collections of uploaded documents to "
                      "search too (see list_collections).")] = None,
                  web: Annotated[bool, Field(
                      description="Search the web/index too; false: only the "
                                  "collections.")] = True,
                  ) -> Annotated[CallToolResult, AskResult]:
        """Answer QUERY from searched sources with the app's own model: the answer cites
        numbered sources as [N]; their titles and URLs come with it. Progress
        notifications name the stage (searching, reading, ranking, writing)."""
        question = _clean(query)
        filters = _filters(search_domain_filter, search_recency_filter,
                           search_after_date_filter, search_before_date_filter)
        found = await services()
        pipeline = found.pipeline
        principal = _principal(ctx)
        ids = await _collection_ids(found, principal, collections or [], web)
        request = AnswerRequest(query=question, sources=sources, related=related,
                                client_id=principal if _is_user(principal) else None,
                                filters=filters, mode=mode, collections=ids, web=web)
        async with contextlib.AsyncExitStack() as held:
            if slot is not None:  # counted as an answer on /api/search is
                try:
                    await held.enter_async_context(slot(principal or "mcp"))
                except RateLimitedError as exc:
                    raise ToolError(f"Rate limited: {exc.message}") from None
            result = await _answer(pipeline.run(request), ctx)
        return CallToolResult(content=[TextContent(type="text", text=_as_text(result))],
                              structured_content=result.model_dump(mode="json"))

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    async def list_collections(ctx: Context) -> CollectionList:
        """The collections of uploaded documents this caller can ask with (ask's
        ``collections``), with how many documents each holds."""
        found = await services()
        if found.collections is None:
            return CollectionList(collections=[])
        rows = await found.collections.list(owner_of(_principal(ctx)))
        return CollectionList(collections=[
            CollectionOut(name=r["name"], documents=int(r["documents"])) for r in rows])

    return server


async def _collection_ids(services: AnswerServices, principal: str | None,
                          names: list[str], web: bool) -> list[str]:
    """The ids of the named collections this caller owns, or a tool error saying what
    is wrong (search_app/collections.py ``chosen``)."""
    try:
        return await chosen(services.collections, owner_of(principal), names, web)
    except ServingError as exc:
        raise ToolError(exc.message) from None


def _filters(domains: list[str] | None, recency: Recency | None, after: str | None,
             before: str | None) -> SearchFilters:
    """The search filters, or a tool error naming the one that cannot be applied."""
    try:
        return SearchControls(search_domain_filter=domains, search_recency_filter=recency,
                              search_after_date_filter=after,
                              search_before_date_filter=before).filters()
    except BadRequestError as exc:
        raise ToolError(exc.message) from None


async def ranked_passages(services: AnswerServices, query: str, k: int,
                          filters: SearchFilters | None = None) -> SearchResults:
    """The pipeline's own search -> read -> rank path (the default provider chain; web
    pages are read, local index documents already carry their text)."""
    pipeline = services.pipeline
    chain = pipeline.chains[pipeline.default_provider]
    filters = filters or SearchFilters()
    try:
        found = await chain.search(query, pipeline.options.sources, filters)
    except ProviderError as exc:
        raise ToolError(f"Search failed: {exc.message}") from None
    if pipeline.reader is not None and found.provider != "local":
        docs = await pipeline.reader.read(found.results)
    else:
        docs = [Document(result=r, text=r.snippet, title=r.title, published=r.published)
                for r in found.results]
    docs = [d for d in docs if filters.admits_date(d.published, trust_undated=True)]
    passages = await pipeline.ranker.rank(query, docs, k)
    return SearchResults(query=query, provider=found.provider, passages=[
        PassageOut(title=p.title, url=p.url, text=p.text, score=round(p.score, 4))
        for p in passages])


async def _answer(events: AsyncIterator[Any], ctx: Context) -> AskResult:
    """Consume one answer's events: progress out as they come, the result at the end;
    an ``error`` event becomes a tool error."""
    text, sources, related, search_id, queued = "", [], [], "", 0
    quote: QuoteOut | None = None
    async with contextlib.aclosing(events) as stream:  # a cancelled call aborts the model
        async for event in stream:
            match event:
                case SearchEvent():
                    search_id = event.search_id
                    await _progress(ctx, "searching", event.search_query)
                case StageEvent(stage="read"):
                    await _progress(ctx, "reading", event.detail)
                case StageEvent(stage="rank"):
                    await _progress(ctx, "ranking", event.detail)
                case StageEvent(stage="queued"):
                    queued = min(queued + 1, 9)  # progress must grow: 4.1, 4.2, ...
                    await ctx.report_progress(_STAGES["writing"] + queued / 10, len(_STAGES),
                                              f"queued for the model: {event.detail}")
                case SourcesEvent():
                    sources = [SourceOut(number=s.number, title=s.title or s.url, url=s.url)
                               for s in event.sources]
                    await _progress(ctx, "writing", f"{len(sources)} sources")
                case QuoteEvent() if quote is None:  # research: the first section's
                    quote = QuoteOut(text=event.text, source=event.source)
                case DeltaEvent():
                    text += event.text
                case RelatedEvent():
                    related = event.questions
                case ErrorEvent():
                    raise ToolError(f"{event.message} ({event.code})")
                case DoneEvent():
                    await _progress(ctx, "done", event.finish_reason)
                    return AskResult(answer=_CITATION.sub(r"[\1]", text).strip(),
                                     quote=quote, sources=sources, related=related,
                                     finish_reason=event.finish_reason, search_id=search_id)
    raise ToolError("The answer ended without finishing; try again.")


async def _progress(ctx: Context, stage: str, detail: str | None) -> None:
    """A progress notification (a no-op unless the client sent a progressToken)."""
    message = f"{stage}: {detail}" if detail else stage
    await ctx.report_progress(_STAGES[stage], len(_STAGES), message)


def _as_text(result: AskResult) -> str:
    """The text content: the answer, then its sources as a numbered list."""
    lines = [result.answer]
    if result.sources:
        lines += ["", "Sources:"] + [f"[{s.number}] {s.title} - {s.url}"
                                     for s in result.sources]
    return "\n".join(lines)


def _clean(query: str) -> str:
    """The query with its whitespace normalized; an empty one is a tool error."""
    if not query.strip():
        raise ToolError("query is empty: give a question or keywords to search for.")
    return " ".join(query.split())


def _principal(ctx: Context) -> str | None:
    """Who called over HTTP (``key#N``, ``user:NAME``: set by the app's lock), else None
    (stdio, or no keys configured: the client address then counts for rate limits)."""
    request = ctx.request_context.request
    scope = getattr(request, "scope", None)
    if not isinstance(scope, dict):
        return None
    principal = scope.get("state", {}).get("principal")
    if principal:
        return str(principal)
    client = scope.get("client")
    return str(client[0]) if client else None  # the HTTP faces' rate-limit key too


def _is_user(principal: str | None) -> bool:
    """A multi-user account: its answers are stored under it, as on the HTTP API."""
    return bool(principal and principal.startswith(USER_PREFIX))


# --- streamable HTTP inside the app ---------------------------------------------------

def mount(app: FastAPI, settings: Settings, *, slot: Slot | None = None) -> None:
    """Serve MCP at ``/mcp`` on ``app``; its sessions run in :func:`lifespan_with_mcp`.

    Added as a route of the app itself (not a sub-app), so the app's middleware (the
    lock, CORS, the body limit) applies to it as to every API path. The SDK's DNS
    rebinding check (Host and Origin must be loopback ones) is on only where it is the
    sole guard: an open app (no keys, not multi-user) on loopback. With the lock on, a
    hostile page has no key to send, and a reverse proxy may forward its public Host."""
    async def services() -> AnswerServices:
        try:
            return answer_services(app)
        except EngineNotReadyError as exc:
            raise ToolError(exc.message) from None

    locked = bool(settings.api_keys) or settings.multi_user
    server = build_server(services, slot=slot)
    http = server.streamable_http_app(
        streamable_http_path=MCP_PATH, stateless_http=True, host=settings.host,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False)
        if locked else None)  # None: the SDK's loopback rule
    app.router.routes.extend(http.routes)
    app.state.mcp = server


def lifespan_with_mcp(inner: Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]
                      ) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """``inner`` (the app's loading lifespan) around the MCP session manager's run(),
    whose task group serves MCP requests: on shutdown, tool calls in flight are
    cancelled first, then the engine and the store close."""
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server: MCPServer | None = getattr(app.state, "mcp", None)
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(inner(app))
            if server is not None:
                await stack.enter_async_context(server.session_manager.run())
            yield
    return lifespan


# --- stdio: ``search-app mcp`` --------------------------------------------------------

def serve_stdio(settings: Settings) -> None:
    """Load the models and retrieval in the background and serve MCP on stdin/stdout
    until the client closes them."""
    loaded: asyncio.Future[AnswerServices] | None = None

    async def services() -> AnswerServices:
        assert loaded is not None
        try:
            async with asyncio.timeout(STDIO_READY_TIMEOUT_S):
                return await asyncio.shield(loaded)
        except TimeoutError:
            raise ToolError("The answer engine is still loading; retry in a moment.") from None
        except Exception as exc:
            raise ToolError(f"The answer engine failed to start: {exc}") from None

    @contextlib.asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[None]:
        nonlocal loaded
        async with contextlib.AsyncExitStack() as stack:
            loaded = asyncio.ensure_future(_load_services(settings, stack))
            loaded.add_done_callback(_log_outcome)
            try:
                yield
            finally:
                loaded.cancel()
                with contextlib.suppress(BaseException):
                    await loaded

    build_server(services, lifespan=lifespan).run("stdio")


async def _load_services(settings: Settings, stack: contextlib.AsyncExitStack
                         ) -> AnswerServices:
    """What ``serve`` builds in its lifespan: store, models, retrieval and pipeline."""
    from search_app.app import build_answer_services
    from search_app.store import Store
    from serving.app import load_models
    from serving.registry import ModelRegistry

    store = await asyncio.to_thread(Store, settings.store_location())
    stack.callback(store.close)
    registry = ModelRegistry()
    failure = await load_models(registry, settings.server_options(), stack)
    if failure is not None:
        raise RuntimeError(f"the model could not start: {failure}")
    return await build_answer_services(settings, registry, store, stack)


def _log_outcome(task: asyncio.Future[AnswerServices]) -> None:
    if task.cancelled():
        return
    if (exc := task.exception()) is not None:
        log.error("the answer engine could not be built: %s", exc)
    else:
        log.info("answer engine ready: MCP tools are live")
