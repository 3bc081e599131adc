"""Multi-user mode (search_app/users.py): accounts made with the CLI, passwords hashed
with argon2id, per-user API keys, and history and threads that only their owner can
list or open (share links stay public). In process, with the scripted engine; the same
in a real browser against a real server in tests/ui/test_access_browser.py."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from search_app.cli import cli
from search_app.store import Store
from search_app.users import UserError, Users
from tests.app.support import ScriptedEngine, make_app, parse_sse

PASSWORDS = {"alice": "alice-password-1", "bob": "bob-password-22"}


def test_accounts_hash_passwords_and_keys(tmp_path: Path) -> None:
    store = Store(tmp_path / "store.sqlite")
    users = Users(lambda: store)
    key = users.add("alice", PASSWORDS["alice"])
    assert re.fullmatch(r"sa-[A-Za-z0-9_-]{43}", key)
    row = sqlite3.connect(tmp_path / "store.sqlite").execute(
        "SELECT password_hash, key_digest FROM users").fetchone()
    assert row[0].startswith("$argon2id$") and PASSWORDS["alice"] not in row[0]
    assert key.encode() not in row[1]
    assert users.verify_password("alice", PASSWORDS["alice"]) == "user:alice"
    assert users.verify_password("alice", "wrong-password") is None
    assert users.verify_password("nobody", PASSWORDS["alice"]) is None
    assert users.match_key(key) == "user:alice" and users.match_key("sa-nope") is None
    fresh = users.new_key("alice")
    assert users.match_key(key) is None and users.match_key(fresh) == "user:alice"
    for name, password in (("Alice!", "long-enough-1"), ("bob", "short")):
        with pytest.raises(UserError):
            users.add(name, password)
    with pytest.raises(UserError, match="exists already"):
        users.add("alice", "another-password")
    assert [u.name for u in users.list()] == ["alice"]
    assert users.exists("user:alice")
    users.remove("alice")
    assert not users.exists("user:alice") and users.verify_password(
        "alice", PASSWORDS["alice"]) is None
    with pytest.raises(UserError, match="no user"):
        users.remove("alice")


def test_users_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    where = ["--data-dir", str(tmp_path)]
    made = runner.invoke(cli, ["users", "add", "alice", "--password-stdin", *where],
                         input=PASSWORDS["alice"] + "\n")
    assert made.exit_code == 0 and re.search(r"^sa-\S+$", made.output, re.M), made.output
    again = runner.invoke(cli, ["users", "add", "alice", "--password-stdin", *where],
                          input=PASSWORDS["alice"] + "\n")
    assert again.exit_code == 1 and again.output.strip() == \
        "Error: user 'alice' exists already"
    short = runner.invoke(cli, ["users", "add", "bob", "--password-stdin", *where],
                          input="short\n")
    assert short.exit_code == 1 and "at least 10 characters" in short.output
    listed = runner.invoke(cli, ["users", "list", *where])
    assert listed.exit_code == 0 and listed.output.startswith("alice\tcreated ")
    assert runner.invoke(cli, ["users", "new-key", "alice", *where]).exit_code == 0
    assert runner.invoke(cli, ["users", "remove", "alice", *where]).exit_code == 0
    gone = runner.invoke(cli, ["users", "remove", "alice", *where])
    assert gone.exit_code == 1 and gone.output.strip() == "Error: no user 'alice'"


async def sign_in(c: httpx.AsyncClient, name: str) -> str:
    r = await c.post("/login", data={"name": name, "password": PASSWORDS[name],
                                     "next": "/"})
    assert r.status_code == 303, r.text
    page = await c.get("/")
    match = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
    assert match
    return match.group(1)


async def ask(c: httpx.AsyncClient, csrf: str, **body: Any) -> list[tuple[str, dict]]:
    r = await c.post("/api/search", json={"query": "Eiffel Tower?", "related": False,
                                          **body}, headers={"X-CSRF-Token": csrf})
    return parse_sse(r.text) if r.status_code == 200 else [("http", {"status":
                                                                    r.status_code})]


async def test_each_user_sees_only_their_own_history_and_threads(tmp_path: Path) -> None:
    app, store = make_app(tmp_path, ScriptedEngine(), settings={"multi_user": True})
    users: Users = app.state.access.users
    keys = {name: users.add(name, password) for name, password in PASSWORDS.items()}

    def client() -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t", follow_redirects=False)

    async with client() as alice, client() as bob, client() as stranger:
        form = await stranger.get("/login")
        assert 'name="name"' in form.text and 'name="password"' in form.text
        wrong = await stranger.post("/login", data={"name": "alice", "password": "nope"})
        assert wrong.status_code == 401 and "do not match" in wrong.text
        assert (await stranger.get("/api/history")).status_code == 401

        csrf = await sign_in(alice, "alice")
        events = await ask(alice, csrf)
        assert events[-1][0] == "done", events[-1]
        search_id, thread_id = events[0][1]["search_id"], events[0][1]["thread_id"]
        follow = await ask(alice, csrf, thread_id=thread_id)
        assert follow[-1][0] == "done"
        mine = (await alice.get("/api/history")).json()
        assert mine["client_id"] == "user:alice"
        assert [t["thread_id"] for t in mine["threads"]] == [thread_id]
        assert mine["threads"][0]["answers"] == 2

        bob_csrf = await sign_in(bob, "bob")
        theirs = await bob.get("/api/history", params={"client_id": "user:alice"})
        assert theirs.json() == {"client_id": "user:bob", "threads": []}
        assert (await bob.get(f"/api/threads/{thread_id}")).status_code == 404
        assert (await ask(bob, bob_csrf, thread_id=thread_id)) == [("http",
                                                                   {"status": 404})]
        assert (await bob.get(f"/api/search/{search_id}")).status_code == 200  # share link
        assert (await stranger.get(f"/api/search/{search_id}")).status_code == 200

        by_key = await stranger.get("/api/history",
                                    headers={"Authorization": f"Bearer {keys['alice']}"})
        assert [t["thread_id"] for t in by_key.json()["threads"]] == [thread_id]
        by_bob_key = await stranger.get(f"/api/threads/{thread_id}", headers={
            "Authorization": f"Bearer {keys['bob']}"})
        assert by_bob_key.status_code == 404

        users.remove("bob")  # signed out: the session names a user that is gone
        assert (await bob.get("/api/history")).status_code == 401
    store.close()
