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
- ``check_health()``: raise :class:`~serving.errors.EngineNotReadyError` with the reason
  when the engine cannot serve now (a crashed engine process that is restarting, a dead
  vLLM core); ``/health`` answers 503 with that reason;
- ``aclose()``: free the model. Engines are async context managers.

One rule is shared rather than implemented: :meth:`Engine.completion_budget`, the
context-length check every engine that counts its prompt applies before generating.

Chat requests carry ``messages``; the engine renders them with the model's own chat
template (or, upstream, sends them as they are).
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

from serving.errors import BadRequestError, ContextLengthError

__all__ = [
    "ChatMessage",
    "Engine",
    "EngineLoad",
    "FinishReason",
    "GenerationChunk",
    "GenerationRequest",
    "ModelInfo",
    "SamplingOptions",
    "self_check",
    "validate_sampling",
]

FinishReason = Literal["stop", "length"]
ChatMessage = dict[str, Any]  # {"role": ..., "content": str}


@dataclass(frozen=True)
class ModelInfo:
    id: str
    context_length: int
    engine: str
    owned_by: str = "search-app"
    # Sequences it holds at once, running and queued (None: no fixed limit). A request
    # needing more can never be served, however long the client waits: a 400, not a 429.
    max_sequences: int | None = None


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

    def queue_position(self, request_id: str) -> int | None:
        """Requests ahead of ``request_id`` in this engine's own queue (0: next to be
        admitted), or None when it is running, finished, unknown, or the engine cannot
        tell (vLLM, upstream). The answer pipeline tells a waiting user their place, and
        its first-token timeout starts only when the request leaves the queue."""
        return None

    def check_health(self) -> None:  # noqa: B027 - healthy unless an engine says otherwise
        """Raise EngineNotReadyError (with the reason) when the engine cannot serve."""

    def completion_budget(self, prompt_tokens: int, sampling: SamplingOptions,
                          param: str = "messages") -> int:
        """Tokens the completion may use: ``max_tokens``, or the rest of the context.

        Raises :class:`BadRequestError` for ``max_tokens < 1`` and
        :class:`ContextLengthError` when the prompt (plus ``max_tokens``) does not fit,
        so every engine refuses the same requests with the same message.
        """
        context, requested = self.info.context_length, sampling.max_tokens
        if requested is not None and requested < 1:
            raise BadRequestError(f"max_tokens must be at least 1, got {requested}.",
                                  param="max_tokens")
        if prompt_tokens >= context or (
                requested is not None and prompt_tokens + requested > context):
            raise ContextLengthError(prompt_tokens=prompt_tokens, max_tokens=requested,
                                     context_length=context, param=param)
        return requested if requested is not None else context - prompt_tokens

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()


def validate_sampling(s: SamplingOptions) -> None:
    """Refuse sampling values an engine would misbehave on, naming the field to change
    (for engines without their own validation; vLLM's SamplingParams has its own)."""
    if s.temperature < 0:
        raise BadRequestError("temperature must be >= 0.", param="temperature")
    if not 0.0 < s.top_p <= 1.0:
        raise BadRequestError("top_p must be in (0, 1].", param="top_p")
    if s.top_k is not None and s.top_k < 0:
        raise BadRequestError("top_k must be >= 0.", param="top_k")
    if s.min_p is not None and not 0.0 <= s.min_p <= 1.0:
        raise BadRequestError("min_p must be in [0, 1].", param="min_p")
    if s.repetition_penalty is not None and s.repetition_penalty <= 0:
        raise BadRequestError("repetition_penalty must be > 0.", param="repetition_penalty")


async def self_check(engine: Engine, timeout_s: float = 300.0) -> None:
    """Generate one token, so that an engine that loads but cannot run (a crashing CPU
    kernel, a broken model) fails at start-up with a reason, not on the first user."""
    request = GenerationRequest(
        request_id="self-check", prompt="Hello",
        sampling=SamplingOptions(max_tokens=1, temperature=0.0))
    got = None
    async with asyncio.timeout(timeout_s):
        async for chunk in engine.generate(request):
            got = chunk
    if got is None or got.completion_tokens < 1:
        raise RuntimeError("the model generated no token in its start-up self-check")
