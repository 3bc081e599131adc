"""Every error the serving layer can return, built in one place.

Why one module: the HTTP layer must answer every failure in OpenAI's shape
(``{"error": {"message", "type", "param", "code"}}``) with the right status, and
engines must not know about HTTP. Engines raise these exceptions; the API maps them.

    ServingError                      -> status, type
    ├── BadRequestError               400 invalid_request_error
    │   └── ContextLengthError        400 invalid_request_error (param "messages"/"prompt")
    ├── AuthenticationError           401 authentication_error
    ├── PermissionDeniedError         403 permission_error (e.g. a missing CSRF token)
    ├── ModelNotFoundError            404 not_found_error  (param "model")
    ├── NotFoundError                 404 not_found_error  (a collection, a document)
    ├── PayloadTooLargeError          413 invalid_request_error
    ├── UnsupportedMediaError         415 invalid_request_error (an upload's type)
    ├── OverloadedError               429 rate_limit_error
    ├── EngineError                   500 internal_error
    ├── UpstreamError                 upstream status, mapped
    └── EngineNotReadyError           503 service_unavailable
        └── EngineCrashedError        503 model_crashed (the engine process died)

Errors cross the engine-process boundary as dicts (:func:`error_to_wire`,
:func:`error_from_wire`): the same class, message, param and status come out.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ServingError",
    "BadRequestError",
    "ContextLengthError",
    "AuthenticationError",
    "PermissionDeniedError",
    "ModelNotFoundError",
    "NotFoundError",
    "PayloadTooLargeError",
    "UnsupportedMediaError",
    "OverloadedError",
    "EngineError",
    "EngineNotReadyError",
    "UpstreamError",
    "EngineCrashedError",
    "error_body",
    "error_from_wire",
    "error_to_wire",
]


class ServingError(Exception):
    status_code: int = 500
    error_type: str = "internal_error"
    retry_after: int | None = None  # seconds, sent as Retry-After with a 429 or 503

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def to_dict(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.status_code, self.param)


class BadRequestError(ServingError):
    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthError(BadRequestError):
    def __init__(self, *, prompt_tokens: int, max_tokens: int | None, context_length: int,
                 param: str = "messages") -> None:
        if max_tokens is None or prompt_tokens >= context_length:
            message = (
                f"This model's maximum context length is {context_length} tokens. However, "
                f"your prompt has {prompt_tokens} tokens. Please reduce the length of the "
                "prompt."
            )
        else:
            message = (
                f"This model's maximum context length is {context_length} tokens. However, "
                f"you requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the "
                f"prompt, {max_tokens} for the completion). Please reduce the length of the "
                "prompt or max_tokens."
            )
        super().__init__(message, param=param)
        self.prompt_tokens = prompt_tokens
        self.context_length = context_length


class AuthenticationError(ServingError):
    status_code = 401
    error_type = "authentication_error"


class PermissionDeniedError(ServingError):
    status_code = 403
    error_type = "permission_error"


class ModelNotFoundError(ServingError):
    status_code = 404
    error_type = "not_found_error"

    def __init__(self, model: str, available: list[str]) -> None:
        names = ", ".join(available) or "none"
        super().__init__(
            f"The model `{model}` does not exist. Available models: {names}.", param="model"
        )


class NotFoundError(ServingError):
    """Something the caller named that does not exist, or is somebody else's (the same
    answer: nothing tells them apart)."""

    status_code = 404
    error_type = "not_found_error"


class PayloadTooLargeError(ServingError):
    status_code = 413
    error_type = "invalid_request_error"


class UnsupportedMediaError(ServingError):
    status_code = 415
    error_type = "invalid_request_error"


class OverloadedError(ServingError):
    status_code = 429
    error_type = "rate_limit_error"


class EngineError(ServingError):
    status_code = 500
    error_type = "internal_error"


class EngineNotReadyError(ServingError):
    status_code = 503
    error_type = "service_unavailable"


class EngineCrashedError(EngineNotReadyError):
    """The model engine's process died (segfault, OOM kill) while this request ran.

    A 503 with Retry-After: the engine is restarted, so the same request may succeed
    in a few seconds.
    """

    error_type = "model_crashed"
    retry_after = 5


class UpstreamError(ServingError):
    """An upstream OpenAI-compatible server refused or failed a request.

    Its status is kept when it is a client error the caller can fix (400, 401, 404, 413,
    429); anything else becomes 502, because the fault is not the caller's.
    """

    error_type = "upstream_error"
    _passthrough = {400: "invalid_request_error", 401: "authentication_error",
                    404: "not_found_error", 413: "invalid_request_error",
                    422: "invalid_request_error", 429: "rate_limit_error",
                    503: "service_unavailable", 504: "timeout_error"}

    def __init__(self, message: str, *, status: int, param: str | None = None) -> None:
        super().__init__(message, param=param)
        if status in self._passthrough:
            self.status_code = 400 if status == 422 else status
            self.error_type = self._passthrough[status]
        else:
            self.status_code = 502


def error_body(message: str, error_type: str, code: int, param: str | None = None
               ) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_to_wire(exc: ServingError) -> dict[str, Any]:
    """The parts of an error that cross a process boundary (no traceback, no cause)."""
    extra = {k: getattr(exc, k) for k in _WIRE_EXTRA if hasattr(exc, k)}
    return {"class": type(exc).__name__, "message": exc.message, "param": exc.param,
            "status": exc.status_code, "type": exc.error_type,
            "retry_after": exc.retry_after, "extra": extra}


def error_from_wire(data: dict[str, Any]) -> ServingError:
    """Rebuild an error sent by :func:`error_to_wire`, as the same class when known
    (so ``except ContextLengthError`` still works across the boundary)."""
    cls = _WIRE_CLASSES.get(str(data.get("class")), ServingError)
    exc = cls.__new__(cls)
    ServingError.__init__(exc, str(data.get("message", "")), param=data.get("param"))
    exc.status_code = int(data.get("status", cls.status_code))
    exc.error_type = str(data.get("type", cls.error_type))
    exc.retry_after = data.get("retry_after")
    for key, value in (data.get("extra") or {}).items():
        if key in _WIRE_EXTRA:
            setattr(exc, key, value)
    return exc


_WIRE_EXTRA = ("prompt_tokens", "context_length")


_WIRE_CLASSES: dict[str, type[ServingError]] = {
    cls.__name__: cls for cls in (
        ServingError, BadRequestError, ContextLengthError, AuthenticationError,
        PermissionDeniedError, ModelNotFoundError, NotFoundError, PayloadTooLargeError,
        UnsupportedMediaError, OverloadedError, EngineError, EngineNotReadyError,
        EngineCrashedError, UpstreamError)
}
