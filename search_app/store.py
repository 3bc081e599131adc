"""Finished answers, threads and Lepton replays in one SQLite file (WAL).

Why SQLite: zero setup on a fresh machine, one file under ``data_dir``, and WAL lets the
share pages read while an answer is written. Several replicas would share Postgres
instead (docs/deployment); this module is the seam. Only finished answers are written,
in one transaction, so a client that disconnects leaves nothing half-stored.

Calls are synchronous and fast; the async wrappers run them in a worker thread so the
event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrieval.sqlite_wal import connect_wal

__all__ = ["AnswerRecord", "Store"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS threads (
    id TEXT PRIMARY KEY, client_id TEXT, title TEXT NOT NULL, created REAL NOT NULL,
    updated REAL NOT NULL);
CREATE INDEX IF NOT EXISTS threads_client ON threads (client_id, updated);
CREATE TABLE IF NOT EXISTS answers (
    id TEXT PRIMARY KEY, thread_id TEXT NOT NULL REFERENCES threads(id),
    client_id TEXT, position INTEGER NOT NULL, query TEXT NOT NULL,
    search_query TEXT NOT NULL, answer TEXT NOT NULL, record TEXT NOT NULL,
    created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS answers_thread ON answers (thread_id, position);
CREATE TABLE IF NOT EXISTS lepton (
    search_uuid TEXT PRIMARY KEY, body TEXT NOT NULL, created REAL NOT NULL);
"""


@dataclass
class AnswerRecord:
    """One finished answer: what was streamed (``events``) plus fields for listings."""

    id: str
    thread_id: str
    client_id: str | None
    query: str
    search_query: str
    answer: str
    events: list[dict[str, Any]]
    created: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        data = {e["event"]: e["data"] for e in self.events}
        return {
            "id": self.id, "thread_id": self.thread_id, "query": self.query,
            "search_query": self.search_query, "answer": self.answer,
            "sources": data.get("sources", {}).get("sources", []),
            "related": data.get("related", {}).get("questions", []),
            "support": data.get("support"), "timings": data.get("timings"),
            "done": data.get("done"), "created": self.created, "events": self.events,
        }


# A user waits for the save before `done`: another process holding the database (a
# backup, a stray sqlite3 shell) costs at most this long, then a store_failed error.
BUSY_TIMEOUT_S = 5.0


class Store:
    def __init__(self, path: str | Path, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = connect_wal(path, busy_timeout_s)
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- answers and threads -------------------------------------------------------

    def save_answer(self, record: AnswerRecord) -> None:
        """Insert the answer and create or touch its thread, atomically."""
        now = record.created or time.time()
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO threads (id, client_id, title, created, updated) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET updated=excluded.updated",
                (record.thread_id, record.client_id, record.query[:200], now, now))
            position = self._db.execute(
                "SELECT COUNT(*) FROM answers WHERE thread_id=?", (record.thread_id,)
            ).fetchone()[0]
            self._db.execute(
                "INSERT INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.id, record.thread_id, record.client_id, position, record.query,
                 record.search_query, record.answer, json.dumps(record.events), now))

    def get_answer(self, answer_id: str) -> AnswerRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, thread_id, client_id, query, search_query, answer, record, "
                "created FROM answers WHERE id=?", (answer_id,)).fetchone()
        return None if row is None else _record(row)

    def thread_exists(self, thread_id: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM threads WHERE id=?",
                                    (thread_id,)).fetchone() is not None

    def thread(self, thread_id: str) -> list[AnswerRecord] | None:
        """The thread's answers in order; None when the thread is unknown."""
        if not self.thread_exists(thread_id):
            return None
        with self._lock:
            rows = self._db.execute(
                "SELECT id, thread_id, client_id, query, search_query, answer, record, "
                "created FROM answers WHERE thread_id=? ORDER BY position",
                (thread_id,)).fetchall()
        return [_record(r) for r in rows]

    def history(self, client_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """A client's threads, newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT t.id, t.title, t.created, t.updated, COUNT(a.id) FROM threads t "
                "LEFT JOIN answers a ON a.thread_id = t.id WHERE t.client_id=? "
                "GROUP BY t.id ORDER BY t.updated DESC LIMIT ?", (client_id, limit)).fetchall()
        return [{"thread_id": r[0], "title": r[1], "created": r[2], "updated": r[3],
                 "answers": r[4]} for r in rows]

    # --- search_with_lepton replays ------------------------------------------------

    def save_lepton(self, search_uuid: str, body: str) -> None:
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO lepton VALUES (?, ?, ?)",
                             (search_uuid, body, time.time()))

    def get_lepton(self, search_uuid: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT body FROM lepton WHERE search_uuid=?",
                                   (search_uuid,)).fetchone()
        return None if row is None else str(row[0])

    # --- async wrappers (worker thread) ----------------------------------------------

    async def asave_answer(self, record: AnswerRecord) -> None:
        await asyncio.to_thread(self.save_answer, record)

    async def aget_answer(self, answer_id: str) -> AnswerRecord | None:
        return await asyncio.to_thread(self.get_answer, answer_id)

    async def athread(self, thread_id: str) -> list[AnswerRecord] | None:
        return await asyncio.to_thread(self.thread, thread_id)

    async def ahistory(self, client_id: str, limit: int = 50) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.history, client_id, limit)

    async def asave_lepton(self, search_uuid: str, body: str) -> None:
        await asyncio.to_thread(self.save_lepton, search_uuid, body)

    async def aget_lepton(self, search_uuid: str) -> str | None:
        return await asyncio.to_thread(self.get_lepton, search_uuid)


def _record(row: tuple[Any, ...]) -> AnswerRecord:
    return AnswerRecord(id=row[0], thread_id=row[1], client_id=row[2], query=row[3],
                        search_query=row[4], answer=row[5], events=json.loads(row[6]),
                        created=row[7])
