"""The search app as one ASGI application, built from :class:`Settings`.

Today it is the serving layer (OpenAI-compatible endpoints, health, metrics); the answer
pipeline, its APIs and the UI are added here as they land. Everything is built in the
lifespan, nothing at import time.
"""

from __future__ import annotations

from fastapi import FastAPI

from search_app.config import Settings
from serving import api
from serving.app import background_lifespan, load_models, serving_state
from serving.registry import ModelRegistry

__all__ = ["create_app"]


def create_app(settings: Settings) -> FastAPI:
    options = settings.server_options()
    registry = ModelRegistry()
    app = FastAPI(
        title="search-app",
        description="Self-hosted AI search with an OpenAI-compatible model server.",
        lifespan=background_lifespan(lambda stack: load_models(registry, options, stack)),
    )
    app.state.settings = settings
    serving_state(app, registry)
    api.install(app, api_keys=options.api_keys, cors_origins=options.cors_origins,
                max_body_bytes=options.max_body_bytes)
    return app
