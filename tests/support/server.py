"""Start a real ``search-app`` server process on 127.0.0.1 for integration tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.procs import ServerProcess, free_port, serve_process

__all__ = ["ROOT", "ServerProcess", "alive", "child_pids", "run_server"]

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


def child_pids(parent: int, match: str) -> list[int]:
    """Processes whose parent is ``parent`` and whose command line contains ``match``
    (e.g. a server's model engine process, to kill it in a fault test)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and match in cmdline and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie has exited: it only waits to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
