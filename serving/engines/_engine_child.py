"""The engine process: hosts the llama.cpp engine for :class:`ProcessEngine`.

Run as ``python -m serving.engines._engine_child IN_FD OUT_FD``, two socket-pair ends:
requests come in on IN_FD, answers go out on OUT_FD. It reads the ``start`` line, loads
the engine, runs the one-token self-check, answers ``ready`` (or one ``fatal`` line with
the reason), then serves ``gen``/``abort``/``count`` lines until ``close`` or EOF (the
parent is gone), and exits.

Why two sockets: generated text goes out from llama.cpp's worker thread itself, one
write per decode step for all sequences (``LlamaCppEngine.submit``'s sink), while this
process's event loop sleeps: on a small machine every extra wake-up per step takes a
core from llama.cpp's spinning threads for a moment (measured here: a process waking
150 times a second cost c=4 decoding ~8 %). Every write to OUT_FD, from either thread,
is one locked, blocking ``sendall`` of whole lines, so lines never interleave. Nothing
here is reachable from the network: the sockets are private to the two processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import logging
import signal
import socket
import sys
import threading
from typing import Any

from serving.engines._llamacpp_batch import ABORTED, Sequence
from serving.engines.base import self_check
from serving.engines.llamacpp import LlamaCppEngine
from serving.engines.options import LlamaCppOptions
from serving.engines.process import LINE_LIMIT, request_from_wire
from serving.errors import EngineError, ServingError, error_to_wire

log = logging.getLogger("serving.engines.child")


class _Out:
    """The parent-bound socket: whole lines, one locked blocking write per call."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        self._sock = sock
        self._lock = threading.Lock()

    def send(self, *messages: dict[str, Any]) -> None:
        data = b"".join(json.dumps(m).encode() + b"\n" for m in messages)
        try:
            with self._lock:
                self._sock.sendall(data)
        except OSError:  # the parent is gone; the read loop sees EOF and stops us
            pass


def _error(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, ServingError):
        return error_to_wire(exc)
    return error_to_wire(EngineError(f"The engine failed: {type(exc).__name__}: {exc}"))


class _Server:
    def __init__(self, engine: LlamaCppEngine, out: _Out) -> None:
        self.engine = engine
        self.out = out
        self.helpers: set[asyncio.Task[None]] = set()

    def sink(self, items: list[tuple[Sequence, Any]]) -> None:
        """One decode step's output, in llama.cpp's worker thread: one write."""
        messages = []
        for seq, item in items:
            key = int(seq.request_id)
            if item is ABORTED:
                messages.append({"t": "end", "k": key})
            elif isinstance(item, BaseException):
                messages.append({"t": "err", "k": key, "error": _error(item)})
            else:
                messages.append({"t": "chunk", "k": key, "x": item.text,
                                 "p": item.prompt_tokens, "c": item.completion_tokens,
                                 "f": item.finish_reason})
        self.out.send(*messages)

    async def generate(self, key: int, data: dict[str, Any]) -> None:
        request = request_from_wire(data)
        request.request_id = str(key)  # the worker's id: the parent's key, unique here
        try:
            await self.engine.submit(request, self.sink)
        except Exception as exc:  # noqa: BLE001 - refused before the first chunk
            if not isinstance(exc, ServingError):
                log.exception("generation %s failed", data.get("request_id"))
            self.out.send({"t": "err", "k": key, "error": _error(exc)})

    async def count(self, n: int, text: str) -> None:
        try:
            self.out.send({"t": "count", "n": n,
                           "tokens": await self.engine.count_tokens(text)})
        except Exception as exc:  # noqa: BLE001
            self.out.send({"t": "count", "n": n, "error": _error(exc)})

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.helpers.add(task)
        task.add_done_callback(self.helpers.discard)

    async def serve(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await reader.readline()
            except (ConnectionError, OSError):
                line = b""
            if not line:  # the parent is gone: stop
                break
            msg = json.loads(line)
            kind = msg.get("t")
            if kind == "gen":
                self.spawn(self.generate(int(msg["k"]), msg["req"]))
            elif kind == "abort":
                self.spawn(self.engine.abort(str(int(msg["k"]))))
            elif kind == "count":
                self.spawn(self.count(int(msg["n"]), msg["text"]))
            elif kind == "close":
                break
        for task in list(self.helpers):
            task.cancel()
        await asyncio.gather(*self.helpers, return_exceptions=True)


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the parent dies (EOF covers the rest)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _reason(exc: BaseException) -> str:
    return exc.message if isinstance(exc, ServingError) else f"{type(exc).__name__}: {exc}"


async def main(in_fd: int, out_fd: int) -> int:
    _die_with_parent()
    out = _Out(socket.socket(fileno=out_fd))
    reader, _ = await asyncio.open_connection(sock=socket.socket(fileno=in_fd),
                                              limit=LINE_LIMIT)
    line = await reader.readline()
    if not line:
        return 0
    start = json.loads(line)
    logging.getLogger().setLevel(start.get("log_level", "INFO"))
    try:
        if start.get("kind") != "llamacpp":
            raise ValueError(f"unknown engine kind {start.get('kind')!r}")
        engine = await LlamaCppEngine.create(LlamaCppOptions(**start["options"]))
    except Exception as exc:  # noqa: BLE001 - one line back to the parent
        out.send({"t": "fatal", "message": _reason(exc)})
        return 1
    try:
        if start.get("self_check", True):
            await self_check(engine)
    except Exception as exc:  # noqa: BLE001
        out.send({"t": "fatal",
                  "message": f"the model failed its start-up self-check: {_reason(exc)}"})
        await engine.aclose()
        return 1
    out.send({"t": "ready", "info": dataclasses.asdict(engine.info)})
    try:
        await _Server(engine, out).serve(reader)
    finally:
        await engine.aclose()
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s[engine]: %(message)s")
    # Ctrl-C and a process group's SIGTERM reach the parent too, which then closes us;
    # dying first would look like a crash to it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]))))
