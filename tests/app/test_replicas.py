"""Scale-out on loopback: one model server, two app replicas sharing PostgreSQL and
Redis, and nginx balancing them, all real processes. Answers stream through nginx;
what one replica stores the other serves; a rate limit counts across replicas; a
replica killed under load fails only its own streams, and nothing stored is lost."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from tests.app.support import parse_sse
from tests.conftest import API_KEY, needs_llama_cpp
from tests.support.nginx import nginx_balancer
from tests.support.postgres import postgres_server
from tests.support.redis_server import redis_server
from tests.support.server import ROOT, ServerProcess, run_server

pytestmark = [needs_llama_cpp, pytest.mark.llamacpp, pytest.mark.slow,
              pytest.mark.skipif(not (ROOT / "data/index/snapshot/snapshot.json").is_file(),
                                 reason="the default local index is not built")]
KEY, LIMITED = "replica-key-0001", "limited-key-0002"
AUTH = {"Authorization": f"Bearer {KEY}"}
QUESTION = "Who designed the Eiffel Tower?"


class Cluster:
    def __init__(self, replicas: list[ServerProcess], balancer: str) -> None:
        self.replicas, self.balancer = replicas, balancer


@pytest.fixture(scope="module")
def cluster(llama_server: ServerProcess, artifacts_dir: Path) -> Iterator[Cluster]:
    with ExitStack() as stack:
        store_url = stack.enter_context(postgres_server())
        redis_url = stack.enter_context(redis_server())
        env = {"SEARCH_APP_UPSTREAM_API_KEY": API_KEY, "SEARCH_APP_STORE_URL": store_url,
               "SEARCH_APP_REDIS_URL": redis_url, "SEARCH_APP_API_KEYS": f"{KEY},{LIMITED}",
               "SEARCH_APP_RATE_LIMIT_BURST": "12", "SEARCH_APP_RATE_LIMIT_PER_MINUTE": "2"}
        replicas = [stack.enter_context(run_server(
            ["serve", "--engine", "openai", "--upstream-url", f"{llama_server.url}/v1",
             "--provider", "local", "--answer-max-tokens", "64"], env=env,
            log_path=artifacts_dir / f"replica_{i}.log")) for i in range(2)]
        for replica in replicas:
            for _ in range(240):
                if httpx.get(f"{replica.url}/api/info", headers=AUTH).json().get(
                        "state") == "ready":
                    break
                time.sleep(0.25)
        balancer = stack.enter_context(nginx_balancer(
            [f"127.0.0.1:{r.port}" for r in replicas]))
        yield Cluster(replicas, balancer)


def ask(url: str, **body: object) -> list[tuple[str, dict]]:
    r = httpx.post(f"{url}/api/search", json={"query": QUESTION, "related": False, **body},
                   headers=AUTH, timeout=120)
    assert r.status_code == 200, r.text
    return parse_sse(r.text)


def test_answers_stream_through_the_balancer(cluster: Cluster) -> None:
    arrivals: list[tuple[str, float]] = []
    started = time.monotonic()
    with httpx.stream("POST", f"{cluster.balancer}/api/search", headers=AUTH, timeout=120,
                      json={"query": QUESTION, "related": False}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event: "):
                arrivals.append((line[7:], time.monotonic() - started))
    names = [n for n, _ in arrivals]
    assert names[0] == "search" and names[-1] == "done", names
    first, done = arrivals[0][1], arrivals[-1][1]
    # Not buffered until the end: the first event arrived long before the last (a
    # buffering proxy delivers them all within milliseconds of each other).
    assert first < done / 2 and done - first > 0.1, arrivals


def test_what_one_replica_stores_the_other_serves(cluster: Cluster) -> None:
    first, second = (r.url for r in cluster.replicas)
    events = ask(first)
    assert events[-1][0] == "done"
    search_id, thread_id = events[0][1]["search_id"], events[0][1]["thread_id"]
    shared = httpx.get(f"{second}/api/search/{search_id}", headers=AUTH)
    assert shared.status_code == 200 and shared.json()["query"] == QUESTION
    assert httpx.get(f"{second}/s/{search_id}").status_code == 200  # the share page
    follow = ask(second, query="When was it built?", thread_id=thread_id)
    assert follow[-1][0] == "done"
    thread = httpx.get(f"{first}/api/threads/{thread_id}", headers=AUTH).json()
    assert [a["query"] for a in thread["answers"]] == [QUESTION, "When was it built?"]


def test_a_rate_limit_counts_across_replicas(cluster: Cluster) -> None:
    """Burst 12 per key: twelve requests pass the limiter (empty questions, a 400 each,
    so no model time is spent), the thirteenth is refused, whichever replica gets it
    (each replica alone would have let 12 through)."""
    codes = []
    for i in range(13):
        target = cluster.replicas[i % 2].url  # alternate, as the balancer would
        r = httpx.post(f"{target}/api/search", json={"query": " "}, timeout=30,
                       headers={"Authorization": f"Bearer {LIMITED}"})
        codes.append(r.status_code)
    assert codes == [400] * 12 + [429], codes


def test_a_killed_replica_fails_only_its_streams_and_loses_nothing(cluster: Cluster) -> None:
    victim = cluster.replicas[0]
    results: list[dict[str, object]] = []

    async def stream(http: httpx.AsyncClient) -> None:
        out: dict[str, object] = {"events": []}
        try:
            async with http.stream("POST", f"{cluster.balancer}/api/search", headers=AUTH,
                                   json={"query": QUESTION, "related": False}) as r:
                name = None
                async for line in r.aiter_lines():
                    if line.startswith("event: "):
                        name = line[7:]
                    elif line.startswith("data: ") and name:
                        data = json.loads(line[6:])  # never a malformed event
                        out["events"].append(name)  # type: ignore[union-attr]
                        if name == "search":
                            out["search_id"] = data["search_id"]
        except httpx.HTTPError as exc:
            out["dropped"] = type(exc).__name__
        results.append(out)

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=120) as http:
            tasks = [asyncio.create_task(stream(http)) for _ in range(4)]
            await asyncio.sleep(1.5)  # all four are in flight, on both replicas
            os.kill(victim.process.pid, signal.SIGKILL)
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=150)

    asyncio.run(scenario())
    victim.process.wait(timeout=10)
    finished = [r for r in results if r["events"] and r["events"][-1] == "done"]  # type: ignore[index]
    cut = [r for r in results if r not in finished]
    assert finished, results  # the survivor's streams completed
    assert cut, results  # round robin put some on the victim, mid-answer when it died
    for r in cut:  # the victim's ended early: cut, never garbled or hung
        assert "done" not in r["events"]  # type: ignore[operator]
    after = [ask(cluster.balancer)[-1][0] for _ in range(3)]  # new requests: the survivor
    assert after == ["done"] * 3
    survivor = cluster.replicas[1].url
    for r in finished:  # everything whose done went out is stored
        assert httpx.get(f"{survivor}/api/search/{r['search_id']}",
                         headers=AUTH).status_code == 200
