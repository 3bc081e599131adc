"""Chat and text completions: OpenAI requests in, engine generations out.

Each handler returns either a full response or an async iterator of SSE lines (``data:
{json}`` ... ``data: [DONE]``); errors are raised as :mod:`serving.errors` exceptions.
The route only chooses how to send what it gets (as vLLM's serving classes do).

Errors a caller can fix are raised before anything is streamed: every generation is
*primed* (its first chunk awaited) before the handler returns, so a prompt that is too
long or a full queue becomes a 400 or 429, not a broken stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from serving.engines.base import Engine, GenerationChunk, GenerationRequest, SamplingOptions
from serving.errors import BadRequestError, ServingError, error_body
from serving.metrics import ServingMetrics
from serving.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessageOut,
    CompletionChoice,
    CompletionChunk,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    ResponseFormat,
    Usage,
    new_id,
)
from serving.registry import ModelRegistry

__all__ = ["OpenAIServing", "sse_error", "DONE"]

log = logging.getLogger(__name__)
DONE = "data: [DONE]\n\n"


def sse_error(exc: BaseException) -> str:
    if isinstance(exc, ServingError):
        body = exc.to_dict()
    else:
        body = error_body(f"Generation failed: {exc}", "internal_error", 500)
    return f"data: {json.dumps(body)}\n\n"


@dataclass
class _Choice:
    """One generation in flight: its choice index, stream, first chunk and totals."""

    index: int
    stream: AsyncIterator[GenerationChunk]
    first: GenerationChunk | None = None
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def absorb(self, chunk: GenerationChunk) -> None:
        self.text += chunk.text
        self.prompt_tokens = chunk.prompt_tokens
        self.completion_tokens = chunk.completion_tokens
        if chunk.finish_reason:
            self.finish_reason = chunk.finish_reason

    async def drain(self) -> None:
        if self.first is not None:
            self.absorb(self.first)
        async for chunk in self.stream:
            self.absorb(chunk)


def _sampling(req: ChatCompletionRequest | CompletionRequest, max_tokens: int | None,
              index: int) -> SamplingOptions:
    fmt: ResponseFormat | None = req.response_format
    schema = fmt.json_schema.schema_ if fmt and fmt.type == "json_schema" and fmt.json_schema \
        else None
    return SamplingOptions(
        max_tokens=max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        min_p=req.min_p,
        repetition_penalty=req.repetition_penalty,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        # n > 1 with a seed: each choice gets its own, reproducible, seed.
        seed=None if req.seed is None else req.seed + index,
        stop=req.stop_list,
        json_schema=schema if schema else None,
        json_object=bool(fmt and (fmt.type == "json_object"
                                  or (fmt.type == "json_schema" and not schema))),
        ignore_eos=req.ignore_eos,
    )


async def _close_all(choices: Sequence[_Choice]) -> None:
    for choice in choices:
        aclose = getattr(choice.stream, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()


async def _prime(choices: list[_Choice]) -> None:
    """Await every first chunk; on any error close them all and raise the first error."""
    async def first(choice: _Choice) -> None:
        try:
            choice.first = await anext(choice.stream)
        except StopAsyncIteration:
            choice.first = GenerationChunk("", 0, 0, "stop")

    results = await asyncio.gather(*(first(c) for c in choices), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        await _close_all(choices)
        raise errors[0]


async def _merge(choices: list[_Choice]) -> AsyncIterator[tuple[_Choice, GenerationChunk]]:
    """Chunks of all choices as they come; a single choice is passed through directly."""
    for choice in choices:
        if choice.first is not None:
            yield choice, choice.first
    if len(choices) == 1:
        async for chunk in choices[0].stream:
            yield choices[0], chunk
        return
    queue: asyncio.Queue[tuple[_Choice, GenerationChunk | BaseException | None]] = \
        asyncio.Queue()

    async def pump(choice: _Choice) -> None:
        try:
            async for chunk in choice.stream:
                await queue.put((choice, chunk))
            await queue.put((choice, None))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer
            await queue.put((choice, exc))

    tasks = [asyncio.create_task(pump(c)) for c in choices]
    try:
        remaining = len(choices)
        while remaining:
            choice, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield choice, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _check_fits(engine: Engine, requests: list[GenerationRequest], n: int) -> None:
    """Refuse what can never run before anything starts: more sequences than the engine
    holds (a 400: waiting would not help), or any prompt of a batch that is too long
    (without this, the error would come only after the other prompts' first tokens)."""
    limit = engine.info.max_sequences
    if limit is not None and len(requests) > limit:
        raise BadRequestError(
            f"This request needs {len(requests)} sequences ({len(requests) // n} "
            f"prompt(s) x n={n}), more than this server holds at once ({limit}, running "
            "and queued). Send fewer prompts or a smaller n.", param="n" if n > 1 else
            "prompt")
    distinct = requests[::n]  # n choices of a prompt share it
    if len(distinct) < 2:
        return  # one prompt: the engine's own check answers as early
    for request in distinct:
        text = request.prompt if request.prompt is not None else "\n".join(
            str(m.get("content") or "") for m in request.messages or [])
        engine.completion_budget(await engine.count_tokens(text), request.sampling,
                                 "prompt" if request.prompt is not None else "messages")


async def _time_capped(stream: AsyncIterator[GenerationChunk], seconds: float,
                       request_id: str) -> AsyncIterator[GenerationChunk]:
    """End a generation that runs past ``seconds`` as if it had reached max_tokens
    (finish_reason ``length``): without a cap, ``max_tokens: null`` holds a slot for the
    whole context, minutes on a CPU. Closing the engine's stream aborts it there."""
    deadline = time.monotonic() + seconds
    async with contextlib.aclosing(stream):  # type: ignore[type-var]
        async for chunk in stream:
            if chunk.finish_reason is None and time.monotonic() > deadline:
                log.warning("%s: generation stopped at the %.0f s cap (%d tokens)",
                            request_id, seconds, chunk.completion_tokens)
                yield GenerationChunk(chunk.text, chunk.prompt_tokens,
                                      chunk.completion_tokens, "length")
                return
            yield chunk


class OpenAIServing:
    def __init__(self, registry: ModelRegistry, metrics: ServingMetrics, *,
                 max_generation_s: float = 0.0) -> None:
        self.registry = registry
        self.metrics = metrics
        self.max_generation_s = max_generation_s  # 0: no cap

    def _start(self, engine: Engine, model: str, requests: list[GenerationRequest]
               ) -> list[_Choice]:
        def stream(r: GenerationRequest) -> AsyncIterator[GenerationChunk]:
            chunks = engine.generate(r)
            if self.max_generation_s > 0:
                chunks = _time_capped(chunks, self.max_generation_s, r.request_id)
            return self.metrics.track(model, chunks)

        return [_Choice(i, stream(r)) for i, r in enumerate(requests)]

    async def chat(self, req: ChatCompletionRequest
                   ) -> ChatCompletionResponse | AsyncIterator[str]:
        agent = self.registry.agent(req.model)
        if agent is not None:
            return await agent.chat(req)
        engine = self.registry.engine(req.model)
        try:
            messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        except ValueError as exc:
            raise BadRequestError(str(exc), param="messages") from None
        request_id = new_id("chatcmpl")
        gen_requests = [
            GenerationRequest(f"{request_id}-{i}", _sampling(req, req.token_limit, i),
                              messages=messages)
            for i in range(req.n)
        ]
        await _check_fits(engine, gen_requests, req.n)
        choices = self._start(engine, req.model, gen_requests)
        await _prime(choices)
        created = int(time.time())
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return self._chat_stream(request_id, created, req.model, choices, include_usage)
        try:
            await asyncio.gather(*(c.drain() for c in choices))
        finally:
            await _close_all(choices)
        return ChatCompletionResponse(
            id=request_id, created=created, model=req.model,
            choices=[ChatChoice(index=c.index, message=ChatMessageOut(content=c.text),
                                finish_reason=c.finish_reason) for c in choices],
            usage=_usage(choices, prompts_shared=True),
        )

    async def _chat_stream(self, request_id: str, created: int, model: str,
                           choices: list[_Choice], include_usage: bool) -> AsyncIterator[str]:
        def chunk(choice_list: list[ChatChunkChoice], usage: Usage | None = None) -> str:
            body = ChatCompletionChunk(id=request_id, created=created, model=model,
                                       choices=choice_list, usage=usage)
            return f"data: {body.model_dump_json(exclude_unset=False)}\n\n"

        try:
            for c in choices:
                yield chunk([ChatChunkChoice(index=c.index,
                                             delta=DeltaMessage(role="assistant", content=""))])
            async for c, piece in _merge(choices):
                c.absorb(piece)
                if not piece.text and not piece.finish_reason:
                    continue
                delta = DeltaMessage(content=piece.text) if piece.text else DeltaMessage()
                yield chunk([ChatChunkChoice(index=c.index, delta=delta,
                                             finish_reason=piece.finish_reason)])
            if include_usage:
                yield chunk([], _usage(choices, prompts_shared=True))
            yield DONE
        except Exception as exc:  # noqa: BLE001 - after the first byte, errors are events
            log.exception("chat stream %s failed", request_id)
            yield sse_error(exc)
            yield DONE
        finally:
            await _close_all(choices)

    async def completions(self, req: CompletionRequest
                          ) -> CompletionResponse | AsyncIterator[str]:
        engine = self.registry.engine(req.model)
        request_id = new_id("cmpl")
        gen_requests = [
            GenerationRequest(f"{request_id}-{p}-{i}", _sampling(req, req.max_tokens, i),
                              prompt=prompt)
            for p, prompt in enumerate(req.prompts) for i in range(req.n)
        ]
        await _check_fits(engine, gen_requests, req.n)
        choices = self._start(engine, req.model, gen_requests)
        await _prime(choices)
        created = int(time.time())
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return self._completion_stream(request_id, created, req.model, choices,
                                           include_usage, req.n)
        try:
            await asyncio.gather(*(c.drain() for c in choices))
        finally:
            await _close_all(choices)
        return CompletionResponse(
            id=request_id, created=created, model=req.model,
            choices=[CompletionChoice(index=c.index, text=c.text, finish_reason=c.finish_reason)
                     for c in choices],
            usage=_usage(choices, prompts_shared=False, n=req.n),
        )

    async def _completion_stream(self, request_id: str, created: int, model: str,
                                 choices: list[_Choice], include_usage: bool, n: int
                                 ) -> AsyncIterator[str]:
        def chunk(choice_list: list[CompletionChoice], usage: Usage | None = None) -> str:
            body = CompletionChunk(id=request_id, created=created, model=model,
                                   choices=choice_list, usage=usage)
            return f"data: {body.model_dump_json()}\n\n"

        try:
            async for c, piece in _merge(choices):
                c.absorb(piece)
                if not piece.text and not piece.finish_reason:
                    continue
                yield chunk([CompletionChoice(index=c.index, text=piece.text,
                                              finish_reason=piece.finish_reason)])
            if include_usage:
                yield chunk([], _usage(choices, prompts_shared=False, n=n))
            yield DONE
        except Exception as exc:  # noqa: BLE001
            log.exception("completion stream %s failed", request_id)
            yield sse_error(exc)
            yield DONE
        finally:
            await _close_all(choices)


def _usage(choices: list[_Choice], *, prompts_shared: bool, n: int = 1) -> Usage:
    """Prompt tokens count once per distinct prompt, not once per sampled choice."""
    if prompts_shared:
        prompt = choices[0].prompt_tokens if choices else 0
    else:
        prompt = sum(c.prompt_tokens for c in choices[::n])
    completion = sum(c.completion_tokens for c in choices)
    return Usage(prompt_tokens=prompt, completion_tokens=completion,
                 total_tokens=prompt + completion)
