"""The OpenAI-compatible HTTP surface: routes, error mapping, auth and body limits.

Routes stay thin: they pick the handler and send what it returns (a JSON body, an SSE
stream or an error). Everything here is installed on an app by :func:`install`, so the
search app mounts the same surface the standalone model server has.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Iterable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.auth import KeyRing, bearer_token
from serving.errors import (
    AuthenticationError,
    BadRequestError,
    PayloadTooLargeError,
    ServingError,
    error_body,
)
from serving.handlers import OpenAIServing
from serving.metrics import ServingMetrics
from serving.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    ErrorResponse,
    ModelCard,
    ModelList,
)
from serving.registry import ModelRegistry

__all__ = ["ApiKeyMiddleware", "BodySizeLimitMiddleware", "error_response", "install",
           "router", "truthful_openapi", "unauthorized"]

log = logging.getLogger(__name__)
T = TypeVar("T")

router = APIRouter()  # error responses are documented by truthful_openapi


def _registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


def _serving(request: Request) -> OpenAIServing:
    return request.app.state.openai_serving


def _metrics(request: Request) -> ServingMetrics:
    return request.app.state.serving_metrics


RegistryDep = Annotated[ModelRegistry, Depends(_registry)]
ServingDep = Annotated[OpenAIServing, Depends(_serving)]
MetricsDep = Annotated[ServingMetrics, Depends(_metrics)]


async def _until_disconnect(request: Request, work: Awaitable[T]) -> T | None:
    """Run ``work`` but cancel it when the client goes away (it aborts in the engine).

    None when the client left: nothing is sent and nothing is logged as an error (an
    exception here would reach the ASGI server as a traceback at ERROR level)."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task  # let the engine abort before the request ends
        log.debug("%s %s: the client disconnected; generation aborted", request.method,
                  request.url.path)
        return None
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


def _send(result: Any, metrics: ServingMetrics, endpoint: str) -> Response:
    if result is None:  # the client disconnected: nobody reads this (nginx's 499)
        metrics.requests.labels(endpoint, "disconnected").inc()
        return Response(status_code=499)
    if isinstance(result, AsyncIterator):
        async def counted() -> AsyncIterator[str]:
            status = "error"
            try:
                async for line in result:
                    if line.startswith('data: {"error"'):
                        status = "stream_error"
                    yield line
                status = "ok" if status != "stream_error" else status
            finally:
                metrics.requests.labels(endpoint, status if status != "error" else
                                        "disconnected").inc()
                aclose = getattr(result, "aclose", None)
                if aclose is not None:
                    await aclose()

        return StreamingResponse(counted(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})
    metrics.requests.labels(endpoint, "ok").inc()
    return JSONResponse(result.model_dump(mode="json"))


@router.get("/v1/models", response_model=ModelList, tags=["openai"])
async def list_models(registry: RegistryDep) -> ModelList:
    registry.default_engine  # 503 while loading  # noqa: B018
    cards = [ModelCard(id=name, owned_by=e.info.owned_by, max_model_len=e.info.context_length,
                       context_length=e.info.context_length)
             for name, e in registry.engines.items()]
    cards += [agent.card() for agent in registry.agents.values()]
    cards += [ModelCard(id=name, max_model_len=e.model.max_seq_length,
                        context_length=e.model.max_seq_length)
              for name, e in registry.embedders.items()]
    return ModelList(data=cards)


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse, tags=["openai"],
             responses={200: {"content": {"text/event-stream": {}}}})
async def chat_completions(body: ChatCompletionRequest, request: Request,
                           serving: ServingDep, metrics: MetricsDep) -> Response:
    return _send(await _until_disconnect(request, serving.chat(body)), metrics, "chat")


@router.post("/v1/completions", response_model=CompletionResponse, tags=["openai"],
             responses={200: {"content": {"text/event-stream": {}}}})
async def completions(body: CompletionRequest, request: Request, serving: ServingDep,
                      metrics: MetricsDep) -> Response:
    return _send(await _until_disconnect(request, serving.completions(body)), metrics,
                 "completions")


@router.post("/v1/embeddings", response_model=EmbeddingResponse, tags=["openai"])
async def embeddings(body: EmbeddingRequest, registry: RegistryDep, metrics: MetricsDep
                     ) -> EmbeddingResponse:
    embedder = registry.embedder(body.model)
    if body.dimensions is not None and body.dimensions != embedder.dimensions:
        raise BadRequestError(f"This model has {embedder.dimensions} dimensions; "
                              "`dimensions` cannot change that.", param="dimensions")
    inputs = body.inputs
    if any(not text for text in inputs):
        raise BadRequestError("input must not contain empty strings", param="input")
    vectors, tokens = await embedder.embed(inputs)
    data = [
        EmbeddingData(index=i, embedding=(base64.b64encode(v.astype("<f4").tobytes()).decode()
                                          if body.encoding_format == "base64" else v.tolist()))
        for i, v in enumerate(vectors)
    ]
    metrics.requests.labels("embeddings", "ok").inc()
    return EmbeddingResponse(data=data, model=body.model,
                             usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens))


@router.get("/health", tags=["ops"], responses={503: {"model": ErrorResponse}})
async def health(registry: RegistryDep) -> Response:
    """200 when the model can serve; 503 with the reason while it loads, failed to load,
    or its process crashed and is restarting."""
    registry.default_engine.check_health()
    return JSONResponse({"status": "ok", "models": registry.names()})


@router.get("/metrics", tags=["ops"], response_class=Response)
async def metrics_endpoint(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


# --- errors ---------------------------------------------------------------------------

class SafeJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: an error that quotes what the client sent (a lone
    UTF-16 surrogate included) can always be encoded, so the error handler itself never
    fails with a 500."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False,
                          separators=(",", ":")).encode("ascii")


def error_response(status: int, body: dict[str, Any],
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return SafeJSONResponse(body, status_code=status, headers=headers)


async def _serving_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServingError)
    if exc.status_code >= 500 and request.url.path != "/health":  # probes poll /health
        log.warning("%s %s -> %d: %s", request.method, request.url.path, exc.status_code,
                    exc.message)
    metrics: ServingMetrics | None = getattr(request.app.state, "serving_metrics", None)
    if metrics is not None and request.url.path.startswith("/v1/"):
        metrics.requests.labels(request.url.path.rsplit("/", 1)[-1],
                                str(exc.status_code)).inc()
    headers = ({"Retry-After": str(exc.retry_after or 1)} if exc.status_code in (429, 503)
               else None)
    response = error_response(exc.status_code, exc.to_dict())
    if headers:
        response.headers.update(headers)
    return response


def _describe(errors: Iterable[dict[str, Any]]) -> tuple[str, str | None]:
    messages, param = [], None
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        where = ".".join(loc)
        if param is None and loc:
            param = loc[0]
        msg = err.get("msg", "invalid value")
        if err.get("type") == "json_invalid":
            return "The request body is not valid JSON: " + str(
                err.get("ctx", {}).get("error", msg)), None
        messages.append(f"{where}: {msg}" if where else msg)
    return "; ".join(messages) or "Invalid request.", param


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, param = _describe(exc.errors())
    return error_response(400, error_body(message, "invalid_request_error", 400, param))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    kind = {401: "authentication_error", 403: "permission_error",
            404: "not_found_error"}.get(exc.status_code, "invalid_request_error")
    # Its headers go along: a 405's Allow, a 401's WWW-Authenticate.
    return error_response(exc.status_code, error_body(str(exc.detail), kind, exc.status_code),
                          headers=dict(exc.headers) if exc.headers else None)


# --- middleware -----------------------------------------------------------------------

class ApiKeyMiddleware:
    """Bearer keys on /v1 paths (the model server's whole face); see serving/auth.py.

    Health and metrics stay open (as in vLLM) for load balancers and Prometheus. The
    search app replaces this with its own lock (search_app/access.py), which also covers
    its answer endpoints and the browser's session cookie.
    """

    def __init__(self, app: ASGIApp, api_keys: Iterable[str], protected_prefixes:
                 tuple[str, ...] = ("/v1",)) -> None:
        self.app = app
        self._keys = KeyRing(api_keys)
        self._prefixes = protected_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or not self._keys or scope["method"] == "OPTIONS"
                or not scope["path"].startswith(self._prefixes)):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        if self._keys.match(bearer_token(headers.get("authorization"))):
            await self.app(scope, receive, send)
            return
        await unauthorized()(scope, receive, send)


def unauthorized(message: str = "Invalid or missing API key. Send it as "
                                "`Authorization: Bearer <key>`.") -> Response:
    """The 401 every lock answers: OpenAI's error shape and a Bearer challenge."""
    response = error_response(401, AuthenticationError(message).to_dict())
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


class BodySizeLimitMiddleware:
    """Refuse bodies over ``max_bytes`` with a 413, by header or while reading.
    ``path_limits``: another limit for an exact path (a file upload's larger one)."""

    def __init__(self, app: ASGIApp, max_bytes: int,
                 path_limits: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.path_limits = path_limits or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.path_limits.get(scope["path"], self.max_bytes)
        too_large = PayloadTooLargeError(_too_large_message(max_bytes))
        for key, value in scope.get("headers", []):
            if key == b"content-length" and value.isdigit() and int(value) > max_bytes:
                await error_response(413, too_large.to_dict())(scope, receive, send)
                return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:
                    raise _BodyTooLarge(max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await error_response(413, too_large.to_dict())(scope, receive, send)


def _too_large_message(max_bytes: int) -> str:
    return f"The request body is larger than the limit of {max_bytes} bytes."


class _BodyTooLarge(StarletteHTTPException):
    """Raised while reading a body without Content-Length (chunked) once it passes the
    limit. An HTTPException so that FastAPI's body parsing passes it on as it is,
    instead of turning every read error into 400 "error parsing the body"."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, _too_large_message(max_bytes))


_ERROR_DESCRIPTIONS = {
    400: "Invalid request (FastAPI's 422 validation errors are answered as 400).",
    401: "Missing or invalid API key (only when the server has keys).",
    403: "A session-cookie request without its CSRF token (search app with keys).",
    404: "Unknown model, answer, thread, collection or document.",
    413: "Request body over the size limit.",
    429: "Rate limited or queue full; see Retry-After.",
    500: "Internal error.",
    502: "Every search provider failed, or the upstream model server did.",
    503: "The model is loading, failed, or its engine is restarting; see Retry-After.",
    504: "No first token in time, or the upstream model server timed out.",
}


def truthful_openapi(app: FastAPI) -> None:
    """Make /openapi.json list the errors the app really answers, in the shape it
    answers them: no 422 (validation errors are 400s in OpenAI's shape), and every
    operation's error statuses, so a client generated from the schema handles them."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        ref = {"$ref": "#/components/schemas/ErrorResponse"}
        schema.setdefault("components", {}).setdefault("schemas", {}).setdefault(
            "ErrorResponse", ErrorResponse.model_json_schema(
                ref_template="#/components/schemas/{model}"))
        for sub in ErrorResponse.model_json_schema(
                ref_template="#/components/schemas/{model}").get("$defs", {}).items():
            schema["components"]["schemas"].setdefault(*sub)
        for path, operations in schema.get("paths", {}).items():
            for method, op in operations.items():
                responses = op.setdefault("responses", {})
                responses.pop("422", None)
                codes = [503] if path == "/health" else [401] if path == "/metrics" else [
                    c for c in _ERROR_DESCRIPTIONS
                    if c not in (403, 413) or method in ("post", "put", "patch", "delete")]
                for code in codes:
                    responses.setdefault(str(code), {
                        "description": _ERROR_DESCRIPTIONS[code],
                        "content": {"application/json": {"schema": ref}}})
        for unused in ("HTTPValidationError", "ValidationError"):
            schema["components"]["schemas"].pop(unused, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install(app: FastAPI, *, api_keys: Iterable[str] = (), cors_origins: Iterable[str] = (),
            max_body_bytes: int = 8 * 1024 * 1024,
            auth: tuple[type, dict[str, Any]] | None = None,
            body_limits: dict[str, int] | None = None) -> None:
    """Add the OpenAI routes, error handlers and middleware to ``app``.

    The app must set ``state.registry``, ``state.openai_serving`` and
    ``state.serving_metrics`` (see :func:`serving.app.serving_state`). ``auth`` is a
    middleware class and its arguments that replace the /v1 key check (the search app
    locks more doors); it sits inside CORS, so a 401 carries CORS headers.
    ``body_limits``: a larger body limit for exact paths (a file upload).
    """
    app.include_router(router)
    truthful_openapi(app)
    app.add_exception_handler(ServingError, _serving_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_body_bytes,
                       path_limits=body_limits)
    keys = [k for k in api_keys if k]
    if auth is not None:
        app.add_middleware(auth[0], **auth[1])
    elif keys:
        app.add_middleware(ApiKeyMiddleware, api_keys=keys)
    origins = list(cors_origins)
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"],
                           allow_headers=["*"], allow_credentials="*" not in origins)
