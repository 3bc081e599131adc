"""A small load generator for OpenAI-compatible servers: N concurrent streaming chats.

Reports output tokens/s (aggregate), time to first token p50/p99, inter-token latency
p50/p99, and streams that were cut off (no finish_reason, an error event, or a dropped
connection). One output token is counted per content chunk, which is what every server
measured here streams (one token per chunk), so servers are compared on equal terms.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

__all__ = ["LoadResult", "StreamStats", "percentile", "run_load"]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class StreamStats:
    ttft_s: float | None = None
    gaps_s: list[float] = field(default_factory=list)
    tokens: int = 0
    finish_reason: str | None = None
    error: str | None = None

    @property
    def cut(self) -> bool:
        return self.error is not None or self.finish_reason is None


@dataclass
class LoadResult:
    label: str
    concurrency: int
    requests: int
    wall_s: float
    output_tokens: int
    tokens_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float
    itl_p99_ms: float
    cut_streams: int
    errors: list[str]

    def row(self) -> dict[str, Any]:
        return asdict(self)


async def _one(client: httpx.AsyncClient, url: str, body: dict[str, Any],
               headers: dict[str, str]) -> StreamStats:
    stats = StreamStats()
    start = last = time.perf_counter()
    try:
        async with client.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                stats.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return stats
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    stats.error = str(event["error"])[:200]
                    break
                for choice in event.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content") or choice.get("text")
                    if text:
                        now = time.perf_counter()
                        if stats.ttft_s is None:
                            stats.ttft_s = now - start
                        else:
                            stats.gaps_s.append(now - last)
                        last = now
                        stats.tokens += 1
                    if choice.get("finish_reason"):
                        stats.finish_reason = choice["finish_reason"]
    except httpx.HTTPError as exc:
        stats.error = f"{type(exc).__name__}: {exc}"
    return stats


async def run_load(label: str, base_url: str, model: str, prompts: list[list[dict[str, str]]],
                   *, concurrency: int, max_tokens: int, api_key: str | None = None,
                   extra: dict[str, Any] | None = None, timeout_s: float = 600.0
                   ) -> LoadResult:
    """Send every prompt once, at most ``concurrency`` at a time, and summarise."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = f"{base_url.rstrip('/')}/v1/chat/completions"
    semaphore = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency * 2)

    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        async def bounded(messages: list[dict[str, str]]) -> StreamStats:
            async with semaphore:
                body = {"model": model, "messages": messages, "max_tokens": max_tokens,
                        "temperature": 0.0, "stream": True, **(extra or {})}
                return await _one(client, url, body, headers)

        start = time.perf_counter()
        results = await asyncio.gather(*(bounded(p) for p in prompts))
        wall = time.perf_counter() - start
    ttfts = [r.ttft_s for r in results if r.ttft_s is not None]
    gaps = [g for r in results for g in r.gaps_s]
    tokens = sum(r.tokens for r in results)
    return LoadResult(
        label=label, concurrency=concurrency, requests=len(prompts), wall_s=round(wall, 3),
        output_tokens=tokens, tokens_per_s=round(tokens / wall, 2),
        ttft_p50_ms=round(percentile(ttfts, 50) * 1000, 1),
        ttft_p99_ms=round(percentile(ttfts, 99) * 1000, 1),
        itl_p50_ms=round(percentile(gaps, 50) * 1000, 2),
        itl_p99_ms=round(percentile(gaps, 99) * 1000, 2),
        cut_streams=sum(r.cut for r in results),
        errors=sorted({r.error for r in results if r.error})[:5],
    )


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
