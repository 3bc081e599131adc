"""Rate limits and stream caps shared by replicas through a real redis-server on
loopback (tests/support/redis_server.py): two limiters, or two whole apps, count
against the same buckets; a Redis that does not answer lets requests through."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.procs import free_port
from search_app.app import create_app
from search_app.config import Settings
from search_app.ratelimit import RedisRateLimiter, RedisStreamCounter, redis_client
from tests.support.redis_server import redis_server


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


async def test_two_replicas_share_one_bucket(redis_url: str) -> None:
    a, b = redis_client(redis_url), redis_client(redis_url)
    first = RedisRateLimiter(a, per_minute=60, burst=2, prefix="t1")
    second = RedisRateLimiter(b, per_minute=60, burst=2, prefix="t1")
    assert await first.take("alice") == 0 and await second.take("alice") == 0
    wait = await first.take("alice")  # the bucket both replicas drew from is empty
    assert 0 < wait <= 1.0
    assert await second.take("bob") == 0  # another client, another bucket
    await asyncio.sleep(1.05)  # 60 per minute: one token per second
    assert await second.take("alice") == 0
    assert await RedisRateLimiter(a, 0, 1, prefix="t1").take("alice") == 0  # 0: no limit
    await a.aclose()
    await b.aclose()


async def test_answers_in_progress_count_across_replicas(redis_url: str) -> None:
    a, b = redis_client(redis_url), redis_client(redis_url)
    first = RedisStreamCounter(a, cap=2, prefix="s1")
    second = RedisStreamCounter(b, cap=2, prefix="s1")
    assert await first.open("alice", "one") and await second.open("alice", "two")
    assert not await first.open("alice", "three")
    assert await first.open("bob", "four")
    await second.close("alice", "one")  # closed on the other replica: still counts
    assert await first.open("alice", "three")
    stale = RedisStreamCounter(a, cap=1, ttl_s=1, prefix="s2")
    assert await stale.open("carol", "left-by-a-dead-replica")
    assert not await stale.open("carol", "next")
    await asyncio.sleep(2.1)  # a replica that died never closes: the entry expires
    assert await stale.open("carol", "next")
    await a.aclose()
    await b.aclose()


async def test_redis_down_lets_requests_through_quickly(caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    dead = redis_client(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    started = time.monotonic()
    assert await RedisRateLimiter(dead, 1, 1).take("x") == 0
    assert await RedisStreamCounter(dead, cap=1).open("x", "1")
    assert time.monotonic() - started < 3
    assert "limits are not enforced" in caplog.text
    await dead.aclose()


async def test_two_apps_count_one_client_together(redis_url: str, tmp_path: Path) -> None:
    """Two app instances with the same Redis and keys: the same key's third answer
    in a burst of two is refused by whichever replica gets it."""
    def app() -> httpx.AsyncClient:
        settings = Settings(api_keys=["shared-key-1"], data_dir=tmp_path, embedding_model="",
                            redis_url=redis_url, rate_limit_burst=2,
                            rate_limit_per_minute=1)
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(settings)),
                                 base_url="http://t")

    auth = {"Authorization": "Bearer shared-key-1"}
    async with app() as one, app() as two:
        codes = [(await c.post("/api/search", json={"query": "q"}, headers=auth)).status_code
                 for c in (one, two, one)]
    assert codes[:2] == [503, 503]  # past the limiter (nothing is loaded here)
    assert codes[2] == 429
