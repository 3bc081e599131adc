"""The llama.cpp engine in its supervised child process: crashes, restarts, back-off,
and no orphans. Real child processes and the real SmolLM2 model; faults are injected
with signals, as the kernel would (SIGSEGV) or the OOM killer does (SIGKILL)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from serving.engines import GenerationChunk, LlamaCppOptions, ProcessOptions
from serving.engines.process import ProcessEngine, describe_exit
from serving.errors import (
    BadRequestError,
    ContextLengthError,
    EngineCrashedError,
    EngineNotReadyError,
    ServingError,
    error_from_wire,
    error_to_wire,
)
from tests.conftest import needs_llama_cpp
from tests.support.engine_requests import collect, request_factory
from tests.support.server import ROOT, alive, child_pids

pytestmark = [pytest.mark.asyncio(loop_scope="module")]

STORY = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]
_request = request_factory(STORY)
FAST = ProcessOptions(restart_backoff_s=0.2, restart_backoff_max_s=5.0)


async def _healthy(engine: ProcessEngine, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            engine.check_health()
            return
        except EngineNotReadyError:
            assert time.monotonic() < deadline, "the engine did not come back"
            await asyncio.sleep(0.05)


# ---- no model needed -------------------------------------------------------------------

@pytest.mark.parametrize("exc", [
    ContextLengthError(prompt_tokens=5000, max_tokens=None, context_length=4096,
                       param="prompt"),
    BadRequestError("top_p must be in (0, 1].", param="top_p"),
    EngineCrashedError("gone"),
])
async def test_errors_cross_the_boundary_as_the_same_class(exc: ServingError) -> None:
    back = error_from_wire(error_to_wire(exc))
    assert type(back) is type(exc)
    assert (back.message, back.param, back.status_code, back.error_type, back.retry_after) \
        == (exc.message, exc.param, exc.status_code, exc.error_type, exc.retry_after)
    if isinstance(exc, ContextLengthError):
        assert back.prompt_tokens == 5000 and back.context_length == 4096


async def test_exit_status_in_words() -> None:
    assert describe_exit(-signal.SIGSEGV) == "killed by SIGSEGV"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL (out of memory?)"
    assert describe_exit(1) == "exited with status 1"


# ---- the real child -------------------------------------------------------------------

@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[ProcessEngine]:
    if not _have_llama():
        pytest.skip("llama-cpp-python is not installed")
    eng = await ProcessEngine.create(LlamaCppOptions(context_length=1024, parallel=2), FAST)
    yield eng
    pid = eng.pid
    await eng.aclose()
    assert pid is not None and not alive(pid)  # closed means gone, not orphaned
    with pytest.raises(EngineNotReadyError, match="closed"):
        await collect(eng, _request(max_tokens=2))


def _have_llama() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


async def _crash_mid_stream(engine: ProcessEngine, sig: signal.Signals
                            ) -> tuple[list[GenerationChunk], EngineCrashedError]:
    pid = engine.pid
    assert pid is not None
    chunks: list[GenerationChunk] = []
    with pytest.raises(EngineCrashedError) as info:
        async for chunk in engine.generate(_request(max_tokens=400, ignore_eos=True)):
            chunks.append(chunk)
            if len(chunks) == 3:
                os.kill(pid, sig)
    return chunks, info.value


@needs_llama_cpp
@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGKILL], ids=["SIGSEGV", "SIGKILL"])
async def test_crash_mid_stream_fails_the_request_and_the_engine_restarts(
        engine: ProcessEngine, sig: signal.Signals) -> None:
    await _healthy(engine)
    old_pid = engine.pid
    bystander = asyncio.create_task(collect(engine, _request(max_tokens=400,
                                                             ignore_eos=True)))
    chunks, error = await _crash_mid_stream(engine, sig)
    assert len(chunks) >= 3 and all(c.finish_reason is None for c in chunks)
    assert sig.name in error.message and error.status_code == 503
    assert error.error_type == "model_crashed"
    with pytest.raises(EngineCrashedError):  # every request in flight fails, not only one
        await bystander
    # Down: health says why; new work is refused with a 503 at once, not queued.
    with pytest.raises(EngineNotReadyError, match=f"crashed: .*{sig.name}.*restarting"):
        engine.check_health()
    with pytest.raises(EngineNotReadyError):
        await collect(engine, _request(max_tokens=2))
    with pytest.raises(EngineNotReadyError):
        await engine.count_tokens("hello")
    assert engine.load.running == engine.load.waiting == 0
    # Back: a new child answers.
    await _healthy(engine)
    assert engine.pid != old_pid and not alive(old_pid)
    assert engine.restarts[-1].ok and sig.name in engine.restarts[-1].reason
    chunks = await collect(engine, _request(max_tokens=6, ignore_eos=True))
    assert chunks[-1].finish_reason == "length"
    assert await engine.count_tokens("hello world") == 2


@needs_llama_cpp
async def test_repeated_crashes_back_off_exponentially(engine: ProcessEngine) -> None:
    await _healthy(engine)
    before = len(engine.restarts)
    for _ in range(3):
        await _healthy(engine)
        pid = engine.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        while engine.pid == pid:
            await asyncio.sleep(0.01)
    await _healthy(engine)
    delays = [r.delay_s for r in engine.restarts[before:]]
    # A child that ran less than stable_after_s doubles the next delay.
    assert delays[-2:] == [pytest.approx(delays[-3] * 2), pytest.approx(delays[-3] * 4)]
    chunks = await collect(engine, _request(max_tokens=3, ignore_eos=True))
    assert chunks[-1].finish_reason == "length"


@needs_llama_cpp
async def test_a_child_killed_while_starting_is_a_start_failure() -> None:
    others = set(child_pids(os.getpid(), "_engine_child"))  # the module's engine
    task = asyncio.create_task(ProcessEngine.create(LlamaCppOptions(), ProcessOptions()))
    pid = None
    deadline = time.monotonic() + 30
    while pid is None:
        assert time.monotonic() < deadline and not task.done()
        pid = next(iter(set(child_pids(os.getpid(), "_engine_child")) - others), None)
        await asyncio.sleep(0.01)
    os.kill(pid, signal.SIGSEGV)
    with pytest.raises(EngineNotReadyError, match="killed by SIGSEGV while starting"):
        await task


@needs_llama_cpp
async def test_a_bad_model_is_a_start_failure_with_the_reason(tmp_path: Path) -> None:
    missing = tmp_path / "missing.gguf"
    others = set(child_pids(os.getpid(), "_engine_child"))
    with pytest.raises(EngineNotReadyError, match="GGUF model not found"):
        await ProcessEngine.create(LlamaCppOptions(model_path=missing), ProcessOptions())
    assert set(child_pids(os.getpid(), "_engine_child")) == others  # nothing left over


@needs_llama_cpp
async def test_the_child_dies_with_its_parent() -> None:
    """SIGKILL of the app (no clean-up code runs) must not leave the model running."""
    script = (
        "import asyncio, os, sys\n"
        "from serving.engines import LlamaCppOptions, ProcessOptions\n"
        "from serving.engines.process import ProcessEngine\n"
        "async def main():\n"
        "    e = await ProcessEngine.create(LlamaCppOptions(), ProcessOptions())\n"
        "    print(e.pid, flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())  # type: ignore[union-attr]
        assert alive(child)
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 10
        while alive(child):
            assert time.monotonic() < deadline, "the engine process outlived the app"
            await asyncio.sleep(0.05)
    finally:
        parent.kill()
