"""The cost of the engine-process boundary: llama.cpp in its child process vs in-process.

    python -m bench.engine_boundary_bench --rounds 8       # ~5 min on 2 cores
    python -m bench.engine_boundary_bench --engines in-process,extra-bufts-off \
        --out engine_amx_guard                             # what the AMX guard costs

Both engines load the same GGUF with the same options in this one Python process and
run the same prompts through the same :class:`~serving.engines.base.Engine` interface,
in alternating rounds (A B, B A, ...) so that outside load hits both alike. Measured
per request: TTFT (request -> first chunk with text) and decode rate; per round: c=1
tokens/s over the prompts one after another, and c=4 tokens/s with four at a time.
Goals (issue 10): c=1 tokens/s >= 0.97x and TTFT p50 within +5 ms of in-process; c=4
unchanged. ``extra-bufts-off`` is llama.cpp with its extra buffer types off: what the
run-time AMX crash guard costs where it has to act (it also drops the repacked fast
path). Results: bench/results/<out>.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import statistics
import time
from typing import Any

from bench.loadgen import percentile
from bench.serving_bench import chat_prompts, machine, rag_prompts, write_results
from serving.engines import Engine, GenerationRequest, LlamaCppOptions, SamplingOptions
from serving.engines.cpu_features import report

_ids = itertools.count(1)


async def one(engine: Engine, messages: list[dict[str, str]], max_tokens: int
              ) -> tuple[float, int, float]:
    """(TTFT s, completion tokens, wall s) of one greedy request."""
    request = GenerationRequest(f"bench-{next(_ids)}", SamplingOptions(
        max_tokens=max_tokens, temperature=0.0, ignore_eos=True), messages=messages)
    t0 = time.perf_counter()
    ttft, tokens = None, 0
    async for chunk in engine.generate(request):
        if ttft is None and chunk.text:
            ttft = time.perf_counter() - t0
        tokens = chunk.completion_tokens
    return (ttft or 0.0), tokens, time.perf_counter() - t0


async def run_c1(engine: Engine, prompts: list[list[dict[str, str]]], max_tokens: int
                 ) -> dict[str, Any]:
    start, ttfts, tokens = time.perf_counter(), [], 0
    for messages in prompts:
        ttft, n, _ = await one(engine, messages, max_tokens)
        ttfts.append(ttft)
        tokens += n
    wall = time.perf_counter() - start
    return {"tok_s": tokens / wall, "ttfts_ms": [t * 1000 for t in ttfts]}


async def run_c4(engine: Engine, prompts: list[list[dict[str, str]]], max_tokens: int
                 ) -> dict[str, Any]:
    sem = asyncio.Semaphore(4)

    async def limited(messages: list[dict[str, str]]) -> tuple[float, int, float]:
        async with sem:
            return await one(engine, messages, max_tokens)

    start = time.perf_counter()
    results = await asyncio.gather(*(limited(m) for m in prompts))
    wall = time.perf_counter() - start
    return {"tok_s": sum(n for _, n, _ in results) / wall,
            "ttfts_ms": [t * 1000 for t, _, _ in results]}


async def build(kind: str, options: LlamaCppOptions) -> Engine:
    if kind == "process":
        from serving.engines.options import ProcessOptions
        from serving.engines.process import ProcessEngine

        return await ProcessEngine.create(options, ProcessOptions())
    from serving.engines import llamacpp
    from serving.engines.llamacpp import LlamaCppEngine

    if kind == "extra-bufts-off":  # what the AMX guard does where it must act
        real = llamacpp.cpu_report
        llamacpp.cpu_report = lambda allow: report(  # type: ignore[assignment]
            allow, flags=frozenset({"amx_int8"}), build={"AMX_INT8": "1"})
        try:
            return await LlamaCppEngine.create(options)
        finally:
            llamacpp.cpu_report = real  # type: ignore[assignment]
    return await LlamaCppEngine.create(options)


def summarise(kind: str, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"engine": kind}
    for scenario in ("chat_c1", "rag_c1", "chat_c4"):
        rates = [r[scenario]["tok_s"] for r in rounds]
        ttfts = [t for r in rounds for t in r[scenario]["ttfts_ms"]]
        out[scenario] = {"tok_s_mean": round(statistics.mean(rates), 2),
                         "tok_s_runs": [round(x, 2) for x in rates],
                         "ttft_p50_ms": round(percentile(ttfts, 50), 2),
                         "ttft_p99_ms": round(percentile(ttfts, 99), 2)}
    return out


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    options = LlamaCppOptions(context_length=args.n_ctx, parallel=4)
    kinds = args.engines.split(",")
    engines: dict[str, Engine] = {}
    load_before = os.getloadavg()
    async with contextlib.AsyncExitStack() as stack:
        for kind in kinds:
            engines[kind] = await build(kind, options)
            stack.push_async_callback(engines[kind].aclose)
        chat, rag = chat_prompts(args.requests), rag_prompts(args.requests)
        for engine in engines.values():  # warm both: first-use costs are not the boundary
            await one(engine, chat[0], 4)
            await one(engine, rag[0], 4)
        rounds: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
        for r in range(args.rounds):
            order = kinds if r % 2 == 0 else list(reversed(kinds))
            for kind in order:
                engine = engines[kind]
                rounds[kind].append({
                    "chat_c1": await run_c1(engine, chat, args.max_tokens),
                    "rag_c1": await run_c1(engine, rag, args.max_tokens),
                    "chat_c4": await run_c4(engine, chat, args.max_tokens)})
                print(f"round {r + 1} {kind}: " + ", ".join(
                    f"{s} {rounds[kind][-1][s]['tok_s']:.1f} tok/s"
                    for s in ("chat_c1", "rag_c1", "chat_c4")), flush=True)
    rows = [summarise(k, rounds[k]) for k in kinds]
    verdicts = {k: compare(rounds[kinds[0]], rounds[k]) for k in kinds[1:]}
    return {"suite": "engine_boundary", "machine": machine(),
            "llama_cpp": report(False).summary(),
            "load_avg_before_after": [round(load_before[0], 2),
                                      round(os.getloadavg()[0], 2)],
            "settings": {"rounds": args.rounds, "requests": args.requests,
                         "max_tokens": args.max_tokens, "n_ctx": args.n_ctx,
                         "engines": kinds},
            "rows": rows, "versus_" + kinds[0]: verdicts}


def compare(base: list[dict[str, Any]], other: list[dict[str, Any]]) -> dict[str, Any]:
    """Ratios paired by round (the two ran back to back, under the same outside load):
    their median is steadier than a ratio of means on a shared machine."""
    out: dict[str, Any] = {}
    for scenario in ("chat_c1", "rag_c1", "chat_c4"):
        ratios = [o[scenario]["tok_s"] / b[scenario]["tok_s"]
                  for b, o in zip(base, other, strict=True)]
        out[f"{scenario}_ratio_median"] = round(statistics.median(ratios), 3)
        out[f"{scenario}_ratio_mean"] = round(statistics.mean(ratios), 3)
        b_ttft = [t for r in base for t in r[scenario]["ttfts_ms"]]
        o_ttft = [t for r in other for t in r[scenario]["ttfts_ms"]]
        out[f"{scenario}_ttft_p50_delta_ms"] = round(percentile(o_ttft, 50)
                                                     - percentile(b_ttft, 50), 2)
    return out


def to_markdown(result: dict[str, Any]) -> str:
    m, kinds = result["machine"], result["settings"]["engines"]
    lines = [f"# Engine boundary: {', '.join(kinds[1:])} vs {kinds[0]} (llama.cpp)", "",
             f"{m['cpu']}, {m['cores']} cores; {m['date']}; load avg before/after "
             f"{result['load_avg_before_after']}; settings {result['settings']}.", "",
             f"{result['llama_cpp']}", "",
             "| engine | scenario | tok/s (mean of rounds) | per round | TTFT p50 ms | "
             "TTFT p99 ms |", "|---|---|---|---|---|---|"]
    for row in result["rows"]:
        for scenario in ("chat_c1", "rag_c1", "chat_c4"):
            s = row[scenario]
            lines.append(f"| {row['engine']} | {scenario} | {s['tok_s_mean']} | "
                         f"{s['tok_s_runs']} | {s['ttft_p50_ms']} | {s['ttft_p99_ms']} |")
    lines += ["", f"Versus {kinds[0]}, tok/s ratios paired by round (median / mean) and "
              "TTFT p50 difference:", "",
              "| engine | chat c=1 | RAG c=1 | chat c=4 | TTFT chat | TTFT RAG |",
              "|---|---|---|---|---|---|"]
    for kind, v in result["versus_" + kinds[0]].items():
        lines.append(
            f"| {kind} | {v['chat_c1_ratio_median']} / {v['chat_c1_ratio_mean']} | "
            f"{v['rag_c1_ratio_median']} / {v['rag_c1_ratio_mean']} | "
            f"{v['chat_c4_ratio_median']} / {v['chat_c4_ratio_mean']} | "
            f"{v['chat_c1_ttft_p50_delta_ms']:+} ms | {v['rag_c1_ttft_p50_delta_ms']:+} ms |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--engines", default="in-process,process",
                        help="comma-separated, the first is the baseline: in-process, "
                             "process, extra-bufts-off (in-process with llama.cpp's extra "
                             "buffer types off, as the AMX guard does)")
    parser.add_argument("--out", default="engine_boundary")
    args = parser.parse_args()
    result = asyncio.run(bench(args))
    write_results(args.out, result, to_markdown(result))


if __name__ == "__main__":
    main()
