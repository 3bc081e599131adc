"""Answer-engine benchmark (issue 4): the real app, over HTTP, on this CPU.

    python -m bench.answer_bench                 # local index + loopback web, c=1 and c=8
    python -m bench.answer_bench --questions 8 --concurrency 1

Runs ``search-app serve`` as a subprocess (default local index in data/, the default
llama.cpp SmolLM2 model) and drives ``POST /api/search`` with httpx, parsing the SSE
stream. Per question it records, on the client clock from just before the request:

* ``sources_ms``: the ``sources`` event (search + read + rank + pack + HTTP);
* ``first_delta_ms``: the first ``delta`` event (the answer streams as it is written, so
  this is the first token, unless it opens a citation marker);
* the ``timings`` event: search_ms, read_ms, rank_ms, ttft_ms (the engine's time to first
  token, measured inside the pipeline from ``engine.generate`` to its first chunk, for
  the exact prompt the pipeline built), total_ms.

Pipeline overhead (issue 4) = first_delta_ms - timings.ttft_ms: everything the client
waits for that is not the engine producing its first token. (Before the pipeline
streamed tokens it sent a sentence at a time after a grounding check, so this included
the rest of the first sentence's generation; ``first_token_overhead_ms`` (= sources_ms,
the time before generation starts) is reported as well.) As an outside check, the same
passages are sent with the same template to the same server's ``/v1/chat/completions`` at the same
concurrency (``engine_http_ttft_ms``); llama.cpp serves that repeat from its prompt
cache, so it understates a cold TTFT (skip it with ``--no-engine-check``).

Two scenarios: ``local`` (the local index) and ``web`` (a SearXNG-shaped API on a
loopback server whose results point at HTML pages on that server, built from the local
index's passages for each question, so the reader really fetches and extracts pages;
the app's reader is allowed 127.0.0.1 with ``--fetch-allow``). Results go to
bench/results/answer.json and .md; docs/benchmarks.md summarises them.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.loadgen import percentile
from bench.procs import free_port, serve_process
from bench.serving_bench import machine, write_results

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]

# Answerable from the default Wikipedia corpus (checked with `search-app search`).
QUESTIONS = [
    "What is nuclear fission?", "Who was Adam Smith?", "What is the speed of sound?",
    "What is a lysosome?", "Who was Richard Nixon?", "What is the Code of Hammurabi?",
    "What was Mycenaean Greece?", "What is data compression?", "Who was M. C. Escher?",
    "What is the internal structure of the Earth?", "What was Babylonia?",
    "Who was Frederick Sanger?", "What is West Nile fever?", "What was the Mir space station?",
    "What is a launch vehicle?", "Where is the Great Victoria Desert?",
    "Who was Charles Baudelaire?", "What is Kabaddi?", "Who was Sukarno?",
    "What is a bumblebee?",
]
GOALS = {"sources_p50_ms": 300.0, "overhead_p50_ms": 400.0}


# --------------------------------------------------------------------- loopback web
class LoopbackPages:
    """SearXNG-shaped search + HTML pages on 127.0.0.1, all served from ``pages``.

    ``pages[question]`` is a list of (title, text); each becomes ``/page/<q>/<i>`` and a
    search result pointing at it. Filled in after the local run, read at request time."""

    def __init__(self) -> None:
        self.pages: dict[str, list[tuple[str, str]]] = {}
        self.port = 0

    def app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import HTMLResponse, JSONResponse, Response
        from starlette.routing import Route

        keys: list[str] = []

        async def search(request: Request) -> Response:
            query = request.query_params.get("q", "")
            hits = self.pages.get(query, [])
            if query not in keys:
                keys.append(query)
            q = keys.index(query)
            base = f"http://127.0.0.1:{self.port}"
            return JSONResponse({"query": query, "number_of_results": len(hits),
                                 "answers": [], "corrections": [], "infoboxes": [],
                                 "suggestions": [], "unresponsive_engines": [],
                                 "results": [{"url": f"{base}/page/{q}/{i}", "title": t,
                                              "content": " ".join(x.split()[:30]),
                                              "engine": "loopback", "score": 1.0,
                                              "category": "general"}
                                             for i, (t, x) in enumerate(hits)]})

        async def page(request: Request) -> Response:
            q, i = int(request.path_params["q"]), int(request.path_params["i"])
            title, text = self.pages[keys[q]][i]
            paras = "".join(f"<p>{html.escape(p)}</p>" for p in text.split("\n\n") if p)
            return HTMLResponse(f"<!doctype html><html><head><title>{html.escape(title)}"
                                f"</title></head><body><nav>Home | About</nav><article>"
                                f"<h1>{html.escape(title)}</h1>{paras}</article>"
                                f"<footer>loopback</footer></body></html>")

        return Starlette(routes=[Route("/search", search),
                                 Route("/page/{q:int}/{i:int}", page)])


@contextmanager
def serve_pages(pages: LoopbackPages) -> Iterator[LoopbackPages]:
    """uvicorn in a thread of this process (like tests/support/loopback_web.py): the page
    server shares the client's GIL, which adds a little to read_ms; noted in the report."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    pages.port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(pages.app(), log_level="warning", lifespan="off",
                                           access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield pages
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()


# --------------------------------------------------------------------------- client
async def ask(client: httpx.AsyncClient, url: str, question: str,
              provider: str, related: bool = True, grounding: str = "strict"
              ) -> dict[str, Any]:
    """One answer over SSE; client-side event times in ms from just before the request."""
    from search_app.prompts import ABSTAIN_TEXT

    out: dict[str, Any] = {"question": question, "provider": provider,
                           "grounding": grounding}
    event = ""
    t0 = time.perf_counter()
    async with client.stream("POST", f"{url}/api/search",
                             json={"query": question, "provider": provider,
                                   "related": related, "grounding": grounding},
                             headers={"X-Client-Id": "answer-bench"}) as resp:
        if resp.status_code != 200:
            out["error"] = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
            return out
        async for line in resp.aiter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                now = round((time.perf_counter() - t0) * 1000, 1)
                data = json.loads(line[5:])
                if event == "sources":
                    out["sources_ms"] = now
                    out["relevant"] = data["relevant"]
                    out["sources"] = [(s["number"], s["title"], s["passage"])
                                      for s in data["sources"] if s.get("passage")]
                    out["source_urls"] = [s["url"] for s in data["sources"]]
                elif event == "delta":
                    out.setdefault("first_delta_ms", now)
                    out.setdefault("first_delta_text", data["text"])
                    if grounding == "strict" and not data["text"].startswith(
                            ABSTAIN_TEXT[:40]):  # strict: every delta is a checked sentence
                        out.setdefault("first_supported_ms", now)
                elif event == "timings":
                    out["timings"] = data
                elif event in ("done", "error"):
                    out[event] = data
                    out["end_ms"] = now
    return out


async def engine_ttft(client: httpx.AsyncClient, url: str, model: str,
                      answer: dict[str, Any]) -> float | None:
    """The same passages, same template, same server, straight to the engine."""
    from search_app import prompts

    if not answer.get("sources"):
        return None
    context = prompts.format_context([tuple(s) for s in answer["sources"]])
    body = {"model": model, "messages": prompts.answer_messages(answer["question"], context,
                                                                []),
            "max_tokens": 8, "temperature": 0.0, "stream": True}
    t0 = time.perf_counter()
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
        async for line in resp.aiter_lines():
            if line.startswith("data:") and line[5:].strip() != "[DONE]":
                delta = json.loads(line[5:])["choices"][0]["delta"]
                if delta.get("content"):
                    return round((time.perf_counter() - t0) * 1000, 1)
    return None


async def gather_limited(n: int, jobs: list[Any]) -> list[Any]:
    sem = asyncio.Semaphore(n)

    async def one(job: Any) -> Any:
        async with sem:
            return await job

    return await asyncio.gather(*(one(j) for j in jobs))


async def run_scenario(url: str, questions: list[str], provider: str, concurrency: int,
                       model: str, engine_check: bool, related: bool = True,
                       grounding: str = "strict") -> dict[str, Any]:
    timeout = httpx.Timeout(300.0, connect=10.0)
    limits = httpx.Limits(max_connections=concurrency + 2)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        load0 = os.getloadavg()
        start = time.perf_counter()
        answers = await gather_limited(concurrency,
                                       [ask(client, url, q, provider, related,
                                            grounding) for q in questions])
        wall = time.perf_counter() - start
        if engine_check:
            ttfts = await gather_limited(concurrency, [engine_ttft(client, url, model, a)
                                                       for a in answers])
            for a, t in zip(answers, ttfts, strict=True):
                a["engine_http_ttft_ms"] = t
        load1 = os.getloadavg()
    return {"provider": provider, "concurrency": concurrency, "related": related,
            "grounding": grounding,
            "wall_s": round(wall, 2),
            "loadavg_start": load0, "loadavg_end": load1, "answers": answers,
            "summary": summarise(answers)}


def _p(values: list[float], q: float) -> float | None:
    return round(percentile(values, q), 1) if values else None


def summarise(answers: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [a for a in answers if "done" in a and a.get("first_delta_ms") is not None]
    series: dict[str, list[float]] = {k: [] for k in (
        "sources_ms", "first_delta_ms", "engine_first_token_ms", "search_ms", "read_ms",
        "rank_ms", "ttft_ms", "total_ms", "overhead_ms", "first_sentence_wait_ms",
        "engine_http_ttft_ms", "overhead_vs_http_ttft_ms", "first_supported_ms")}
    for a in ok:
        t = a.get("timings") or {}
        series["sources_ms"].append(a["sources_ms"])
        series["first_delta_ms"].append(a["first_delta_ms"])
        for k in ("search_ms", "read_ms", "rank_ms", "total_ms"):
            series[k].append(t[k])
        if t.get("ttft_ms") is not None:
            series["ttft_ms"].append(t["ttft_ms"])
            # Generation starts right after the sources event is sent.
            series["engine_first_token_ms"].append(a["sources_ms"] + t["ttft_ms"])
            series["overhead_ms"].append(a["first_delta_ms"] - t["ttft_ms"])
            series["first_sentence_wait_ms"].append(
                a["first_delta_ms"] - a["sources_ms"] - t["ttft_ms"])
        if a.get("first_supported_ms") is not None:
            series["first_supported_ms"].append(a["first_supported_ms"])
        if a.get("engine_http_ttft_ms") is not None:
            series["engine_http_ttft_ms"].append(a["engine_http_ttft_ms"])
            series["overhead_vs_http_ttft_ms"].append(
                a["first_delta_ms"] - a["engine_http_ttft_ms"])
    summary: dict[str, Any] = {"answers": len(answers), "ok": len(ok),
                               "errors": [a.get("error")
                                          for a in answers if a not in ok],
                               "abstained": sum(not a.get("relevant", True) for a in ok),
                               "withheld_sentences": sum(a["done"].get("withheld", 0)
                                                         for a in ok),
                               "all_withheld": sum(a.get("relevant", True)
                                                   and "first_supported_ms" not in a
                                                   and a.get("grounding") == "strict"
                                                   for a in ok)}
    for k, v in series.items():
        summary[k] = {"p50": _p(v, 50), "p95": _p(v, 95), "n": len(v)}
    return summary


# ------------------------------------------------------------------------------ main
def wait_for_answers(url: str, timeout_s: float = 300.0) -> None:
    """/health turns 200 when the model is up; the answer engine (ranker, index) loads
    after it and answers 503 until then, so poll /api/search itself."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with httpx.stream("POST", f"{url}/api/search", timeout=120,
                          json={"query": QUESTIONS[-1], "related": False}) as resp:
            if resp.status_code == 200:
                resp.read()
                return
        time.sleep(1)
    raise RuntimeError("the answer engine did not become ready")


def to_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = ["# Answer-engine benchmark", "",
             f"{m['cpu']}, {m['cores']} cores; {m['date']}; load average (1/5/15 min) "
             f"{result['loadavg_start']} at start, {result['loadavg_end']} at end (other "
             "work shared the machine). Model: the default llama.cpp SmolLM2-135M; "
             f"{result['settings']}.", "",
             "Client-side ms from the request. overhead = first delta - timings.ttft_ms "
             "(engine TTFT for the same prompt, measured in the pipeline). "
             "first-token overhead = sources (generation starts right after it).", "",
             "| scenario | grounding | conc. | ok | sources p50 | p95 | first delta p50 | "
             "p95 | engine TTFT p50 | p95 | overhead p50 | p95 | first-sentence wait p50 | "
             "HTTP engine TTFT p50 | total p50 | load start→end |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        s = r["summary"]
        lines.append(
            f"| {r['provider']} | {r.get('grounding', 'mark')} | {r['concurrency']} | "
            f"{s['ok']}/{s['answers']} | "
            f"{s['sources_ms']['p50']} | {s['sources_ms']['p95']} | "
            f"{s['first_delta_ms']['p50']} | {s['first_delta_ms']['p95']} | "
            f"{s['ttft_ms']['p50']} | {s['ttft_ms']['p95']} | {s['overhead_ms']['p50']} | "
            f"{s['overhead_ms']['p95']} | {s['first_sentence_wait_ms']['p50']} | "
            f"{s['engine_http_ttft_ms']['p50']} | {s['total_ms']['p50']} | "
            f"{r['loadavg_start'][0]:.1f}→{r['loadavg_end'][0]:.1f} |")
    lines += ["", "Per-stage breakdown (the `timings` event, server-side ms, p50 / p95):", "",
              "| scenario | conc. | search | read | rank | engine TTFT | total |",
              "|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        s = r["summary"]
        cells = " | ".join(f"{s[k]['p50']} / {s[k]['p95']}" for k in
                           ("search_ms", "read_ms", "rank_ms", "ttft_ms", "total_ms"))
        lines.append(f"| {r['provider']} | {r['concurrency']} | {cells} |")
    lines += ["", "Strict grounding (a sentence goes out only once checked): the first "
              "supported sentence, client-side ms from the request, and what was withheld:",
              "", "| scenario | conc. | first supported sentence p50 | p95 | n | "
              "withheld sentences | answers with every sentence withheld |",
              "|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        if r.get("grounding") == "strict":
            s = r["summary"]
            f = s["first_supported_ms"]
            lines.append(f"| {r['provider']} | {r['concurrency']} | {f['p50']} | {f['p95']} "
                         f"| {f['n']} | {s['withheld_sentences']} | {s['all_withheld']} |")
    lines += ["", "Goals (p50): sources <= 300 ms, overhead <= 400 ms.", ""]
    for r in result["runs"]:
        s = r["summary"]
        src, ovh = s["sources_ms"]["p50"], s["overhead_ms"]["p50"]
        lines.append(f"- {r['provider']} c={r['concurrency']}: sources {src} ms "
                     f"({'met' if src is not None and src <= 300 else 'missed'}), "
                     f"overhead {ovh} ms "
                     f"({'met' if ovh is not None and ovh <= 400 else 'missed'})")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--scenarios", nargs="+", default=["local", "web"],
                        choices=["local", "web"])
    parser.add_argument("--no-engine-check", action="store_true",
                        help="skip the /v1/chat/completions TTFT check")
    parser.add_argument("--no-related", action="store_true",
                        help="ask without related questions (they share the engine with "
                             "the answer; this isolates their cost)")
    parser.add_argument("--grounding", nargs="+", default=["strict"],
                        choices=["strict", "mark", "off"],
                        help="grounding policies to run (each a run per scenario and "
                             "concurrency)")
    parser.add_argument("--serve-arg", dest="serve_args", action="append", default=[],
                        help="extra flag for the app, repeatable "
                             "(--serve-arg=--answer-context-tokens=300)")
    parser.add_argument("--out", default="answer", help="results file stem")
    args = parser.parse_args()
    questions = QUESTIONS[: args.questions]
    pages = LoopbackPages()
    runs: list[dict[str, Any]] = []
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, serve_pages(pages):
        port = free_port()
        cmd = [sys.executable, "-m", "search_app.cli", "serve", "--host", "127.0.0.1",
               "--port", str(port), "--provider", "local,searxng",
               "--searxng-url", f"http://127.0.0.1:{pages.port}",
               "--fetch-allow", "127.0.0.1/32", "--store-path", f"{tmp}/store.sqlite",
               "--log-level", "warning", *args.serve_args]
        with serve_process(cmd, port=port, log_path=RESULTS / "logs" / "answer_app.log",
                           cwd=ROOT, ready_timeout=300) as server:
            model = httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"]
            wait_for_answers(server.url)
            # Warm-up: the ranker, the engine and the page reader, each once.
            warm = asyncio.run(run_scenario(server.url, QUESTIONS[-2:], "local", 1, model,
                                            False))
            for a in warm["answers"]:
                pages.pages[a["question"]] = [(t, x) for _, t, x in a.get("sources", [])]
            asyncio.run(run_scenario(server.url, QUESTIONS[-2:], "searxng", 1, model, False))
            for scenario in args.scenarios:
                provider = "local" if scenario == "local" else "searxng"
                if provider == "searxng":
                    missing = [q for q in questions if q not in pages.pages]
                    got = asyncio.run(run_scenario(server.url, missing, "local", 2, model,
                                                   False)) if missing else {"answers": []}
                    for a in got["answers"]:
                        pages.pages[a["question"]] = [(t, x) for _, t, x in
                                                      a.get("sources", [])]
                for c, grounding in ((c, g) for c in args.concurrency
                                     for g in args.grounding):
                    run = asyncio.run(run_scenario(server.url, questions, provider, c, model,
                                                   not args.no_engine_check,
                                                   not args.no_related, grounding))
                    run["scenario"] = scenario
                    if provider == "local":
                        for a in run["answers"]:
                            pages.pages[a["question"]] = [(t, x) for _, t, x in
                                                          a.get("sources", [])]
                    runs.append(run)
                    print(json.dumps({k: run[k] for k in ("provider", "concurrency",
                                                          "grounding", "wall_s")}
                                     | {"sources_p50": run["summary"]["sources_ms"]["p50"],
                                        "overhead_p50": run["summary"]["overhead_ms"]["p50"],
                                        "ok": run["summary"]["ok"]}), flush=True)
    result = {"machine": machine(), "loadavg_start": [round(x, 2) for x in load_start],
              "loadavg_end": [round(x, 2) for x in os.getloadavg()],
              "settings": {"questions": len(questions), "concurrency": args.concurrency,
                           "scenarios": args.scenarios,
                           "related": not args.no_related, "grounding": args.grounding,
                           "serve_args": args.serve_args,
                           "engine_check": not args.no_engine_check},
              "goals": GOALS, "runs": runs}
    write_results(args.out, result, to_markdown(result))


if __name__ == "__main__":
    main()
