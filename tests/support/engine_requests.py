"""Building engine requests and collecting their chunks, shared by the engine tests."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from serving.engines.base import Engine, GenerationChunk, GenerationRequest, SamplingOptions

__all__ = ["collect", "request_factory"]

_ids = itertools.count(1)


def request_factory(default_messages: list[dict]) -> Callable[..., GenerationRequest]:
    """``make(messages=None, *, prompt=None, request_id=None, **sampling)``: a request
    with a fresh id; no messages and no prompt means ``default_messages``."""
    def make(messages: list[dict] | None = None, *, prompt: str | None = None,
             request_id: str | None = None, **sampling: object) -> GenerationRequest:
        if prompt is None and messages is None:
            messages = default_messages
        return GenerationRequest(request_id=request_id or f"test-{next(_ids)}",
                                 sampling=SamplingOptions(**sampling),  # type: ignore[arg-type]
                                 prompt=prompt, messages=messages)
    return make


async def collect(engine: Engine, request: GenerationRequest) -> list[GenerationChunk]:
    return [chunk async for chunk in engine.generate(request)]
