"""Typed FastAPI dependencies: routes declare what they need, the lifespan provides it.

Why aliases on ``app.state``: the store, index and pipeline are built in the lifespan
(never at import time), and tests swap them with ``app.dependency_overrides`` or by
setting the state. A route that needs the pipeline before it is built gets a 503 with
Retry-After (the same answer the serving layer gives while the model loads).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, Request

from retrieval.index import LocalIndex
from search_app.collections import Collections, owner_of
from search_app.config import Settings
from search_app.pipeline import AnswerPipeline
from search_app.store import Store
from search_app.users import USER_PREFIX
from serving.errors import EngineNotReadyError

__all__ = [
    "AnswerServices",
    "ClientIdDep",
    "CollectionsDep",
    "MaybeCollectionsDep",
    "OwnerDep",
    "IndexDep",
    "PipelineDep",
    "SettingsDep",
    "StoreDep",
    "UserDep",
    "answer_services",
    "client_id",
    "signed_in_user",
]

CLIENT_HEADER = "X-Client-Id"
CLIENT_COOKIE = "search_app_client"


@dataclass
class AnswerServices:
    """What the lifespan builds once the models are loaded."""

    pipeline: AnswerPipeline
    index: LocalIndex
    collections: Collections | None = None  # uploaded documents


def answer_services(app: FastAPI) -> AnswerServices:
    """What the lifespan built; 503 (EngineNotReadyError) until it is there."""
    services: AnswerServices | None = getattr(app.state, "answer", None)
    if services is None:
        failure = getattr(app.state, "answer_failure", None)
        if failure:
            raise EngineNotReadyError(f"The answer engine failed to start: {failure}")
        raise EngineNotReadyError("The answer engine is still loading; retry in a few "
                                  "seconds.")
    return services


def _services(request: Request) -> AnswerServices:
    return answer_services(request.app)


def _pipeline(request: Request) -> AnswerPipeline:
    return _services(request).pipeline


def _index(request: Request) -> LocalIndex:
    return _services(request).index


def _collections(request: Request) -> Collections:
    collections = _services(request).collections
    if collections is None:
        raise EngineNotReadyError("Uploaded documents are not available in this app.")
    return collections


def _maybe_collections(request: Request) -> Collections | None:
    """The collections where the answer engine has them (a question may name none)."""
    services: AnswerServices | None = getattr(request.app.state, "answer", None)
    return services.collections if services is not None else None


def _store(request: Request) -> Store:
    store: Store | None = getattr(request.app.state, "store", None)
    if store is None:
        raise EngineNotReadyError("The store is not open yet; retry in a moment.")
    return store


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def signed_in_user(request: Request) -> str | None:
    """``user:NAME`` when a user of multi-user mode makes the request (set by the lock,
    search_app/access.py), else None. Their answers and threads are stored under it,
    and only they can list or open them."""
    principal = getattr(request.state, "principal", None)
    return principal if principal and principal.startswith(USER_PREFIX) else None


def owner(request: Request) -> str:
    """Whose collections of uploaded documents a request sees: the signed-in user's in
    multi-user mode, else the app's (one user; API keys share them)."""
    return owner_of(signed_in_user(request))


def client_id(request: Request) -> str | None:
    """Who is asking, for history listings: the X-Client-Id header, else the cookie."""
    value = request.headers.get(CLIENT_HEADER) or request.cookies.get(CLIENT_COOKIE)
    return value.strip()[:100] if value and value.strip() else None


PipelineDep = Annotated[AnswerPipeline, Depends(_pipeline)]
IndexDep = Annotated[LocalIndex, Depends(_index)]
StoreDep = Annotated[Store, Depends(_store)]
SettingsDep = Annotated[Settings, Depends(_settings)]
ClientIdDep = Annotated[str | None, Depends(client_id)]
UserDep = Annotated[str | None, Depends(signed_in_user)]
CollectionsDep = Annotated[Collections, Depends(_collections)]
MaybeCollectionsDep = Annotated[Collections | None, Depends(_maybe_collections)]
OwnerDep = Annotated[str, Depends(owner)]
