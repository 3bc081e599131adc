"""Start a server process on 127.0.0.1, wait until it is ready, always stop it.

Used by the benchmarks (our server and its peers side by side) and by the tests.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

__all__ = ["ServerProcess", "free_port", "serve_process"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def serve_process(command: list[str], *, port: int, log_path: Path, ready_path: str = "/health",
                  env: dict[str, str] | None = None, cwd: Path | None = None,
                  ready_timeout: float = 180.0) -> Iterator[ServerProcess]:
    """Run ``command`` (which must listen on ``port``) until ``ready_path`` answers 200."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                **(env or {})}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = log_path.open("wb")
    process = subprocess.Popen(command, cwd=cwd, env=full_env, stdout=log_file,
                               stderr=subprocess.STDOUT, start_new_session=True)
    server = ServerProcess(process, port, log_path)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n"
                                   f"{server.log()[-4000:]}")
            try:
                if httpx.get(f"{server.url}{ready_path}", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready in {ready_timeout}s:\n"
                                   f"{server.log()[-4000:]}")
            time.sleep(0.25)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log_file.close()
