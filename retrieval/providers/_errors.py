"""Errors raised by search providers.

Exceptions from httpx and json never leave a provider: they are translated where they
enter (``raise ... from exc``) so callers handle one hierarchy::

    ProviderError                 any failure of one provider (has .provider)
    +-- ProviderTimeout           no complete answer within the provider's timeout
    +-- ProviderUnavailable       connection refused / reset / DNS failure
    +-- ProviderRateLimited       HTTP 429 (or a plan quota); .retry_after in seconds
    +-- ProviderAuthError         HTTP 401/403: the key is missing, wrong or lacks rights
    +-- ProviderHTTPError         any other non-2xx status; .status
    +-- ProviderBadResponse       malformed JSON or a changed response shape
    +-- AllProvidersFailed        a FallbackSearch ran out of providers; .attempts

Messages never contain API keys or request URLs (keys travel in some query strings).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from retrieval.providers._fallback import Attempt

__all__ = [
    "AllProvidersFailed",
    "ProviderAuthError",
    "ProviderBadResponse",
    "ProviderError",
    "ProviderHTTPError",
    "ProviderRateLimited",
    "ProviderTimeout",
    "ProviderUnavailable",
]


class ProviderError(Exception):
    """Base class: one provider could not answer. ``status`` is a short machine label."""

    status = "error"

    def __init__(self, provider: str, message: str) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.message = message


class ProviderTimeout(ProviderError):
    status = "timeout"


class ProviderUnavailable(ProviderError):
    status = "unavailable"


class ProviderRateLimited(ProviderError):
    """HTTP 429. ``retry_after`` is the server's hint in seconds, when it sent one."""

    status = "rate_limited"

    def __init__(self, provider: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(provider, message)
        self.retry_after = retry_after


class ProviderAuthError(ProviderError):
    status = "auth"

    def __init__(self, provider: str, message: str, http_status: int) -> None:
        super().__init__(provider, message)
        self.http_status = http_status


class ProviderHTTPError(ProviderError):
    status = "http_error"

    def __init__(self, provider: str, message: str, http_status: int) -> None:
        super().__init__(provider, message)
        self.http_status = http_status


class ProviderBadResponse(ProviderError):
    status = "bad_response"


class AllProvidersFailed(ProviderError):
    """Every provider in a chain failed; ``attempts`` says how each one did."""

    status = "all_failed"

    def __init__(self, attempts: list[Attempt]) -> None:
        summary = "; ".join(f"{a.provider}: {a.reason}" for a in attempts) or "no providers"
        super().__init__("chain", f"all providers failed ({summary})")
        self.attempts = attempts
