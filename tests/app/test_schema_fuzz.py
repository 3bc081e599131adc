"""The app's own OpenAPI schema, fuzzed with schemathesis: every operation gets requests
generated from its schema (valid and deliberately invalid ones), and every answer must
be what the schema promises: never a 5xx, a status the operation documents, and an
error body in the documented ``ErrorResponse`` shape.

The app is the real one (routes, middleware, error handlers, store, pipeline, a small
local index) with the scripted engine as its model, so a run takes seconds; the same
routes run over the real engines in the end-to-end tests.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from retrieval.embeddings import EmbeddingCache
from retrieval.index import LocalIndex
from search_app.collections import Collections
from search_app.deps import AnswerServices
from tests.app.support import ScriptedEngine, make_app
from tests.support.retrieval_fixtures import CountingModel

ROOT = Path(__file__).resolve().parents[2]


def _fuzz_app(tmp: Path) -> Any:
    app, _ = make_app(tmp, ScriptedEngine(), settings={"rate_limit_per_minute": 0,
                                                       "max_streams_per_client": 0})
    site = tmp / "site"
    site.mkdir()
    (site / "bees.md").write_text("# Honey bees\n\nBees make honey from flower nectar.\n")
    (site / "tides.md").write_text("# Tides\n\nTides follow the moon and the sun.\n")
    index = LocalIndex(tmp / "index-data",
                       CountingModel(EmbeddingCache(tmp / "embeddings.sqlite")))
    index.update([site])
    services = app.state.answer
    collections = Collections(tmp / "collections", app.state.store, CountingModel())
    services.pipeline.collections = collections.search
    app.state.answer = AnswerServices(pipeline=services.pipeline, index=index,
                                      collections=collections)
    return app


def _without_lifespan(app: Any) -> Any:
    """The app with its state set by hand: its lifespan (which would load the real
    models and index in the background and replace that state) is answered, not run."""
    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    return asgi


def _schema() -> Any:
    tmp = Path(tempfile.mkdtemp(prefix="schema-fuzz-"))
    return schemathesis.openapi.from_asgi("/openapi.json",
                                          _without_lifespan(_fuzz_app(tmp)))


schema = _schema()
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(case: Any) -> None:
    response = case.call()
    case.validate_response(response, checks=CHECKS)
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["code"] == response.status_code and error["message"]


def test_the_fuzz_covers_every_public_operation() -> None:
    operations = {f"{op.method.upper()} {op.path}"
                  for op in (r.ok() for r in schema.get_all_operations())}
    assert {"POST /api/search", "GET /api/search/{search_id}", "POST /query",
            "GET /searxng/search", "POST /v1/chat/completions", "POST /v1/completions",
            "POST /v1/embeddings", "GET /api/history", "POST /api/documents",
            "GET /api/collections", "DELETE /api/collections/{name}"} <= operations

