"""Start a real ``search-app`` server process on 127.0.0.1 for integration tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.procs import ServerProcess, free_port, serve_process

__all__ = ["ROOT", "ServerProcess", "run_server"]

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def run_server(args: list[str], *, log_path: Path, env: dict[str, str] | None = None,
               ready_timeout: float = 180.0) -> Iterator[ServerProcess]:
    """Run ``search-app ARGS`` on a free port; ready once /health answers 200."""
    port = free_port()
    command = [sys.executable, "-m", "search_app.cli", *args, "--host", "127.0.0.1",
               "--port", str(port)]
    with serve_process(command, port=port, log_path=log_path, env=env, cwd=ROOT,
                       ready_timeout=ready_timeout) as server:
        yield server
