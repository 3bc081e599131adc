"""Per-client rate limiting of the endpoints that start an answer, and a cap on the
answers a client streams at once.

Why a token bucket per client: an answer costs seconds of model time, so one client
must not be able to queue hundreds; a bucket lets a person ask a few questions in a row
(the burst) and then refills at the configured rate. The client is the API key (or the
session made with it, see search_app/access.py) when the app has keys, else the client
address as uvicorn reports it (behind a reverse proxy, uvicorn's
``--forwarded-allow-ips`` makes that the real client from ``X-Forwarded-For``); never
the self-declared ``X-Client-Id``, which a client could rotate. The stream cap counts
answers in progress, so a client cannot hold every model slot with long answers while
staying under the rate. Buckets live in memory (one process; several replicas
would share Redis instead, see docs/deployment.md) and the least recently seen are
dropped beyond ``max_clients``, so memory stays bounded.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from contextvars import ContextVar

from starlette.types import ASGIApp, Receive, Scope, Send

from serving.api import error_response
from serving.errors import OverloadedError

__all__ = ["RateLimitedError", "RateLimiter", "RateLimitMiddleware", "client_key"]

# Who is asking (key name or address, set by the middleware), for limits checked deeper
# down: the answer model on /v1/chat/completions is only known once the body is parsed.
client_key: ContextVar[str] = ContextVar("client_key", default="unknown")


class RateLimitedError(OverloadedError):
    def __init__(self, wait_s: float, message: str | None = None) -> None:
        self.retry_after = max(1, math.ceil(wait_s))
        super().__init__(message or f"Too many requests from this client; retry in "
                                    f"{self.retry_after} s.")


class RateLimiter:
    def __init__(self, per_minute: float, burst: int, *, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_minute / 60.0  # tokens per second
        self.burst = float(burst)
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def check(self, key: str) -> None:
        """Take a token or raise :class:`RateLimitedError` (429 with Retry-After)."""
        wait = self.acquire(key)
        if wait > 0:
            raise RateLimitedError(wait)

    def acquire(self, key: str) -> float:
        """Take one token for ``key``: 0.0 when allowed, else seconds until one is free."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        tokens, seen = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - seen) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait


class RateLimitMiddleware:
    """429 with Retry-After, as a JSON error, for POSTs to the given paths (over the
    rate, or ``max_streams`` answers already in progress for this client); records the
    client of every request in :data:`client_key`."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter, paths: Iterable[str],
                 on_limited: Callable[[], None] | None = None, max_streams: int = 0) -> None:
        self.app = app
        self.limiter = limiter
        self.paths = frozenset(paths)
        self.on_limited = on_limited
        self.max_streams = max_streams
        self._streams: dict[str, int] = {}

    def _refuse(self, key: str) -> RateLimitedError | None:
        if self.max_streams and self._streams.get(key, 0) >= self.max_streams:
            return RateLimitedError(5, f"This client already has {self.max_streams} "
                                       "answers in progress; retry when one finishes.")
        try:
            self.limiter.check(key)
        except RateLimitedError as exc:
            return exc
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        key = scope.get("state", {}).get("principal") or (client[0] if client else "unknown")
        token = client_key.set(key)
        try:
            if scope["method"] != "POST" or scope["path"] not in self.paths:
                await self.app(scope, receive, send)
                return
            refused = self._refuse(key)
            if refused is not None:
                if self.on_limited is not None:
                    self.on_limited()
                response = error_response(429, refused.to_dict(), headers={
                    "Retry-After": str(refused.retry_after)})
                await response(scope, receive, send)
                return
            self._streams[key] = self._streams.get(key, 0) + 1
            try:  # the whole response, streaming included
                await self.app(scope, receive, send)
            finally:
                left = self._streams.pop(key) - 1
                if left:
                    self._streams[key] = left
        finally:
            client_key.reset(token)
