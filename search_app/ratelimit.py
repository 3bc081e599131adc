"""Per-client rate limiting of the endpoints that start an answer, and a cap on the
answers a client streams at once; in memory, or shared by replicas through Redis.

Why a token bucket per client: an answer costs seconds of model time, so one client
must not be able to queue hundreds; a bucket lets a person ask a few questions in a row
(the burst) and then refills at the configured rate. The client is the API key or the
user (or the session made for them, see search_app/access.py) when the app is locked,
else the client address as uvicorn reports it (behind a reverse proxy, uvicorn's
``--forwarded-allow-ips`` makes that the real client from ``X-Forwarded-For``); never
the self-declared ``X-Client-Id``, which a client could rotate. The stream cap counts
answers in progress, so a client cannot hold every model slot with long answers while
staying under the rate.

Two implementations of each, chosen by ``SEARCH_APP_REDIS_URL``: in memory (one
process; the least recently seen clients are dropped beyond ``max_clients``, so memory
stays bounded) and Redis (several replicas count together: the bucket is updated by one
Lua script with Redis's own clock, and answers in progress are a sorted set per client
whose entries expire, so a replica that dies cannot hold a client's places forever).
If Redis does not answer within its timeout the request is let through and a warning
logged: a limiter outage must not take the app down with it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from contextvars import ContextVar
from typing import Any, Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.api import error_response
from serving.errors import OverloadedError

__all__ = ["RateLimitedError", "RateLimiter", "RateLimitMiddleware", "RedisRateLimiter",
           "RedisStreamCounter", "StreamCounter", "Streams", "TokenBuckets", "answer_slot",
           "check", "client_key", "redis_client", "refuse"]

log = logging.getLogger(__name__)

# Who is asking (key name or address, set by the middleware), for limits checked deeper
# down: the answer model on /v1/chat/completions is only known once the body is parsed.
client_key: ContextVar[str] = ContextVar("client_key", default="unknown")


class RateLimitedError(OverloadedError):
    def __init__(self, wait_s: float, message: str | None = None) -> None:
        self.retry_after = max(1, math.ceil(wait_s))
        super().__init__(message or f"Too many requests from this client; retry in "
                                    f"{self.retry_after} s.")


class TokenBuckets(Protocol):
    async def take(self, key: str) -> float:
        """Take one token for ``key``: 0.0 when allowed, else seconds until one is free."""
        ...


class Streams(Protocol):
    cap: int

    async def open(self, key: str, stream_id: str) -> bool:
        """Count one more answer in progress for ``key``; False (nothing counted) when
        it already has ``cap``."""
        ...

    async def close(self, key: str, stream_id: str) -> None: ...


async def check(buckets: TokenBuckets, key: str) -> None:
    """Take a token or raise :class:`RateLimitedError` (429 with Retry-After)."""
    wait = await buckets.take(key)
    if wait > 0:
        raise RateLimitedError(wait)


async def refuse(limiter: TokenBuckets, streams: Streams, key: str, stream_id: str
                 ) -> RateLimitedError | None:
    """Open one answer for ``key`` (a place under the cap of answers in progress, then a
    token), or say why not; a refused answer holds nothing."""
    if not await streams.open(key, stream_id):
        return RateLimitedError(5, f"This client already has {streams.cap} answers in "
                                   "progress; retry when one finishes.")
    wait = await limiter.take(key)
    if wait > 0:
        await streams.close(key, stream_id)
        return RateLimitedError(wait)
    return None


@contextlib.asynccontextmanager
async def answer_slot(limiter: TokenBuckets, streams: Streams, key: str,
                      on_limited: Callable[[], None] | None = None) -> AsyncIterator[None]:
    """One answer outside the HTTP middleware (MCP's ``ask``), held while it runs and
    counted exactly as :class:`RateLimitMiddleware` counts one; raises
    :class:`RateLimitedError` when refused."""
    stream_id = uuid.uuid4().hex
    refused = await refuse(limiter, streams, key, stream_id)
    if refused is not None:
        if on_limited is not None:
            on_limited()
        raise refused
    try:
        yield
    finally:
        await streams.close(key, stream_id)


# --- in memory ---------------------------------------------------------------------------

class RateLimiter:
    """Token buckets in this process."""

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

    async def take(self, key: str) -> float:
        return self.acquire(key)

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


class StreamCounter:
    """Answers in progress per client, in this process (``cap`` 0: no cap)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._open: dict[str, int] = {}

    async def open(self, key: str, stream_id: str) -> bool:
        if self.cap and self._open.get(key, 0) >= self.cap:
            return False
        self._open[key] = self._open.get(key, 0) + 1
        return True

    async def close(self, key: str, stream_id: str) -> None:
        left = self._open.pop(key, 1) - 1
        if left > 0:
            self._open[key] = left


# --- Redis (several replicas) ----------------------------------------------------------------

# KEYS[1] bucket; ARGV rate (tokens/s), burst, expiry (s). Redis's clock, not the
# replicas': their clocks may disagree. Returns the wait in seconds as a string.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'seen')
local tokens = tonumber(b[1]) or burst
local seen = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - seen) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'seen', tostring(now))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return tostring(wait)
"""
# KEYS[1] sorted set of stream ids by start time; ARGV cap, id, ttl (s). 1: opened.
_OPEN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[3]))
if tonumber(ARGV[1]) > 0 and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


def redis_client(url: str, timeout_s: float = 1.0) -> Any:
    """An asyncio Redis client with short timeouts (it connects on first use)."""
    import redis.asyncio as redis  # only needed with SEARCH_APP_REDIS_URL

    return redis.Redis.from_url(url, socket_timeout=timeout_s,
                                socket_connect_timeout=timeout_s, decode_responses=True)


class _Redis:
    """What both Redis counters share: the client, a key prefix, failing open."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._warned = 0.0

    def _key(self, key: str) -> str:
        return f"{self.prefix}:{key}"

    def _outage(self, exc: Exception) -> None:
        if time.monotonic() - self._warned > 60:  # once a minute, not once a request
            self._warned = time.monotonic()
            log.warning("Redis did not answer (%s): limits are not enforced until it "
                        "does", type(exc).__name__)


class RedisRateLimiter(_Redis):
    """Token buckets in Redis, shared by every replica that uses the same URL."""

    def __init__(self, client: Any, per_minute: float, burst: int,
                 prefix: str = "search-app:rate") -> None:
        super().__init__(client, prefix)
        self.rate = per_minute / 60.0
        self.burst = burst

    async def take(self, key: str) -> float:
        if self.rate <= 0:
            return 0.0
        expiry = math.ceil(self.burst / self.rate) + 60  # a full bucket is forgotten
        try:
            wait = await self.client.eval(_TAKE, 1, self._key(key), repr(self.rate),
                                          str(self.burst), str(expiry))
        except Exception as exc:  # noqa: BLE001 - any client or server failure: fail open
            self._outage(exc)
            return 0.0
        return float(wait)


class RedisStreamCounter(_Redis):
    """Answers in progress per client in Redis; an entry older than ``ttl_s`` (longer
    than any answer) is dropped, so a dead replica's streams stop counting."""

    def __init__(self, client: Any, cap: int, ttl_s: float = 900.0,
                 prefix: str = "search-app:streams") -> None:
        super().__init__(client, prefix)
        self.cap = cap
        self.ttl_s = ttl_s

    async def open(self, key: str, stream_id: str) -> bool:
        try:
            return bool(await self.client.eval(_OPEN, 1, self._key(key), str(self.cap),
                                               stream_id, str(int(self.ttl_s))))
        except Exception as exc:  # noqa: BLE001
            self._outage(exc)
            return True

    async def close(self, key: str, stream_id: str) -> None:
        try:
            await self.client.zrem(self._key(key), stream_id)
        except Exception as exc:  # noqa: BLE001
            self._outage(exc)


# --- the middleware ----------------------------------------------------------------------

class RateLimitMiddleware:
    """429 with Retry-After, as a JSON error, for POSTs to the given paths (over the
    rate, or ``streams.cap`` answers already in progress for this client); records the
    client of every request in :data:`client_key`."""

    def __init__(self, app: ASGIApp, limiter: TokenBuckets, paths: Iterable[str],
                 streams: Streams, on_limited: Callable[[], None] | None = None) -> None:
        self.app = app
        self.limiter = limiter
        self.streams = streams
        self.paths = frozenset(paths)
        self.on_limited = on_limited

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
            stream_id = uuid.uuid4().hex
            refused = await refuse(self.limiter, self.streams, key, stream_id)
            if refused is not None:
                if self.on_limited is not None:
                    self.on_limited()
                response = error_response(429, refused.to_dict(), headers={
                    "Retry-After": str(refused.retry_after)})
                await response(scope, receive, send)
                return
            closed = False

            async def close() -> None:
                nonlocal closed
                if not closed:
                    closed = True
                    await self.streams.close(key, stream_id)

            async def send_then_free(message: Message) -> None:
                # Free the place before the response's last byte goes out: a client that
                # starts its next answer the moment this one ends (an eval run at the
                # cap) must not find it still held by work after the end (SSE cleanup).
                if message["type"] == "http.response.body" and not message.get(
                        "more_body", False):
                    await close()
                await send(message)

            try:  # the whole response, streaming included
                await self.app(scope, receive, send_then_free)
            finally:
                await close()
        finally:
            client_key.reset(token)
