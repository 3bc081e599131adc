"""The answer engine's error codes and what each face answers for them: one table.

Why one table: the native API streams ``error`` events with a ``code``; the Lepton face
(``/query``) and the OpenAI face (``model: "search-app"``) turn an error that comes
before any output into an HTTP status, and the UI names each code. They used to keep
their own mappings, which disagreed.

    code                status  when
    search_failed       502     no provider answered (the chain's reasons in the message)
    model_unavailable   503     the model is loading, failed to load, or is restarting
    model_crashed       503     the model's engine process died during this answer
    model_busy          429     the model's queue is full (--max-queue); Retry-After
    model_timeout       504     no first token within first_token_timeout_s
    model_error         500     the model failed while answering
    store_failed        500     the answer was complete but could not be stored
    internal_error      500     a bug (the message names the exception type only)
"""

from __future__ import annotations

from serving.errors import (
    EngineCrashedError,
    EngineError,
    EngineNotReadyError,
    OverloadedError,
    ServingError,
    UpstreamError,
)

__all__ = ["ANSWER_ERROR_STATUS", "answer_error", "engine_error_code", "error_headers"]

ANSWER_ERROR_STATUS: dict[str, int] = {
    "search_failed": 502,
    "model_unavailable": 503,
    "model_crashed": 503,
    "model_busy": 429,
    "model_timeout": 504,
    "model_error": 500,
    "store_failed": 500,
    "internal_error": 500,
}


def error_headers(code: str) -> dict[str, str]:
    """Retry-After for the codes a client should retry (busy, loading, restarting)."""
    return {"Retry-After": "5"} if ANSWER_ERROR_STATUS.get(code) in (429, 503) else {}


def engine_error_code(exc: ServingError) -> str:
    """The answer error code for an engine failure."""
    if isinstance(exc, EngineCrashedError):
        return "model_crashed"
    if isinstance(exc, EngineNotReadyError):
        return "model_unavailable"
    if isinstance(exc, OverloadedError):
        return "model_busy"
    return "model_error"


def answer_error(code: str, message: str) -> ServingError:
    """An answer error as the serving layer's exception (OpenAI-shaped body, status)."""
    status = ANSWER_ERROR_STATUS.get(code, 500)
    if code == "model_crashed":
        return EngineCrashedError(message)
    if status == 503:
        return EngineNotReadyError(message)
    if status == 429:
        return OverloadedError(message)
    if status in (502, 504):
        return UpstreamError(message, status=status)
    return EngineError(message)
