"""``GET /api/info``: what this app runs, for the browser UI and monitoring.

Why a public endpoint: the UI shows the active model and search provider (and offers the
configured providers), and it must learn them through the public API like any other
client. Nothing secret is listed: no URLs, keys or paths.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import APIRouter, FastAPI, Request

__all__ = ["app_info", "router"]

router = APIRouter(prefix="/api", tags=["search"])


def _version() -> str:
    try:
        return version("search-app")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "0+unknown"


def app_info(app: FastAPI) -> dict[str, Any]:
    """The model, provider and readiness, as ``GET /api/info`` returns them."""
    settings = app.state.settings
    registry = app.state.registry
    model = next(iter(registry.engines), None)
    providers = [settings.provider]
    providers += [name for name in (n.strip() for n in settings.provider.split(","))
                  if name and name not in providers]
    if getattr(app.state, "answer", None) is not None:
        state = "ready"
    elif registry.state == "failed" or getattr(app.state, "answer_failure", None):
        state = "failed"
    else:
        state = "loading"
    return {"version": _version(), "model": model, "answer_model": settings.answer_model,
            "provider": settings.provider, "providers": providers, "state": state}


@router.get("/info")
async def info(request: Request) -> dict[str, Any]:
    """Version, served model id (null while loading), provider chain and the choices a
    request may pick (the chain itself, then each provider of it), and ``state``
    (``loading``, ``ready`` or ``failed``)."""
    return app_info(request.app)
