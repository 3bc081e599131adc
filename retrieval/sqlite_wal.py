"""One way to open the project's SQLite files (embedding cache, answer store).

WAL so that readers never wait on a writer; ``synchronous=NORMAL`` because a crash may
lose the last transaction but never corrupts the file (fine for a cache and for stored
answers); one connection shared across threads behind the caller's lock.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

__all__ = ["connect_wal"]


def connect_wal(path: str | Path, busy_timeout_s: float = 30.0) -> sqlite3.Connection:
    """Open (creating the folder) ``path``, or an in-memory database for ``:memory:``.
    ``busy_timeout_s``: how long a write waits for another process's lock."""
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), check_same_thread=False, timeout=busy_timeout_s)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db
