"""The search app as one ASGI application, built from :class:`Settings`.

The serving layer (OpenAI-compatible endpoints, health, metrics) plus the answer engine
(``/api/search``, ``/query``, ``/searxng/search``). Everything is built in the lifespan,
nothing at import time, in the background so the server accepts connections at once:
the store opens first (stored answers are readable within milliseconds), then the
models load, then retrieval (embedding model, local index, provider chain, page reader,
ranker) and the pipeline. Routes that need what is not built yet answer 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

import httpx
from fastapi import FastAPI

from retrieval.embeddings import EmbeddingCache, SentenceTransformerModel, resolve_model
from retrieval.index import LocalIndex
from retrieval.providers import FallbackSearch, build_chain
from retrieval.ranking import Ranker
from retrieval.reader import PageReader
from search_app import routes
from search_app.access import Access, AccessMiddleware, Sessions
from search_app.calibration import calibrate_relevance
from search_app.collections import (
    UPLOAD_PATH,
    CollectionLimits,
    Collections,
    chosen,
    owner_of,
)
from search_app.config import Settings
from search_app.deps import AnswerServices, answer_services
from search_app.grounding import RELEVANCE_THRESHOLD, Grounder
from search_app.mcp_server import lifespan_with_mcp
from search_app.mcp_server import mount as mount_mcp
from search_app.metrics import AnswerMetrics
from search_app.openai_face import AnswerAgent
from search_app.pipeline import AnswerPipeline
from search_app.ratelimit import (
    RateLimitedError,
    RateLimiter,
    RateLimitMiddleware,
    RedisRateLimiter,
    RedisStreamCounter,
    StreamCounter,
    Streams,
    TokenBuckets,
    answer_slot,
    check,
    client_key,
    redis_client,
)
from search_app.store import Store
from search_app.users import Users
from serving import api
from serving.app import ServerOptions, background_lifespan, load_models, serving_state
from serving.auth import KeyRing
from serving.registry import ModelRegistry

__all__ = ["build_answer_services", "create_app"]

log = logging.getLogger(__name__)

# The endpoints that start an answer: rate limited per client (the answer model on
# /v1/chat/completions is limited by its agent; the bare served model is not).
_ANSWER_PATHS = ("/api/search", "/query")


def create_app(settings: Settings) -> FastAPI:
    options = settings.server_options()
    registry = ModelRegistry()
    app = FastAPI(
        title="search-app",
        description="Self-hosted AI search with an OpenAI-compatible model server.",
        lifespan=lifespan_with_mcp(background_lifespan(
            lambda stack: _load(app, settings, options, registry, stack))),
    )
    app.state.settings = settings
    app.state.store = None
    app.state.answer = None
    app.state.answer_failure = None
    serving_state(app, registry, options)
    metrics = AnswerMetrics(app.state.serving_metrics.registry)
    app.state.answer_metrics = metrics
    limiter, streams, login_limiter = _limits(app, settings)

    async def limit() -> None:
        try:
            await check(limiter, client_key.get())
        except RateLimitedError:
            metrics.rate_limited.inc()
            raise

    async def collections(names: Sequence[str], web: bool) -> list[str]:
        return await chosen(answer_services(app).collections, owner_of(client_key.get()),
                            names, web)

    for name, mode in ((settings.answer_model, "quick"),
                       (f"{settings.answer_model}-research", "research")):
        registry.agents[name] = AnswerAgent(
            name, lambda: answer_services(app).pipeline,
            lambda: registry.default_engine.info.context_length, limit=limit, mode=mode,
            collections=collections)
    # Added before api.install, so it runs inside auth and CORS: an unauthenticated
    # request costs no token, limits count per key, and a 429 still carries CORS headers.
    app.add_middleware(RateLimitMiddleware, paths=_ANSWER_PATHS, limiter=limiter,
                       streams=streams, on_limited=metrics.rate_limited.inc)
    app.state.access = _access(settings, Users(lambda: app.state.store)
                               if settings.multi_user else None, login_limiter)
    auth = None if app.state.access is None else (AccessMiddleware, {
        "access": app.state.access, "protect_metrics": settings.protect_metrics,
        "public_share_links": settings.public_share_links})
    api.install(app, api_keys=options.api_keys, cors_origins=options.cors_origins,
                max_body_bytes=options.max_body_bytes, auth=auth,
                # uploads: the file's cap plus room for the multipart framing
                body_limits={UPLOAD_PATH: settings.upload_max_bytes + 64 * 1024})
    app.include_router(routes.router)
    mount_mcp(app, settings, slot=lambda key: answer_slot(  # /mcp: streamable HTTP
        limiter, streams, key, on_limited=metrics.rate_limited.inc))
    return app


def _limits(app: FastAPI, settings: Settings
            ) -> tuple[TokenBuckets, Streams, TokenBuckets]:
    """Answer rate, answers in progress and sign-in attempts: in Redis when
    ``redis_url`` is set (replicas count together), else in this process."""
    if settings.redis_url is None:
        app.state.redis = None
        return (RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst),
                StreamCounter(settings.max_streams_per_client),
                RateLimiter(settings.login_attempts_per_minute, burst=5))
    client = app.state.redis = redis_client(settings.redis_url.get_secret_value())
    return (RedisRateLimiter(client, settings.rate_limit_per_minute,
                             settings.rate_limit_burst),
            RedisStreamCounter(client, settings.max_streams_per_client,
                               ttl_s=settings.answer_timeout_s * 2 + 300),
            RedisRateLimiter(client, settings.login_attempts_per_minute, 5,
                             prefix="search-app:login"))


def _access(settings: Settings, users: Users | None,
            login_limiter: TokenBuckets) -> Access | None:
    """The lock on every face (search_app/access.py), or None with neither keys nor
    multi-user mode."""
    keys = KeyRing(k.get_secret_value() for k in settings.api_keys)
    if not keys and users is None:
        return None
    secret = settings.session_secret.get_secret_value() if settings.session_secret else None
    if secret is None and not keys:
        # Users only: a secret kept in the data folder, so sessions survive restarts.
        secret = _stored_secret(settings.data_dir / "session.secret")
    return Access(keys=keys, sessions=Sessions.for_keys(keys, secret,
                                                        settings.session_max_age_s),
                  login_limiter=login_limiter, users=users)


def _stored_secret(path: Path) -> str:
    """A random signing secret made once and kept (mode 0600) at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # made before (or by another replica just now)
        pass
    else:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


async def _load(app: FastAPI, settings: Settings, options: ServerOptions,
                registry: ModelRegistry, stack: contextlib.AsyncExitStack) -> str | None:
    """Store, models, then retrieval; returns a one-line failure (see background_lifespan)."""
    if app.state.redis is not None:
        stack.push_async_callback(app.state.redis.aclose)
    store = await asyncio.to_thread(Store, settings.store_location())
    stack.callback(store.close)
    app.state.store = store
    failure = await load_models(registry, options, stack)
    if failure is not None:
        app.state.answer_failure = "the model failed to load"
        return failure
    try:
        app.state.answer = await build_answer_services(settings, registry, store, stack,
                                                       metrics=app.state.answer_metrics)
        log.info("answer engine ready (provider %s)", settings.provider)
        return None
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        app.state.answer_failure = f"{type(exc).__name__}: {exc}"
        log.exception("building the answer engine failed")
        return f"the answer engine could not be built: {app.state.answer_failure}"


async def build_answer_services(settings: Settings, registry: ModelRegistry, store: Store,
                                stack: contextlib.AsyncExitStack, *,
                                metrics: AnswerMetrics | None = None) -> AnswerServices:
    """Retrieval and the pipeline, closed by ``stack``. Reuses the serving layer's
    sentence-transformers model when it is the one the index was built with."""
    model_name = _index_model(settings.data_dir) or settings.embedding_model
    source, _ = resolve_model(model_name)  # the same rule on both sides: load it once
    shared = next((e for e in registry.embedders.values() if e.source == source), None)
    cache = EmbeddingCache(settings.data_dir / "cache" / "embeddings.sqlite")
    stack.callback(cache.close)
    model = await asyncio.to_thread(
        SentenceTransformerModel, model_name, device=settings.device, cache=cache,
        st_model=shared.model if shared is not None else None)
    index = LocalIndex(settings.data_dir, model)
    stack.callback(index.close)
    if index.is_built():  # load the snapshot now, not on the first question
        await asyncio.to_thread(index.load)
    client = httpx.AsyncClient(timeout=httpx.Timeout(settings.search_timeout_s))
    stack.push_async_callback(client.aclose)
    popts = settings.provider_options()
    chains: dict[str, FallbackSearch] = {
        settings.provider: build_chain(settings.provider, popts, client=client,
                                       local=index.asearch)}
    for name in (n.strip() for n in settings.provider.split(",") if n.strip()):
        chains.setdefault(name, build_chain(name, popts, client=client, local=index.asearch))
    reader = PageReader(settings.reader_options())
    stack.push_async_callback(reader.aclose)
    grounder = Grounder(model, relevance_threshold=settings.relevance_threshold
                        or RELEVANCE_THRESHOLD, support_threshold=settings.support_threshold)
    collections = Collections(settings.data_dir / "collections", store, model,
                              CollectionLimits(max_bytes=settings.upload_max_bytes,
                                               max_documents=settings.collection_max_documents,
                                               max_collections=settings.collections_per_owner))
    stack.callback(collections.close)
    pipeline = AnswerPipeline(
        engine=lambda: registry.default_engine, chains=chains,
        default_provider=settings.provider, ranker=Ranker(model), grounder=grounder,
        reader=reader, store=store, options=settings.pipeline_options(), metrics=metrics,
        collections=collections.search)
    if settings.relevance_threshold is None and index.is_built() and "local" in chains:
        grounder.local_threshold = await _calibrated_threshold(pipeline)
    return AnswerServices(pipeline=pipeline, index=index, collections=collections)


async def _calibrated_threshold(pipeline: AnswerPipeline) -> float:
    """The local index's relevance threshold, from the pipeline's own search and rank of
    unrelated questions (search_app/calibration.py)."""
    threshold, scores = await calibrate_relevance(pipeline.best_dense_score)
    log.info("relevance gate for the local index: %.3f (unrelated questions score up to "
             "%.3f here; web providers: %.2f)", threshold, max(scores, default=0.0),
             RELEVANCE_THRESHOLD)
    return threshold


def _index_model(data_dir: Path) -> str | None:
    """The embedding model the local index was built with: queries must use the same."""
    marker = data_dir / "index" / "snapshot" / "snapshot.json"
    if marker.is_file():
        return str(json.loads(marker.read_text())["model_id"])
    return None
