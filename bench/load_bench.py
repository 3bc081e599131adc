"""Correctness under load: many concurrent ``/api/search`` streams for a fixed time.

The app runs with the upstream engine pointed at ``bench/fixed_rate_upstream.py`` (a
model that streams at a known, fixed rate and costs no CPU), the default local index,
rate limits and stream caps off. Every stream is parsed as it arrives; the result says
whether each one ended cleanly (``done``, or an ``error`` event / a JSON HTTP error),
counts protocol errors (a malformed event, a stream that stops without done or error,
a dropped connection), and gives the app's resident memory before, after and after a
rest, and what the app adds to the model's own time (p50 / p99).

    python -m bench.load_bench --streams 200 --duration 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.loadgen import percentile
from bench.procs import free_port, serve_process
from bench.serving_bench import write_results

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
QUESTIONS = ["Who designed the Eiffel Tower?", "What is bronze made of?",
             "Where is Timbuktu?", "Who was Zheng He?", "How does photosynthesis work?",
             "What is a volcano?", "Who painted the Mona Lisa?", "What is the Nile?",
             "Who was Ada Lovelace?", "What is a glacier?", "Where is Mount Everest?",
             "What is jazz?"]


@dataclass
class Stream:
    status: int = 0
    events: list[str] = field(default_factory=list)
    first_delta_ms: float | None = None
    sources_ms: float | None = None
    total_ms: float = 0.0
    ending: str = "none"            # done | error | http_error | dropped | truncated
    error_code: str | None = None   # the error event's code, or the HTTP error's type
    problem: str | None = None      # a protocol error, described

    @property
    def clean(self) -> bool:
        return self.problem is None and self.ending in ("done", "error", "http_error")


async def one_stream(client: httpx.AsyncClient, url: str, question: str) -> Stream:
    out, started = Stream(), time.perf_counter()
    try:
        async with client.stream("POST", f"{url}/api/search",
                                 json={"query": question, "related": False}) as r:
            out.status = r.status_code
            if r.status_code != 200:
                body = await r.aread()
                try:
                    out.error_code = str(json.loads(body)["error"]["type"])
                    out.ending = "http_error"
                except (ValueError, KeyError, TypeError):
                    out.problem = f"HTTP {r.status_code} without a JSON error body"
                return out
            name: str | None = None
            async for line in r.aiter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: ") and name:
                    try:
                        data = json.loads(line[6:])
                    except ValueError:
                        out.problem = f"malformed {name} event"
                        data = {}
                    if name == "error":
                        out.error_code = str(data.get("code"))
                    out.events.append(name)
                    ms = (time.perf_counter() - started) * 1000
                    if name == "sources" and out.sources_ms is None:
                        out.sources_ms = ms
                    if name == "delta" and out.first_delta_ms is None:
                        out.first_delta_ms = ms
                    if name in ("done", "error"):
                        out.ending = name
                    name = None
            if out.ending == "none":
                out.ending, out.problem = "truncated", "the stream ended without done/error"
            elif out.events[-1] not in ("done", "error"):
                out.problem = f"events after the end: {out.events[-3:]}"
    except httpx.HTTPError as exc:
        out.ending, out.problem = "dropped", f"{type(exc).__name__}"
    finally:
        out.total_ms = (time.perf_counter() - started) * 1000
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run_load(url: str, streams: int, duration_s: float) -> list[Stream]:
    """``streams`` clients, each asking one question after another until the time is up."""
    deadline = time.monotonic() + duration_s
    done: list[Stream] = []
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=streams)

    async def client_loop(seed: int) -> None:
        rng = random.Random(seed)
        async with httpx.AsyncClient(timeout=httpx.Timeout(120.0), limits=limits) as client:
            while time.monotonic() < deadline:
                done.append(await one_stream(client, url, rng.choice(QUESTIONS)))

    await asyncio.gather(*(client_loop(i) for i in range(streams)))
    return done


def summarise(streams: list[Stream], model_ms: float) -> dict[str, Any]:
    def p(values: list[float], q: float) -> float | None:
        return round(percentile(values, q), 1) if values else None

    ok = [s for s in streams if s.ending == "done"]
    firsts = [s.first_delta_ms for s in ok if s.first_delta_ms is not None]
    added_total = [s.total_ms - model_ms for s in ok if "delta" in s.events]
    endings: dict[str, int] = {}
    for s in streams:
        endings[s.ending] = endings.get(s.ending, 0) + 1
    errors: dict[str, int] = {}
    codes: dict[str, int] = {}
    for s in streams:
        if s.problem:
            errors[s.problem] = errors.get(s.problem, 0) + 1
        if s.error_code:
            codes[s.error_code] = codes.get(s.error_code, 0) + 1
    return {
        "streams": len(streams), "clean": sum(s.clean for s in streams),
        "protocol_errors": sum(1 for s in streams if s.problem), "problems": errors,
        "endings": endings, "error_codes": codes,
        "http_statuses": sorted({s.status for s in streams}),
        "sources_ms": {"p50": p([s.sources_ms for s in ok if s.sources_ms], 50),
                       "p99": p([s.sources_ms for s in ok if s.sources_ms], 99)},
        "first_delta_ms": {"p50": p(firsts, 50), "p99": p(firsts, 99)},
        "total_ms": {"p50": p([s.total_ms for s in ok], 50),
                     "p99": p([s.total_ms for s in ok], 99)},
        "added_total_ms": {"p50": p(added_total, 50), "p99": p(added_total, 99)},
    }


def measure(streams: int, duration_s: float, *, rate: float = 20.0, tokens: int = 40,
            ttft_ms: float = 100.0, grounding: str = "mark",
            log_dir: Path = RESULTS / "logs") -> dict[str, Any]:
    """Start the fixed-rate model and the app, load it, and return the figures."""
    model_ms = ttft_ms + (tokens - 1) * 1000 / rate
    up_port, app_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="load-bench-") as tmp, serve_process(
            [sys.executable, "-m", "bench.fixed_rate_upstream", "--port", str(up_port),
             "--rate", str(rate), "--tokens", str(tokens), "--ttft-ms", str(ttft_ms)],
            port=up_port, ready_path="/v1/models", log_path=log_dir / "load_upstream.log",
            cwd=ROOT) as upstream, serve_process(
            [sys.executable, "-m", "search_app.cli", "serve", "--host", "127.0.0.1",
             "--port", str(app_port), "--engine", "openai",
             "--upstream-url", f"{upstream.url}/v1", "--provider", "local",
             "--rate-limit-per-minute", "0", "--max-streams-per-client", "0",
             "--grounding", grounding, "--store-path", f"{tmp}/store.sqlite",
             "--log-level", "warning"],
            port=app_port, log_path=log_dir / "load_app.log", cwd=ROOT,
            ready_timeout=300) as app:
        for _ in range(600):
            if httpx.get(f"{app.url}/api/info").json()["state"] == "ready":
                break
            time.sleep(0.25)
        for question in QUESTIONS:  # warm: embeddings of these passages are cached
            httpx.post(f"{app.url}/api/search", json={"query": question, "related": False},
                       timeout=120)
        pid = app.process.pid
        rss_before = rss_mb(pid)
        load_start = os.getloadavg()
        started = time.perf_counter()
        result = asyncio.run(run_load(app.url, streams, duration_s))
        wall_s = time.perf_counter() - started
        rss_after = rss_mb(pid)
        time.sleep(5)
        rss_rest = rss_mb(pid)
        active_after = httpx.get(f"{upstream.url}/active").json()["active"]
    summary = summarise(result, model_ms)
    return {"machine": f"{platform.processor() or platform.machine()}, "
                       f"{os.cpu_count()} cores",
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "settings": {"streams": streams, "duration_s": duration_s, "rate": rate,
                         "tokens": tokens, "ttft_ms": ttft_ms, "grounding": grounding,
                         "model_ms": model_ms},
            "wall_s": round(wall_s, 1), "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(), "answers_per_s": round(len(result) / wall_s, 2),
            "rss_mb": {"before": round(rss_before, 1), "after": round(rss_after, 1),
                       "after_rest": round(rss_rest, 1)},
            "upstream_streams_left_open": active_after, **summary,
            "samples": [asdict(s) | {"events": len(s.events)} for s in result[:20]]}


def to_markdown(r: dict[str, Any]) -> str:
    s = r["settings"]
    return "\n".join([
        "# Load: concurrent /api/search streams", "",
        f"{r['machine']}; {r['when']}; load average {r['loadavg_start']} -> "
        f"{r['loadavg_end']}. The app (upstream engine, local index, `--grounding "
        f"{s['grounding']}`, rate limits off) in front of `bench/fixed_rate_upstream.py`: "
        f"first token after {s['ttft_ms']:g} ms, then {s['rate']:g} tokens/s, "
        f"{s['tokens']} tokens (the model's own time: {s['model_ms']:.0f} ms per answer).",
        "",
        "| streams | seconds | answers | answers/s | clean endings | protocol errors | "
        "endings | RSS MB before / after / after 5 s rest | upstream streams left open |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {s['streams']} | {r['wall_s']} | {r['streams']} | {r['answers_per_s']} | "
        f"{r['clean']} | {r['protocol_errors']} | {r['endings']} | "
        f"{r['rss_mb']['before']} / {r['rss_mb']['after']} / {r['rss_mb']['after_rest']} | "
        f"{r['upstream_streams_left_open']} |", "",
        "Latency of finished answers, client-side ms (added = total - the model's own time):",
        "",
        "| sources p50 / p99 | first delta p50 / p99 | total p50 / p99 | added p50 / p99 |",
        "|---|---|---|---|",
        f"| {r['sources_ms']['p50']} / {r['sources_ms']['p99']} | "
        f"{r['first_delta_ms']['p50']} / {r['first_delta_ms']['p99']} | "
        f"{r['total_ms']['p50']} / {r['total_ms']['p99']} | "
        f"{r['added_total_ms']['p50']} / {r['added_total_ms']['p99']} |", "",
        f"Problems: {r['problems'] or 'none'}.", ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--ttft-ms", type=float, default=100.0)
    parser.add_argument("--grounding", default="mark", choices=["strict", "mark", "off"])
    parser.add_argument("--out", default="load")
    args = parser.parse_args()
    result = measure(args.streams, args.duration, rate=args.rate, tokens=args.tokens,
                     ttft_ms=args.ttft_ms, grounding=args.grounding)
    write_results(args.out, result, to_markdown(result))


if __name__ == "__main__":
    main()
