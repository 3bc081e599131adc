"""Fixtures of the provider tests: the recorded-shape mock APIs on a real loopback server
(one per module) and a shared httpx client, as the app shares one."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.support.loopback_web import LoopbackWeb, serve_loopback_web


@pytest.fixture(scope="module")
def web() -> Iterator[LoopbackWeb]:
    with serve_loopback_web() as server:
        yield server


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as shared:
        yield shared
