"""Serving benchmark: our server next to its peers, same model, same prompts, one run.

    python -m bench.serving_bench llamacpp   # ours vs llama_cpp.server vs in-process
    python -m bench.serving_bench vllm --model DIR   # ours (vLLM engine) vs vLLM's server

Servers run one at a time (this machine has 2 cores). Results go to
bench/results/serving_<suite>.json and .md; docs/benchmarks.md summarises them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from bench.loadgen import LoadResult, percentile, run_load
from bench.procs import free_port, serve_process

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]

QUESTIONS = [
    "Explain what a search engine index is.", "Why is the sky blue?",
    "Give three tips for writing clear emails.", "What does a compiler do?",
    "Describe how rain forms.", "What is the purpose of a database?",
    "How do vaccines work?", "Summarise the water cycle.",
    "What is machine learning?", "Why do we have seasons?",
    "How does a bicycle stay upright?", "What is photosynthesis?",
    "Explain the idea of supply and demand.", "What is an operating system?",
    "How do bees make honey?", "What causes tides?",
]

SOURCES = """[citation:1] The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in
Paris, France. It is named after the engineer Gustave Eiffel, whose company designed and
built the tower from 1887 to 1889 as the centerpiece of the 1889 World's Fair.
[citation:2] The tower is 330 metres tall, about the same height as an 81-storey building,
and the tallest structure in Paris. Its base is square, measuring 125 metres on each side.
[citation:3] The tower has three levels for visitors, with restaurants on the first and
second levels. The top level's upper platform is 276 m above the ground."""

RAG_QUESTIONS = [
    "Who designed the Eiffel Tower and when was it built?", "How tall is the Eiffel Tower?",
    "What is on the levels of the Eiffel Tower?", "How wide is the base of the tower?",
]


def chat_prompts(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}] for i in range(n)]


def rag_prompts(n: int) -> list[list[dict[str, str]]]:
    system = ("Answer the question using only the sources below, quoting them, and cite "
              "them as [citation:N].\n\n" + SOURCES)
    return [[{"role": "system", "content": system},
             {"role": "user", "content": RAG_QUESTIONS[i % len(RAG_QUESTIONS)]}]
            for i in range(n)]


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M")}


def ours(port: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "search_app.cli", "serve-model", "--host", "127.0.0.1",
            "--port", str(port), "--embedding-model", "", *args]


def in_process_llamacpp(model_path: str, prompts: list[list[dict[str, str]]],
                        max_tokens: int, n_ctx: int) -> LoadResult:
    """llama.cpp called directly, no server: the floor every server is measured against."""
    from llama_cpp import Llama

    llm = Llama(model_path=model_path, n_ctx=n_ctx, n_threads=os.cpu_count(), verbose=False)
    ttfts, gaps, tokens = [], [], 0
    start = time.perf_counter()
    for messages in prompts:
        t0 = last = time.perf_counter()
        first = True
        for chunk in llm.create_chat_completion(messages=messages, max_tokens=max_tokens,
                                                temperature=0.0, stream=True):
            if chunk["choices"][0]["delta"].get("content"):
                now = time.perf_counter()
                if first:
                    ttfts.append(now - t0)
                    first = False
                else:
                    gaps.append(now - last)
                last = now
                tokens += 1
    wall = time.perf_counter() - start
    del llm
    return LoadResult("llama.cpp in-process", 1, len(prompts), round(wall, 3), tokens,
                      round(tokens / wall, 2), round(percentile(ttfts, 50) * 1000, 1),
                      round(percentile(ttfts, 99) * 1000, 1),
                      round(percentile(gaps, 50) * 1000, 2),
                      round(percentile(gaps, 99) * 1000, 2), 0, [])


def bench_llamacpp(args: argparse.Namespace) -> dict[str, Any]:
    from serving.engines.options import default_gguf_path

    model_path = args.model or str(default_gguf_path())
    name = Path(model_path).stem
    logs = RESULTS / "logs"
    rows: list[LoadResult] = []
    chats = chat_prompts(args.requests)

    # The same prompts as every server row, so tok/s compares the same work.
    rows.append(in_process_llamacpp(model_path, chats, args.max_tokens, args.n_ctx))

    port = free_port()
    peer = [sys.executable, "-m", "llama_cpp.server", "--model", model_path, "--n_ctx",
            str(args.n_ctx), "--host", "127.0.0.1", "--port", str(port)]
    with serve_process(peer, port=port, log_path=logs / "llama_cpp_server.log",
                       ready_path="/v1/models") as server:
        for c in (1, 4):
            rows.append(asyncio.run(run_load("llama_cpp.server", server.url, name, chats,
                                             concurrency=c, max_tokens=args.max_tokens)))

    for lookup in (0, args.lookup):
        port = free_port()
        cmd = ours(port, "--engine", "llamacpp", "--model", model_path, "--context-length",
                   str(args.n_ctx), "--parallel", "4", "--prompt-lookup-tokens", str(lookup))
        label = "search-app llamacpp" + (f" +lookup{lookup}" if lookup else "")
        with serve_process(cmd, port=port, log_path=logs / f"ours_llamacpp_{lookup}.log",
                           cwd=ROOT) as server:
            if not lookup:
                for c in (1, 4):
                    rows.append(asyncio.run(run_load(label, server.url, name, chats,
                                                     concurrency=c,
                                                     max_tokens=args.max_tokens)))
            rows.append(asyncio.run(run_load(label + " RAG", server.url, name,
                                             rag_prompts(args.requests // 2), concurrency=1,
                                             max_tokens=args.max_tokens)))
    return {"suite": "llamacpp", "model": model_path, "machine": machine(),
            "settings": {"max_tokens": args.max_tokens, "requests": args.requests,
                         "n_ctx": args.n_ctx, "prompt_lookup_tokens": args.lookup},
            "rows": [r.row() for r in rows]}


def bench_vllm(args: argparse.Namespace) -> dict[str, Any]:
    if not args.model:
        raise SystemExit("--model DIR is required for the vllm suite")
    logs = RESULTS / "logs"
    rows: list[LoadResult] = []
    chats = chat_prompts(args.requests)
    extra = {"ignore_eos": True}
    env = {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    common = ["--dtype", args.dtype, "--enforce-eager"]

    port = free_port()
    peer = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", args.model,
            "--max-model-len", str(args.n_ctx), "--host", "127.0.0.1", "--port", str(port),
            *common]
    with serve_process(peer, port=port, log_path=logs / "vllm_server.log", env=env,
                       ready_timeout=600) as server:
        for c in args.concurrency:
            rows.append(asyncio.run(run_load("vllm api_server", server.url, args.model, chats,
                                             concurrency=c, max_tokens=args.max_tokens,
                                             extra=extra)))
    port = free_port()
    cmd = ours(port, "--engine", "vllm", "--model", args.model, "--context-length",
               str(args.n_ctx), *common)
    with serve_process(cmd, port=port, log_path=logs / "ours_vllm.log", env=env, cwd=ROOT,
                       ready_timeout=600) as server:
        for c in args.concurrency:
            rows.append(asyncio.run(run_load("search-app vllm", server.url, args.model, chats,
                                             concurrency=c, max_tokens=args.max_tokens,
                                             extra=extra)))
    return {"suite": "vllm", "model": args.model, "machine": machine(),
            "settings": {"max_tokens": args.max_tokens, "requests": args.requests,
                         "max_model_len": args.n_ctx, "dtype": args.dtype},
            "rows": [r.row() for r in rows]}


def to_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"# Serving benchmark: {result['suite']}", "",
             f"Model `{result['model']}`; {m['cpu']}, {m['cores']} cores; {m['date']}; "
             f"settings {json.dumps(result['settings'])}.", "",
             "| server | conc. | requests | tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms "
             "| ITL p99 ms | cut streams |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['label']} | {r['concurrency']} | {r['requests']} | "
                     f"{r['tokens_per_s']} | {r['ttft_p50_ms']} | {r['ttft_p99_ms']} | "
                     f"{r['itl_p50_ms']} | {r['itl_p99_ms']} | {r['cut_streams']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("suite", choices=["llamacpp", "vllm"])
    parser.add_argument("--model", default=None)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--lookup", type=int, default=4, help="prompt-lookup draft tokens")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    result = bench_llamacpp(args) if args.suite == "llamacpp" else bench_vllm(args)
    write_results(f"serving_{args.suite}", result, to_markdown(result))


def write_results(name: str, result: dict[str, Any], markdown: str) -> None:
    """bench/results/NAME.json for machines, NAME.md for the docs; the table is printed."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
