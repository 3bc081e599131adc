"""An engine that runs in a child process, so that its crash does not take the app down.

Why: llama.cpp is C++ in our address space. A segfault (llama.cpp's AMX kernels on some
Intel CPUs, a bad GGUF) or an OOM kill of the model would otherwise end the whole app:
the UI, stored answers and share links with it. vLLM runs its EngineCore in a child
process and Ollama its runner for the same reason. Here the child
(:mod:`serving.engines._engine_child`) hosts the real in-process engine and this class
speaks the :class:`~serving.engines.base.Engine` interface to it over a socket pair, one
JSON object per line:

    parent -> child   start {kind, options}, gen {k, req}, abort {k}, count {n, text},
                      close
    child -> parent   ready {info} | fatal {message}, chunk {k, ...}, end {k},
                      err {k, error}, count {n, tokens | error}

When the child dies, every request in flight fails with
:class:`~serving.errors.EngineCrashedError` (its stream ends with that error), the
engine reports itself unhealthy with the reason (``check_health`` -> ``/health`` 503),
and the child is restarted with exponential back-off (reset once a child has run for
``stable_after_s``). A child that cannot start the first time is an
:class:`~serving.errors.EngineNotReadyError` from :meth:`ProcessEngine.create`, with the
child's one-line reason: the server then refuses to start instead of dying silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from serving.engines.base import (
    Engine,
    EngineLoad,
    GenerationChunk,
    GenerationRequest,
    ModelInfo,
    SamplingOptions,
)
from serving.engines.options import LlamaCppOptions, ProcessOptions
from serving.errors import (
    EngineCrashedError,
    EngineNotReadyError,
    ServingError,
    error_from_wire,
)

__all__ = ["ProcessEngine", "describe_exit", "request_from_wire", "request_to_wire"]

log = logging.getLogger(__name__)

# One line of the protocol may hold a whole prompt (up to the API's body limit).
LINE_LIMIT = 64 * 1024 * 1024
# Seconds a token count or an abort waits for the child's answer.
CALL_TIMEOUT_S = 30.0
# Seconds aclose() waits for the child to exit after "close" before killing it.
CLOSE_TIMEOUT_S = 30.0


def request_to_wire(request: GenerationRequest) -> dict[str, Any]:
    return {"request_id": request.request_id, "prompt": request.prompt,
            "messages": request.messages, "sampling": dataclasses.asdict(request.sampling)}


def request_from_wire(data: dict[str, Any]) -> GenerationRequest:
    return GenerationRequest(request_id=data["request_id"], prompt=data.get("prompt"),
                             messages=data.get("messages"),
                             sampling=SamplingOptions(**data["sampling"]))


def describe_exit(returncode: int | None) -> str:
    """A child's exit status in words: "killed by SIGSEGV", "exited with status 1"."""
    if returncode is None:
        return "stopped answering"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}"
    return f"exited with status {returncode}"


@dataclass(eq=False)
class _Flight:
    """One generation in flight: chunks (or an error, or None for a quiet end) arrive
    on ``queue`` from the reader task."""

    request_id: str
    queue: asyncio.Queue[GenerationChunk | BaseException | None] = field(
        default_factory=asyncio.Queue)
    started: bool = False
    done: bool = False                                     # the consumer saw the end
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # the child sent it


@dataclass
class _Child:
    """One child process and its socket; replaced on every restart."""

    process: asyncio.subprocess.Process
    writer: asyncio.StreamWriter
    reader: asyncio.StreamReader
    up_writer: asyncio.StreamWriter  # the answers socket's transport, closed with it
    reader_task: asyncio.Task[None] | None = None
    started_at: float = field(default_factory=time.monotonic)

    def send(self, message: dict[str, Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(json.dumps(message).encode() + b"\n")

    def close(self) -> None:
        for writer in (self.writer, self.up_writer):
            with contextlib.suppress(Exception):
                writer.close()


@dataclass(frozen=True)
class Restart:
    """One restart, for logs, metrics and tests: why, after which delay, and when."""

    reason: str
    delay_s: float
    at: float
    ok: bool


class ProcessEngine(Engine):
    """The llama.cpp engine in a supervised child process (see the module docstring)."""

    def __init__(self, options: LlamaCppOptions, process: ProcessOptions) -> None:
        self._options = options
        self._process = process
        self._child: _Child | None = None
        self._flights: dict[int, _Flight] = {}
        self._counts: dict[int, asyncio.Future[int]] = {}
        self._ids = itertools.count(1)
        self._down: str | None = "starting"       # None: ready; else why not
        self._closing = False
        self._supervisor: asyncio.Task[None] | None = None
        self._backoff = process.restart_backoff_s
        self.restarts: list[Restart] = []
        self.info = ModelInfo(id=options.model_name or "llamacpp",
                              context_length=options.context_length, engine="llamacpp",
                              max_sequences=options.parallel + options.max_queue)

    @classmethod
    async def create(cls, options: LlamaCppOptions, process: ProcessOptions
                     ) -> ProcessEngine:
        """Start the child and wait until it has loaded the model and run one token."""
        engine = cls(options, process)
        try:
            await engine._start()
        except BaseException:
            await engine.aclose()
            raise
        return engine

    # ---- the Engine interface -----------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        child = self._ready_child()
        key = next(self._ids)
        flight = _Flight(request.request_id)
        self._flights[key] = flight
        try:
            child.send({"t": "gen", "k": key, "req": request_to_wire(request)})
            while True:
                item = await flight.queue.get()
                if item is None:
                    flight.done = True
                    return
                if isinstance(item, BaseException):
                    flight.done = True
                    raise item
                flight.started = True
                if item.finish_reason is not None:
                    flight.done = True
                yield item
                if flight.done:
                    return
        finally:
            self._flights.pop(key, None)
            if not flight.done and self._child is child:  # consumer left early: abort
                child.send({"t": "abort", "k": key})

    async def abort(self, request_id: str) -> None:
        """Abort in the child and wait (briefly) until those streams have ended."""
        child = self._child
        keys = [k for k, f in self._flights.items() if f.request_id == request_id]
        if child is None or self._down is not None or not keys:
            return
        flights = [self._flights[k] for k in keys]
        for key in keys:
            child.send({"t": "abort", "k": key})
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                for flight in flights:
                    await flight.ended.wait()
        except TimeoutError:
            log.warning("abort of %s not confirmed within %.0f s", request_id,
                        CALL_TIMEOUT_S)

    async def count_tokens(self, text: str) -> int:
        child = self._ready_child()
        n = next(self._ids)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._counts[n] = fut
        try:
            child.send({"t": "count", "n": n, "text": text})
            async with asyncio.timeout(CALL_TIMEOUT_S):
                return await fut
        except TimeoutError:
            raise EngineNotReadyError("The model engine did not answer a token count in "
                                      f"{CALL_TIMEOUT_S:g} s.") from None
        finally:
            self._counts.pop(n, None)

    @property
    def load(self) -> EngineLoad:
        running = sum(1 for f in self._flights.values() if f.started)
        return EngineLoad(running=running, waiting=len(self._flights) - running)

    def queue_position(self, request_id: str) -> int | None:
        """From the flights alone, no round trip: the child admits in submission order
        into ``parallel`` slots, so a flight that has not produced a chunk is queued
        when the running ones and the unstarted ones before it fill every slot. (A
        flight still prefilling counts as not started, which this accounts for.)"""
        flights = list(self._flights.values())
        running = sum(1 for f in flights if f.started and not f.done)
        free = max(0, self._options.parallel - running)
        pending = [f for f in flights if not f.started and not f.done]
        for i, flight in enumerate(pending):
            if flight.request_id == request_id:
                return i - free if i >= free else None
        return None

    def check_health(self) -> None:
        if self._down is not None:
            raise EngineNotReadyError(self._down_message())

    async def aclose(self) -> None:
        """Stop the supervisor and the child (politely, then by force); idempotent."""
        if self._closing:
            return
        self._closing = True
        self._down = "closed"
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor
        child, self._child = self._child, None
        self._fail_all(EngineNotReadyError("The model engine is shutting down."))
        if child is not None:
            await _stop(child)

    @property
    def pid(self) -> int | None:
        """The child's process id (None while it is down)."""
        return self._child.process.pid if self._child is not None else None

    # ---- the child's life -----------------------------------------------------------------

    def _ready_child(self) -> _Child:
        if self._down is not None or self._child is None:
            raise EngineNotReadyError(self._down_message())
        return self._child

    def _down_message(self) -> str:
        if self._down == "starting":
            return "The model engine is still starting; retry in a few seconds."
        if self._down == "closed":
            return "The model engine is closed."
        return f"The model engine {self._down}."

    async def _start(self) -> None:
        """Spawn a child and wait for its ready line; raise EngineNotReadyError with the
        child's reason when it fails or dies first."""
        down, child_in = socket.socketpair()   # requests: parent -> child
        up, child_out = socket.socketpair()     # answers: child -> parent
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "serving.engines._engine_child",
                str(child_in.fileno()), str(child_out.fileno()),
                pass_fds=(child_in.fileno(), child_out.fileno()),
                stdin=asyncio.subprocess.DEVNULL)
        except BaseException:
            down.close()
            up.close()
            raise
        finally:
            child_in.close()
            child_out.close()
        reader, up_writer = await asyncio.open_connection(sock=up, limit=LINE_LIMIT)
        _, writer = await asyncio.open_connection(sock=down)
        child = _Child(process, writer, reader, up_writer)
        try:
            child.send({"t": "start", "kind": "llamacpp",
                        "options": self._options.model_dump(mode="json"),
                        "self_check": self._process.self_check,
                        "log_level": logging.getLevelName(
                            logging.getLogger().getEffectiveLevel())})
            async with asyncio.timeout(self._process.start_timeout_s):
                line = await _readline(reader)
            message = json.loads(line) if line else None
        except TimeoutError:
            await _stop(child)
            raise EngineNotReadyError(
                f"the model engine did not start within {self._process.start_timeout_s:g} "
                "s") from None
        except BaseException:
            await _stop(child)
            raise
        if message is None or message.get("t") != "ready":
            await _stop(child)
            if message is not None and message.get("t") == "fatal":
                raise EngineNotReadyError(str(message.get("message")))
            raise EngineNotReadyError(
                f"the model engine {describe_exit(process.returncode)} while starting"
                f"{_amx_hint(self._options.allow_amx)}")
        self.info = ModelInfo(**message["info"])
        child.reader_task = asyncio.create_task(self._read(child, reader))
        self._child, self._down = child, None
        self._supervisor = asyncio.create_task(self._supervise(child))
        log.info("model engine process %d ready (%s, context %d)", process.pid,
                 self.info.id, self.info.context_length)

    async def _read(self, child: _Child, reader: asyncio.StreamReader) -> None:
        """Route the child's lines to the flights and token counts until EOF."""
        while True:
            line = await _readline(reader)
            if not line:
                return
            msg = json.loads(line)
            kind = msg.get("t")
            if kind == "count":
                fut = self._counts.get(msg["n"])
                if fut is not None and not fut.done():
                    if "error" in msg:
                        fut.set_exception(error_from_wire(msg["error"]))
                    else:
                        fut.set_result(int(msg["tokens"]))
                continue
            flight = self._flights.get(msg.get("k", -1))
            if flight is None:
                continue  # a request the consumer already left
            if kind == "chunk":
                flight.queue.put_nowait(GenerationChunk(msg["x"], msg["p"], msg["c"],
                                                        msg.get("f")))
                if msg.get("f") is None:
                    continue
            elif kind == "end":
                flight.queue.put_nowait(None)
            elif kind == "err":
                flight.queue.put_nowait(error_from_wire(msg["error"]))
            flight.ended.set()

    async def _supervise(self, child: _Child) -> None:
        """Wait for the child to die; then fail what was in flight and restart it."""
        await child.process.wait()
        if child.reader_task is not None:
            with contextlib.suppress(Exception):
                await child.reader_task  # deliver every chunk the child did send
        if self._closing or self._child is not child:
            return
        reason = describe_exit(child.process.returncode)
        log.error("model engine process %d %s; in-flight requests fail, restarting",
                  child.process.pid, reason)
        self._child = None
        child.close()
        self._fail_all(EngineCrashedError(
            f"The model engine crashed during this request: {reason}. It is restarting; "
            "retry in a few seconds."))
        if time.monotonic() - child.started_at >= self._process.stable_after_s:
            self._backoff = self._process.restart_backoff_s
        while not self._closing:
            delay = self._backoff
            self._backoff = min(self._backoff * 2, self._process.restart_backoff_max_s)
            self._down = (f"crashed: {reason}; it is restarting "
                          f"(restart {len(self.restarts) + 1} in {delay:g} s)")
            await asyncio.sleep(delay)
            try:
                await self._start()
            except EngineNotReadyError as exc:
                self.restarts.append(Restart(reason, delay, time.monotonic(), ok=False))
                reason = f"failed to restart: {exc.message}"
                log.error("model engine restart failed: %s", exc.message)
                continue
            self.restarts.append(Restart(reason, delay, time.monotonic(), ok=True))
            return

    def _fail_all(self, error: ServingError) -> None:
        for flight in self._flights.values():
            flight.queue.put_nowait(error)
            flight.ended.set()
        for fut in self._counts.values():
            if not fut.done():
                fut.set_exception(error)


async def _readline(reader: asyncio.StreamReader) -> bytes:
    """The next line, or b"" when the child is gone (EOF or a reset socket)."""
    try:
        return await reader.readline()
    except (ConnectionError, OSError):
        return b""


async def _stop(child: _Child) -> None:
    """Ask the child to close (the line, then EOF), then kill it; always reap it. (It
    ignores SIGTERM: a process group's SIGTERM must not look like a crash.)"""
    child.send({"t": "close"})
    with contextlib.suppress(Exception):
        child.writer.close()
    process = child.process
    for stop, wait in ((None, CLOSE_TIMEOUT_S), (process.kill, 5.0)):
        if process.returncode is not None:
            break
        if stop is not None:
            with contextlib.suppress(ProcessLookupError):
                stop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await process.wait()
    child.close()
    if child.reader_task is not None:
        child.reader_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await child.reader_task


def _amx_hint(allow_amx: bool) -> str:
    """Name the likely cause when a child dies at start on an AMX CPU."""
    from serving.engines.cpu_features import cpu_flags

    if allow_amx and "amx_int8" in cpu_flags():
        return (" (this CPU has AMX and llama_amx is on: llama.cpp's AMX kernels crash "
                "on some of them; turn it off)")
    return ""
