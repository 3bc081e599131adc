"""Finished answers, threads, Lepton replays, accounts and the records of uploaded
documents (collections): SQLite or PostgreSQL.

Why two databases behind one class: SQLite needs no setup on a fresh machine (one file
under ``data_dir``, WAL so share pages read while an answer is written); PostgreSQL is
what several replicas share (``SEARCH_APP_STORE_URL=postgresql://...``). The SQL is the
same for both (upserts with ``ON CONFLICT``, ``?`` placeholders turned into psycopg's
``%s``); only the column types and the connection differ. Only finished answers are
written, in one transaction, so a client that disconnects leaves nothing half-stored.

Schema changes are numbered migrations applied at open (``schema_version``; under an
advisory lock on PostgreSQL, so replicas starting together do not race): the small,
dependency-free equivalent of Alembic for a handful of tables.

Calls are synchronous and fast; the async wrappers run them in a worker thread so the
event loop never waits on the disk or the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrieval.sqlite_wal import connect_wal

__all__ = ["AnswerRecord", "Store", "is_postgres_url"]

# Numbered migrations, each {dialect: statements}; version N is the N-th entry. Version
# 1 matches the tables of stores made before migrations existed (IF NOT EXISTS), so an
# old SQLite file is adopted as it is.
_MIGRATIONS: list[dict[str, str]] = [
    {"sqlite": """
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
    search_uuid TEXT PRIMARY KEY, body TEXT NOT NULL, created REAL NOT NULL)""",
     "postgres": """
CREATE TABLE IF NOT EXISTS threads (
    id TEXT PRIMARY KEY, client_id TEXT, title TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL, updated DOUBLE PRECISION NOT NULL);
CREATE INDEX IF NOT EXISTS threads_client ON threads (client_id, updated);
CREATE TABLE IF NOT EXISTS answers (
    id TEXT PRIMARY KEY, thread_id TEXT NOT NULL REFERENCES threads(id),
    client_id TEXT, position INTEGER NOT NULL, query TEXT NOT NULL,
    search_query TEXT NOT NULL, answer TEXT NOT NULL, record TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL);
CREATE INDEX IF NOT EXISTS answers_thread ON answers (thread_id, position);
CREATE TABLE IF NOT EXISTS lepton (
    search_uuid TEXT PRIMARY KEY, body TEXT NOT NULL, created DOUBLE PRECISION NOT NULL)"""},
    {"sqlite": """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, key_digest BLOB UNIQUE,
    created REAL NOT NULL)""",
     "postgres": """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, key_digest BYTEA UNIQUE,
    created DOUBLE PRECISION NOT NULL)"""},
    # 3: uploaded documents (search_app/collections.py); their index files live on disk
    {"sqlite": """
CREATE TABLE IF NOT EXISTS collections (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, name TEXT NOT NULL, created REAL NOT NULL,
    UNIQUE (owner, name));
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY, collection_id TEXT NOT NULL REFERENCES collections(id),
    filename TEXT NOT NULL, kind TEXT NOT NULL, size INTEGER NOT NULL,
    sha256 TEXT NOT NULL, sections INTEGER NOT NULL, passages INTEGER NOT NULL,
    created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS documents_collection ON documents (collection_id, created)""",
     "postgres": """
CREATE TABLE IF NOT EXISTS collections (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, name TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL, UNIQUE (owner, name));
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY, collection_id TEXT NOT NULL REFERENCES collections(id),
    filename TEXT NOT NULL, kind TEXT NOT NULL, size BIGINT NOT NULL,
    sha256 TEXT NOT NULL, sections INTEGER NOT NULL, passages INTEGER NOT NULL,
    created DOUBLE PRECISION NOT NULL);
CREATE INDEX IF NOT EXISTS documents_collection ON documents (collection_id, created)"""},
]
SCHEMA_VERSION = len(_MIGRATIONS)


def is_postgres_url(location: str) -> bool:
    return location.startswith(("postgresql://", "postgres://"))


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
# backup, a stray sqlite3 shell, a long lock in PostgreSQL) costs at most this long,
# then a store_failed error.
BUSY_TIMEOUT_S = 5.0


class Store:
    """``location``: a SQLite file path, or a ``postgresql://`` URL."""

    def __init__(self, location: str | Path, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.location = str(location)
        self.postgres = is_postgres_url(self.location)
        self.path = None if self.postgres else Path(location)
        self._busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._db: Any = self._connect()
        self._migrate()

    def _connect(self) -> Any:
        if not self.postgres:
            return connect_wal(self.location, self._busy_timeout_s)
        import psycopg  # only needed with a PostgreSQL store

        db = psycopg.connect(self.location, autocommit=True, connect_timeout=10)
        db.execute(f"SET lock_timeout = {int(self._busy_timeout_s * 1000)}")
        db.execute("SET statement_timeout = 30000")
        return db

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self._db.execute(self._sql(sql), params)

    @contextlib.contextmanager
    def _session(self, write: bool = False) -> Iterator[None]:
        """The lock, a live connection (PostgreSQL: reconnect after the server went
        away), and for writes one transaction: committed, or rolled back on error."""
        with self._lock:
            if self.postgres and (self._db.closed or self._db.broken):
                self._db = self._connect()
            if not write:
                yield
            elif self.postgres:
                with self._db.transaction():
                    yield
            else:
                with self._db:
                    yield

    def _migrate(self) -> None:
        dialect = "postgres" if self.postgres else "sqlite"
        with self._session(write=True):
            if self.postgres:  # replicas starting together take turns
                self._run("SELECT pg_advisory_xact_lock(7406)")
            self._run("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            current = self._run("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[version - 1][dialect].split(";"):
                    if statement.strip():
                        self._run(statement)
                self._run("INSERT INTO schema_version VALUES (?)", (version,))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- answers and threads -------------------------------------------------------

    def save_answer(self, record: AnswerRecord) -> None:
        """Insert the answer and create or touch its thread, atomically."""
        now = record.created or time.time()
        with self._session(write=True):
            self._run(
                "INSERT INTO threads (id, client_id, title, created, updated) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET updated=excluded.updated",
                (record.thread_id, record.client_id, record.query[:200], now, now))
            position = self._run("SELECT COUNT(*) FROM answers WHERE thread_id=?",
                                 (record.thread_id,)).fetchone()[0]
            self._run(
                "INSERT INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.id, record.thread_id, record.client_id, position, record.query,
                 record.search_query, record.answer, json.dumps(record.events), now))

    def get_answer(self, answer_id: str) -> AnswerRecord | None:
        with self._session():
            row = self._run(
                "SELECT id, thread_id, client_id, query, search_query, answer, record, "
                "created FROM answers WHERE id=?", (answer_id,)).fetchone()
        return None if row is None else _record(row)

    def thread_exists(self, thread_id: str) -> bool:
        with self._session():
            return self._run("SELECT 1 FROM threads WHERE id=?",
                             (thread_id,)).fetchone() is not None

    def thread(self, thread_id: str) -> list[AnswerRecord] | None:
        """The thread's answers in order; None when the thread is unknown."""
        if not self.thread_exists(thread_id):
            return None
        with self._session():
            rows = self._run(
                "SELECT id, thread_id, client_id, query, search_query, answer, record, "
                "created FROM answers WHERE thread_id=? ORDER BY position",
                (thread_id,)).fetchall()
        return [_record(r) for r in rows]

    def thread_owner(self, thread_id: str) -> str | None:
        """The client (or ``user:NAME``) that started the thread; None if unknown."""
        with self._session():
            row = self._run("SELECT client_id FROM threads WHERE id=?",
                            (thread_id,)).fetchone()
        return row[0] if row else None

    def history(self, client_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """A client's threads, newest first."""
        with self._session():
            rows = self._run(
                "SELECT t.id, t.title, t.created, t.updated, COUNT(a.id) FROM threads t "
                "LEFT JOIN answers a ON a.thread_id = t.id WHERE t.client_id=? "
                "GROUP BY t.id ORDER BY t.updated DESC LIMIT ?", (client_id, limit)).fetchall()
        return [{"thread_id": r[0], "title": r[1], "created": r[2], "updated": r[3],
                 "answers": r[4]} for r in rows]

    # --- users (multi-user mode; hashing and rules in search_app/users.py) -----------

    def add_user(self, name: str, password_hash: str, key_digest: bytes) -> bool:
        """False when the name is taken."""
        with self._session(write=True):
            return self._run(
                "INSERT INTO users VALUES (?, ?, ?, ?) ON CONFLICT(name) DO NOTHING",
                (name, password_hash, key_digest, time.time())).rowcount == 1

    def remove_user(self, name: str) -> bool:
        with self._session(write=True):
            return self._run("DELETE FROM users WHERE name=?", (name,)).rowcount == 1

    def set_user_key(self, name: str, key_digest: bytes) -> bool:
        with self._session(write=True):
            return self._run("UPDATE users SET key_digest=? WHERE name=?",
                             (key_digest, name)).rowcount == 1

    def users(self) -> list[tuple[str, float]]:
        with self._session():
            return [(r[0], r[1]) for r in self._run(
                "SELECT name, created FROM users ORDER BY name").fetchall()]

    def user_password_hash(self, name: str) -> str | None:
        with self._session():
            row = self._run("SELECT password_hash FROM users WHERE name=?",
                            (name,)).fetchone()
        return row[0] if row else None

    def user_by_key(self, key_digest: bytes) -> str | None:
        with self._session():
            row = self._run("SELECT name FROM users WHERE key_digest=?",
                            (key_digest,)).fetchone()
        return row[0] if row else None

    # --- collections of uploaded documents (search_app/collections.py) --------------

    def create_collection(self, owner: str, name: str, collection_id: str,
                          max_per_owner: int) -> str | None:
        """The id of ``owner``'s collection ``name``, made now if new; None when the
        owner already has ``max_per_owner`` collections (checked in the same
        transaction as the insert)."""
        with self._session(write=True):
            row = self._run("SELECT id FROM collections WHERE owner=? AND name=?",
                            (owner, name)).fetchone()
            if row is not None:
                return str(row[0])
            count = self._run("SELECT COUNT(*) FROM collections WHERE owner=?",
                              (owner,)).fetchone()[0]
            if count >= max_per_owner:
                return None
            self._run("INSERT INTO collections VALUES (?, ?, ?, ?)",
                      (collection_id, owner, name, time.time()))
            return collection_id

    def collection(self, owner: str, name: str) -> str | None:
        """The id of ``owner``'s collection ``name``; None when there is none."""
        with self._session():
            row = self._run("SELECT id FROM collections WHERE owner=? AND name=?",
                            (owner, name)).fetchone()
        return None if row is None else str(row[0])

    def collection_exists(self, collection_id: str) -> bool:
        with self._session():
            return self._run("SELECT 1 FROM collections WHERE id=?",
                             (collection_id,)).fetchone() is not None

    def collections(self, owner: str) -> list[dict[str, Any]]:
        """``owner``'s collections by name, with document counts."""
        with self._session():
            rows = self._run(
                "SELECT c.id, c.name, c.created, COUNT(d.id) FROM collections c LEFT JOIN "
                "documents d ON d.collection_id = c.id WHERE c.owner=? GROUP BY c.id, "
                "c.name, c.created ORDER BY c.name", (owner,)).fetchall()
        return [{"id": r[0], "name": r[1], "created": r[2], "documents": r[3]}
                for r in rows]

    def add_document(self, document: dict[str, Any], max_per_collection: int) -> bool:
        """Record an indexed document; False when its collection is full."""
        with self._session(write=True):
            count = self._run("SELECT COUNT(*) FROM documents WHERE collection_id=?",
                              (document["collection_id"],)).fetchone()[0]
            if count >= max_per_collection:
                return False
            self._run("INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      tuple(document[k] for k in _DOCUMENT_FIELDS))
            return True

    def documents(self, collection_id: str) -> list[dict[str, Any]]:
        with self._session():
            rows = self._run(f"SELECT {', '.join(_DOCUMENT_FIELDS)} FROM documents WHERE "
                             "collection_id=? ORDER BY created, id",
                             (collection_id,)).fetchall()
        return [dict(zip(_DOCUMENT_FIELDS, r, strict=True)) for r in rows]

    def document(self, document_id: str) -> dict[str, Any] | None:
        """The document with its collection's ``owner`` and ``collection`` name."""
        fields = ", ".join(f"d.{f}" for f in _DOCUMENT_FIELDS)
        with self._session():
            row = self._run(f"SELECT {fields}, c.owner, c.name FROM documents d JOIN "
                            "collections c ON c.id = d.collection_id WHERE d.id=?",
                            (document_id,)).fetchone()
        if row is None:
            return None
        return {**dict(zip(_DOCUMENT_FIELDS, row[:-2], strict=True)),
                "owner": row[-2], "collection": row[-1]}

    def delete_document(self, document_id: str) -> bool:
        with self._session(write=True):
            return self._run("DELETE FROM documents WHERE id=?",
                             (document_id,)).rowcount == 1

    def delete_collection(self, collection_id: str) -> bool:
        """The collection and its documents' records, atomically."""
        with self._session(write=True):
            self._run("DELETE FROM documents WHERE collection_id=?", (collection_id,))
            return self._run("DELETE FROM collections WHERE id=?",
                             (collection_id,)).rowcount == 1

    # --- search_with_lepton replays ------------------------------------------------

    def save_lepton(self, search_uuid: str, body: str) -> None:
        with self._session(write=True):
            self._run("INSERT INTO lepton VALUES (?, ?, ?) ON CONFLICT(search_uuid) DO "
                      "UPDATE SET body=excluded.body, created=excluded.created",
                      (search_uuid, body, time.time()))

    def get_lepton(self, search_uuid: str) -> str | None:
        with self._session():
            row = self._run("SELECT body FROM lepton WHERE search_uuid=?",
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

    async def athread_owner(self, thread_id: str) -> str | None:
        return await asyncio.to_thread(self.thread_owner, thread_id)

    async def asave_lepton(self, search_uuid: str, body: str) -> None:
        await asyncio.to_thread(self.save_lepton, search_uuid, body)

    async def aget_lepton(self, search_uuid: str) -> str | None:
        return await asyncio.to_thread(self.get_lepton, search_uuid)


_DOCUMENT_FIELDS = ("id", "collection_id", "filename", "kind", "size", "sha256", "sections",
                    "passages", "created")


def _record(row: tuple[Any, ...]) -> AnswerRecord:
    return AnswerRecord(id=row[0], thread_id=row[1], client_id=row[2], query=row[3],
                        search_query=row[4], answer=row[5], events=json.loads(row[6]),
                        created=row[7])
