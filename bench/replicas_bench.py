"""Throughput of one app replica vs two behind nginx, on loopback with real processes.

One model server (``search-app serve-model``, llama.cpp), app replicas that reach it
through the upstream engine and share PostgreSQL and Redis, nginx in front; the same
concurrent clients ask questions for a fixed time against one replica, then two.
Here the model server is the bottleneck (every replica waits on the same llama.cpp
slots on the same 2 cores), so a second replica adds resilience, not answers per
second; on a GPU model server the app's own CPU (~80 ms per answer, bench/load_bench.py)
is what a second replica adds.

    python -m bench.replicas_bench --clients 8 --duration 60
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from bench.load_bench import QUESTIONS, Stream, one_stream, summarise
from bench.procs import free_port, serve_process
from bench.serving_bench import write_results

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
KEY = "bench-key-0001"


async def load(url: str, clients: int, duration_s: float) -> list[Stream]:
    deadline, done = time.monotonic() + duration_s, []
    limits = httpx.Limits(max_connections=None)

    async def client(i: int) -> None:
        async with httpx.AsyncClient(timeout=300, limits=limits,
                                     headers={"Authorization": f"Bearer {KEY}"}) as c:
            n = i
            while time.monotonic() < deadline:
                done.append(await one_stream(c, url, QUESTIONS[n % len(QUESTIONS)]))
                n += clients

    await asyncio.gather(*(client(i) for i in range(clients)))
    return done


def measure(clients: int, duration_s: float) -> dict[str, Any]:
    from tests.support.nginx import nginx_balancer
    from tests.support.postgres import postgres_server
    from tests.support.redis_server import redis_server

    logs = RESULTS / "logs"
    runs: dict[str, Any] = {}
    with ExitStack() as stack:
        store_url = stack.enter_context(postgres_server())
        redis_url = stack.enter_context(redis_server())
        model_port = free_port()
        model = stack.enter_context(serve_process(
            [sys.executable, "-m", "search_app.cli", "serve-model", "--host", "127.0.0.1",
             "--port", str(model_port), "--engine", "llamacpp", "--context-length", "2048",
             "--parallel", "4", "--embedding-model", ""],
            port=model_port, log_path=logs / "replicas_model.log", cwd=ROOT))
        env = {"SEARCH_APP_STORE_URL": store_url, "SEARCH_APP_REDIS_URL": redis_url,
               "SEARCH_APP_API_KEYS": KEY, "SEARCH_APP_RATE_LIMIT_PER_MINUTE": "0",
               "SEARCH_APP_MAX_STREAMS_PER_CLIENT": "0"}
        replicas = []
        for i in range(2):
            port = free_port()
            replicas.append(stack.enter_context(serve_process(
                [sys.executable, "-m", "search_app.cli", "serve", "--host", "127.0.0.1",
                 "--port", str(port), "--engine", "openai", "--upstream-url",
                 f"{model.url}/v1", "--provider", "local", "--log-level", "warning"],
                port=port, env=env, log_path=logs / f"replicas_app_{i}.log", cwd=ROOT,
                ready_timeout=300)))
        for replica in replicas:
            for _ in range(600):
                info = httpx.get(f"{replica.url}/api/info",
                                 headers={"Authorization": f"Bearer {KEY}"}).json()
                if info.get("state") == "ready":
                    break
                time.sleep(0.25)
        for n in (1, 2):
            with nginx_balancer([f"127.0.0.1:{r.port}" for r in replicas[:n]]) as url:
                started = time.perf_counter()
                streams = asyncio.run(load(url, clients, duration_s))
                wall = time.perf_counter() - started
            summary = summarise(streams, 0.0)
            runs[str(n)] = {"replicas": n, "wall_s": round(wall, 1),
                            "answers_per_min": round(summary["endings"].get("done", 0)
                                                     / wall * 60, 1), **summary}
    return {"machine": f"{platform.processor() or platform.machine()}, "
                       f"{os.cpu_count()} cores",
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "settings": {"clients": clients, "duration_s": duration_s},
            "loadavg_end": os.getloadavg(), "runs": runs}


def to_markdown(r: dict[str, Any]) -> str:
    lines = ["# One app replica vs two (nginx, PostgreSQL, Redis, one llama.cpp model "
             "server)", "",
             f"{r['machine']}; {r['when']}; {r['settings']['clients']} concurrent clients "
             f"for {r['settings']['duration_s']:g} s per run; SmolLM2-135M on llama.cpp "
             "(4 slots) behind the upstream engine.", "",
             "| replicas | answers | answers/min | ended done | error codes | protocol errors "
             "| first delta p50 / p99 ms | total p50 / p99 ms |",
             "|---|---|---|---|---|---|---|---|"]
    for run in r["runs"].values():
        lines.append(
            f"| {run['replicas']} | {run['streams']} | {run['answers_per_min']} | "
            f"{run['endings'].get('done', 0)} | {run['error_codes'] or '-'} | "
            f"{run['protocol_errors']} | "
            f"{run['first_delta_ms']['p50']} / {run['first_delta_ms']['p99']} | "
            f"{run['total_ms']['p50']} / {run['total_ms']['p99']} |")
    lines += ["", "The model server is the bottleneck: both replicas wait on the same "
              "llama.cpp slots on the same cores.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--out", default="replicas")
    args = parser.parse_args()
    result = measure(args.clients, args.duration)
    write_results(args.out, result, to_markdown(result))


if __name__ == "__main__":
    main()
