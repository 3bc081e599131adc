"""The answer store, one suite run over both databases: a SQLite file and a real
PostgreSQL server on loopback (tests/support/postgres.py; skipped with the reason when
PostgreSQL is not installed)."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from search_app.store import SCHEMA_VERSION, AnswerRecord, Store
from tests.support.postgres import postgres_server


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        opened = Store(tmp_path / "store.sqlite")
    else:
        url = request.getfixturevalue("postgres_url")
        opened = Store(url)
        with opened._session(write=True):  # a clean slate per test
            for table in ("answers", "threads", "lepton", "users", "documents",
                          "collections"):
                opened._run(f"DELETE FROM {table}")
    yield opened
    opened.close()


def record(thread_id: str, query: str, client: str | None = "c1",
           created: float = 0.0) -> AnswerRecord:
    return AnswerRecord(id=uuid.uuid4().hex, thread_id=thread_id, client_id=client,
                        query=query, search_query=query, answer=f"answer to {query}",
                        events=[{"event": "done", "data": {"finish_reason": "stop"}}],
                        created=created)


def test_answers_threads_and_history(store: Store) -> None:
    first = record("t1", "first question", created=1000.0)
    store.save_answer(first)
    store.save_answer(record("t1", "follow-up", created=1001.5))
    store.save_answer(record("t2", "other thread", created=1002.25))
    store.save_answer(record("t3", "someone else's", client="c2", created=1003.0))
    got = store.get_answer(first.id)
    assert got is not None and got.query == "first question" and got.created == 1000.0
    assert got.as_dict()["done"] == {"finish_reason": "stop"}
    assert [r.query for r in store.thread("t1") or []] == ["first question", "follow-up"]
    assert store.thread("nope") is None and store.get_answer("nope") is None
    history = store.history("c1")
    assert [(h["thread_id"], h["answers"]) for h in history] == [("t2", 1), ("t1", 2)]
    assert history[1]["updated"] == 1001.5 and history[1]["title"] == "first question"
    assert store.history("c1", limit=1)[0]["thread_id"] == "t2"
    assert store.thread_owner("t3") == "c2" and store.thread_owner("nope") is None


def test_a_failed_save_leaves_nothing(store: Store) -> None:
    ok = record("t1", "q")
    store.save_answer(ok)
    duplicate = record("t9", "would start a thread")
    duplicate.id = ok.id  # the answer insert fails after the thread insert
    with pytest.raises(Exception):  # noqa: B017 - sqlite3 or psycopg IntegrityError
        store.save_answer(duplicate)
    assert store.thread("t9") is None  # the transaction was rolled back whole
    store.save_answer(record("t9", "fine now"))
    assert len(store.thread("t9") or []) == 1


def test_lepton_replays_and_users(store: Store) -> None:
    store.save_lepton("u1", "body one")
    store.save_lepton("u1", "body two")
    assert store.get_lepton("u1") == "body two" and store.get_lepton("nope") is None
    assert store.add_user("alice", "$argon2id$hash", b"\x01" * 32)
    assert not store.add_user("alice", "$argon2id$other", b"\x02" * 32)
    assert store.user_password_hash("alice") == "$argon2id$hash"
    assert store.user_by_key(b"\x01" * 32) == "alice" and store.user_by_key(b"x") is None
    assert store.set_user_key("alice", b"\x03" * 32)
    assert store.user_by_key(b"\x03" * 32) == "alice"
    assert [name for name, _ in store.users()] == ["alice"]
    assert store.remove_user("alice") and not store.remove_user("alice")


def test_concurrent_saves_keep_every_answer_in_order(store: Store) -> None:
    def save(n: int) -> None:
        for i in range(10):
            store.save_answer(record(f"thread-{n}", f"q{n}-{i}", created=time.time()))

    workers = [threading.Thread(target=save, args=(n,)) for n in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for n in range(4):
        assert [r.query for r in store.thread(f"thread-{n}") or []] == [
            f"q{n}-{i}" for i in range(10)]


def test_collections_owners_counts_and_limits(store: Store) -> None:
    """Uploaded documents' records (search_app/collections.py): names are per owner,
    the caps are checked in the same transaction as the insert."""
    first = store.create_collection("user:alice", "reports", "c" * 32, max_per_owner=2)
    assert first == "c" * 32
    assert store.create_collection("user:alice", "reports", "d" * 32, 2) == first  # kept
    assert store.create_collection("user:bob", "reports", "e" * 32, 2) == "e" * 32
    assert store.create_collection("user:alice", "notes", "f" * 32, 2) == "f" * 32
    assert store.create_collection("user:alice", "third", "a" * 32, 2) is None  # cap
    doc = {"id": "1" * 32, "collection_id": first, "filename": "r.pdf", "kind": "pdf",
           "size": 10, "sha256": "0" * 64, "sections": 2, "passages": 3, "created": 5.0}
    assert store.add_document(doc, max_per_collection=1)
    assert not store.add_document({**doc, "id": "2" * 32}, max_per_collection=1)  # full
    assert [(c["name"], c["documents"]) for c in store.collections("user:alice")] == [
        ("notes", 0), ("reports", 1)]
    assert store.collection("user:bob", "reports") == "e" * 32
    assert store.collection("user:bob", "notes") is None
    assert store.documents(first) == [doc]
    assert store.document(doc["id"]) == {**doc, "owner": "user:alice",
                                         "collection": "reports"}
    assert store.delete_collection(first) and store.document(doc["id"]) is None
    assert not store.delete_document(doc["id"])
    assert [c["name"] for c in store.collections("user:alice")] == ["notes"]


async def test_async_wrappers(store: Store) -> None:
    saved = record("ta", "async")
    await store.asave_answer(saved)
    assert (await store.aget_answer(saved.id)) is not None
    assert len(await store.athread("ta") or []) == 1
    assert (await store.athread_owner("ta")) == "c1"
    assert (await store.ahistory("c1"))[0]["thread_id"] == "ta"


def test_migrations_are_recorded_and_adopt_an_old_sqlite_store(tmp_path: Path) -> None:
    """A store made before migrations existed (no schema_version, no users table) is
    adopted as it is, and gains what is new."""
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE threads (id TEXT PRIMARY KEY, client_id TEXT, title TEXT NOT NULL,
            created REAL NOT NULL, updated REAL NOT NULL);
        CREATE TABLE answers (id TEXT PRIMARY KEY, thread_id TEXT NOT NULL, client_id TEXT,
            position INTEGER NOT NULL, query TEXT NOT NULL, search_query TEXT NOT NULL,
            answer TEXT NOT NULL, record TEXT NOT NULL, created REAL NOT NULL);
        CREATE TABLE lepton (search_uuid TEXT PRIMARY KEY, body TEXT NOT NULL,
            created REAL NOT NULL);
        INSERT INTO threads VALUES ('old', 'c1', 'kept', 1, 1);
        INSERT INTO answers VALUES ('a1', 'old', 'c1', 0, 'kept', 'kept', 'yes', '[]', 1);
    """)
    db.commit()
    db.close()
    store = Store(path)
    assert [r.id for r in store.thread("old") or []] == ["a1"]
    assert store.add_user("bob", "h", b"k" * 32)
    assert store._run("SELECT MAX(version) FROM schema_version").fetchone()[0] == \
        SCHEMA_VERSION
    store.close()
    Store(path).close()  # opening again applies nothing twice


def test_postgres_store_reconnects_after_the_server_drops_it(postgres_url: str) -> None:
    store = Store(postgres_url)
    store.save_answer(record("tr", "before"))
    killer = Store(postgres_url)
    with killer._session():
        killer._run("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE pid <> pg_backend_pid() AND datname = current_database()")
    killer.close()
    with pytest.raises(Exception):  # noqa: B017 - the one in flight fails, clearly
        store.get_answer("x")
    store.save_answer(record("tr", "after"))  # the next call reconnects
    assert [r.query for r in store.thread("tr") or []] == ["before", "after"]
    store.close()
