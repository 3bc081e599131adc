"""A throwaway PostgreSQL server on 127.0.0.1 for tests (Debian's PostgreSQL 15).

initdb refuses to run as root, so as root the server runs as the ``postgres`` system
user (Debian's package makes it) in a folder that user owns. Skips, with the reason,
when the binaries are not installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bench.procs import free_port

__all__ = ["PG_BIN", "postgres_server"]

PG_BIN = Path(os.environ.get("SEARCH_APP_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _as_owner(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.getuid() == 0 else command


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a fresh server; yields its URL (database ``postgres``, trust auth)."""
    if not (PG_BIN / "initdb").is_file():
        pytest.skip(f"PostgreSQL is not installed ({PG_BIN}/initdb missing: "
                    "apt-get install postgresql-15)")
    if os.getuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: initdb cannot run")
    root = Path(tempfile.mkdtemp(prefix="search-app-pg-"))
    root.chmod(0o755)
    if os.getuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", free_port()
    log = root / "server.log"

    def run(*command: str) -> None:
        done = subprocess.run(_as_owner([str(PG_BIN / command[0]), *command[1:]]),
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {done.stderr or done.stdout}")

    run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
        "--no-sync", "--no-instructions")
    run("pg_ctl", "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
        f"-p {port} -h 127.0.0.1 -k {root} -F", "start")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_owner([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate",
                                  "stop"]), capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
