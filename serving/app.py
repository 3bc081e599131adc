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

from fastapi import FastAPI
from pydantic import BaseModel, Field

from serving import api
from serving.embeddings import Embedder
from serving.engines import EngineKind, EngineOptions, create_engine, self_check
from serving.errors import ServingError
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
    max_generation_s: float = Field(600.0, ge=0)


def serving_state(app: FastAPI, registry: ModelRegistry,
                  options: ServerOptions | None = None) -> None:
    """Attach the registry, handlers and metrics that :mod:`serving.api` routes use."""
    options = options or ServerOptions()
    metrics = ServingMetrics(lambda: {name: e.load for name, e in registry.engines.items()})
    app.state.registry = registry
    app.state.serving_metrics = metrics
    app.state.openai_serving = OpenAIServing(registry, metrics,
                                             max_generation_s=options.max_generation_s)


async def load_models(registry: ModelRegistry, options: ServerOptions,
                      stack: contextlib.AsyncExitStack) -> str | None:
    """Load the engine (and run its one-token self-check) and the embedder into
    ``registry``. A failure marks it failed and is returned as one line (the CLI exits
    with it; see :func:`background_lifespan`)."""
    try:
        engine = await create_engine(options.engine, options.engines)
        stack.push_async_callback(engine.aclose)
        await self_check(engine)
        registry.add_engine(engine)
        if options.embedding_model:
            embedder = await Embedder.load(options.embedding_model,
                                           device=options.embedding_device)
            registry.add_embedder(embedder)
        registry.state = "ready"
        log.info("models ready: %s", ", ".join(registry.names()))
        return None
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        registry.state = "failed"
        registry.failure = _one_line(exc)
        log.error("model loading failed: %s", registry.failure)
        log.debug("model loading failed", exc_info=True)
        return registry.failure


def _one_line(exc: Exception) -> str:
    message = exc.message if isinstance(exc, ServingError) else f"{type(exc).__name__}: {exc}"
    return " ".join(str(message).split()) or type(exc).__name__


def background_lifespan(load: Callable[[contextlib.AsyncExitStack], Awaitable[str | None]]
                        ) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """A lifespan that runs ``load`` in the background and unwinds its stack on exit.

    When ``load`` returns a failure and the app has an ``on_fatal`` callback in its
    state (the CLI sets one), that callback gets the one-line reason: the server stops
    and the command exits non-zero instead of serving 503s forever.
    """
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            task = asyncio.create_task(load(stack))
            app.state.loading_task = task

            def done(t: asyncio.Task[str | None]) -> None:
                on_fatal = getattr(app.state, "on_fatal", None)
                if on_fatal is not None and not t.cancelled() and t.exception() is None \
                        and t.result():
                    on_fatal(t.result())

            task.add_done_callback(done)
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
    serving_state(app, registry, options)
    api.install(app, api_keys=options.api_keys, cors_origins=options.cors_origins,
                max_body_bytes=options.max_body_bytes)
    return app
