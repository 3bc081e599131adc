"""Every error the serving layer can return, built in one place.

Why one module: the HTTP layer must answer every failure in OpenAI's shape
(``{"error": {"message", "type", "param", "code"}}``) with the right status, and
engines must not know about HTTP. Engines raise these exceptions; the API maps them.

    ServingError                      -> status, type
    ├── BadRequestError               400 invalid_request_error
    │   └── ContextLengthError        400 invalid_request_error (param "messages"/"prompt")
    ├── AuthenticationError           401 authentication_error
    ├── ModelNotFoundError            404 not_found_error  (param "model")
    ├── PayloadTooLargeError          413 invalid_request_error
    ├── OverloadedError               429 rate_limit_error
    ├── EngineError                   500 internal_error
    ├── UpstreamError                 upstream status, mapped
    └── EngineNotReadyError           503 service_unavailable
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ServingError",
    "BadRequestError",
    "ContextLengthError",
    "AuthenticationError",
    "ModelNotFoundError",
    "PayloadTooLargeError",
    "OverloadedError",
    "EngineError",
    "EngineNotReadyError",
    "UpstreamError",
    "error_body",
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


class ModelNotFoundError(ServingError):
    status_code = 404
    error_type = "not_found_error"

    def __init__(self, model: str, available: list[str]) -> None:
        names = ", ".join(available) or "none"
        super().__init__(
            f"The model `{model}` does not exist. Available models: {names}.", param="model"
        )


class PayloadTooLargeError(ServingError):
    status_code = 413
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
