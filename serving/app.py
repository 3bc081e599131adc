"""The standalone OpenAI-compatible server (``search-app serve-model``).

The engine and the embedder load in the background of the app's lifespan: the server
accepts connections at once and answers 503 (with Retry-After) until they are ready,
as load balancers expect; shutdown always releases the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

from serving import api
from serving.embeddings import Embedder
from serving.engines import EngineKind, EngineOptions, create_engine
from serving.handlers import OpenAIServing
from serving.metrics import ServingMetrics
from serving.registry import ModelRegistry

__all__ = ["ServerOptions", "create_app", "load_models", "serving_state"]

log = logging.getLogger(__name__)


class ServerOptions(BaseModel):
    engine: EngineKind = "auto"
    engines: EngineOptions = Field(default_factory=EngineOptions)
    embedding_model: str | None = Field("all-MiniLM-L6-v2",
                                        description="None: no /v1/embeddings model.")
    embedding_device: str = "auto"
    api_keys: list[str] = Field(default_factory=list, repr=False)
    cors_origins: list[str] = Field(default_factory=list)
    max_body_bytes: int = 8 * 1024 * 1024


def serving_state(app: FastAPI, registry: ModelRegistry) -> None:
    """Attach the registry, handlers and metrics that :mod:`serving.api` routes use."""
    metrics = ServingMetrics(lambda: {name: e.load for name, e in registry.engines.items()})
    app.state.registry = registry
    app.state.serving_metrics = metrics
    app.state.openai_serving = OpenAIServing(registry, metrics)


async def load_models(registry: ModelRegistry, options: ServerOptions,
                      stack: contextlib.AsyncExitStack) -> None:
    """Load the engine and the embedder into ``registry``; failures mark it failed."""
    try:
        engine = await create_engine(options.engine, options.engines)
        stack.push_async_callback(engine.aclose)
        registry.add_engine(engine)
        if options.embedding_model:
            embedder = await Embedder.load(options.embedding_model,
                                           device=options.embedding_device)
            registry.add_embedder(embedder)
        registry.state = "ready"
        log.info("models ready: %s", ", ".join(registry.names()))
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        registry.state = "failed"
        registry.failure = f"{type(exc).__name__}: {exc}"
        log.exception("model loading failed")


def background_lifespan(load: Callable[[contextlib.AsyncExitStack], Awaitable[Any]]
                        ) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """A lifespan that runs ``load`` in the background and unwinds its stack on exit."""
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            task = asyncio.create_task(load(stack))
            app.state.loading_task = task
            try:
                yield
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
    return lifespan


def create_app(options: ServerOptions) -> FastAPI:
    registry = ModelRegistry()
    app = FastAPI(
        title="search-app model server",
        description="OpenAI-compatible inference (vLLM, llama.cpp or an upstream server).",
        lifespan=background_lifespan(lambda stack: load_models(registry, options, stack)),
    )
    serving_state(app, registry)
    api.install(app, api_keys=options.api_keys, cors_origins=options.cors_origins,
                max_body_bytes=options.max_body_bytes)
    return app
