"""The one narrow interface every inference engine implements.

Why so small: the OpenAI API layer, the answer pipeline and the benchmarks all talk to
vLLM, llama.cpp and an upstream server through these few members, so nothing above
``serving.engines`` imports ``vllm`` or ``llama_cpp``, and a test can plug in a
replaying engine. An engine:

- ``info``: the model's id and real context length (the pipeline packs context to it);
- ``generate(request)``: an async iterator of :class:`GenerationChunk` (text deltas with
  cumulative token counts; the last one has a ``finish_reason``). Errors a caller can fix
  (prompt too long, queue full) are raised *before* the first chunk, so the HTTP layer
  can still answer with a status code. Closing the iterator early (client gone) aborts
  the request inside the engine;
- ``abort(request_id)``: stop a request from outside its iterator;
- ``count_tokens(text)``: the model's own tokenizer, for context packing;
- ``load``: running and waiting requests, for metrics and back-pressure;
- ``aclose()``: free the model. Engines are async context managers.

Chat requests carry ``messages``; the engine renders them with the model's own chat
template (or, upstream, sends them as they are).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

__all__ = [
    "ChatMessage",
    "Engine",
    "EngineLoad",
    "FinishReason",
    "GenerationChunk",
    "GenerationRequest",
    "ModelInfo",
    "SamplingOptions",
]

FinishReason = Literal["stop", "length"]
ChatMessage = dict[str, Any]  # {"role": ..., "content": str}


@dataclass(frozen=True)
class ModelInfo:
    id: str
    context_length: int
    engine: str
    owned_by: str = "search-app"


@dataclass(frozen=True)
class EngineLoad:
    running: int
    waiting: int


@dataclass
class SamplingOptions:
    """Sampling settings common to every engine (None: the engine's default)."""

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    # Constrained decoding: a JSON schema the output must validate against; with
    # ``json_object`` any JSON object is accepted.
    json_schema: dict[str, Any] | None = None
    json_object: bool = False
    ignore_eos: bool = False


@dataclass
class GenerationRequest:
    request_id: str
    sampling: SamplingOptions
    prompt: str | None = None
    messages: list[ChatMessage] | None = None

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("exactly one of prompt and messages must be given")


@dataclass(frozen=True)
class GenerationChunk:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason | None = None


class Engine(abc.ABC):
    info: ModelInfo

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream the completion; raise ServingError subclasses before the first chunk."""

    @abc.abstractmethod
    async def abort(self, request_id: str) -> None:
        """Stop a running or queued request; unknown ids are ignored."""

    @abc.abstractmethod
    async def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` by the model's own tokenizer."""

    @property
    @abc.abstractmethod
    def load(self) -> EngineLoad:
        """Requests running in the engine and waiting for it."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release the model; safe to call twice."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()
