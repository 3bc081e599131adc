"""A deterministic engine for fast unit tests: it replays scripted tokens.

It implements the real :class:`serving.engines.base.Engine` interface (stop strings,
max_tokens, context checks, cancellation bookkeeping), so the API layer is tested
exactly as it runs over vLLM or llama.cpp; end-to-end tests use the real engines.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from serving.engines.base import (
    Engine,
    EngineLoad,
    GenerationChunk,
    GenerationRequest,
    ModelInfo,
    validate_sampling,
)
from serving.errors import EngineError


class ReplayEngine(Engine):
    def __init__(self, tokens: list[str] | None = None, *, context_length: int = 256,
                 delay_s: float = 0.0, fail_after: int | None = None,
                 model_id: str = "replay") -> None:
        self.info = ModelInfo(id=model_id, context_length=context_length, engine="replay")
        self.tokens = tokens or ["Hello", ",", " world", "!", " The", " end", "."]
        self.delay_s = delay_s
        self.fail_after = fail_after
        self.running = 0
        self.aborted: list[str] = []      # requests that ended early, for any reason
        self._abort_requested: set[str] = set()
        self.requests: list[GenerationRequest] = []

    @property
    def load(self) -> EngineLoad:
        return EngineLoad(running=self.running, waiting=0)

    async def count_tokens(self, text: str) -> int:
        return len(text.split())

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        self.requests.append(request)
        text = request.prompt if request.prompt is not None else " ".join(
            str(m["content"]) for m in request.messages or [])
        prompt_tokens = await self.count_tokens(text)
        param = "prompt" if request.prompt is not None else "messages"
        validate_sampling(request.sampling)
        limit = self.completion_budget(prompt_tokens, request.sampling, param)
        self.running += 1
        finished = False
        try:
            out = ""
            for i, token in enumerate(self.tokens):
                if self.fail_after is not None and i >= self.fail_after:
                    raise EngineError("replay engine failure")
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                if request.request_id in self._abort_requested:
                    return  # aborted from outside: the stream ends without a reason
                candidate = out + token
                for stop in request.sampling.stop:
                    if stop in candidate:
                        piece = candidate[:candidate.index(stop)][len(out):]
                        finished = True
                        yield GenerationChunk(piece, prompt_tokens, i + 1, "stop")
                        return
                out = candidate
                done_len = i + 1 >= limit
                last = i + 1 == len(self.tokens)
                reason = "length" if done_len else ("stop" if last else None)
                finished = reason is not None
                yield GenerationChunk(token, prompt_tokens, i + 1, reason)  # type: ignore[arg-type]
                if reason:
                    return
        finally:
            self.running -= 1
            if not finished:
                self.aborted.append(request.request_id)

    async def abort(self, request_id: str) -> None:
        if any(r.request_id == request_id for r in self.requests):
            self._abort_requested.add(request_id)

    async def aclose(self) -> None:
        return None
