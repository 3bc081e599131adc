"""The lock on every door, end to end: a real ``search-app serve`` with API keys (the
answer model is the session's llama.cpp model server, reached through the upstream
engine), driven over HTTP and in Debian's chromium.

What must hold: without a key every face that spends compute answers 401; with one it
works; a browser is sent to /login, signs in, asks, and its answer streams (the CSRF
token rides along); its session cookie is out of reach of scripts and of other sites;
a script request without the token is refused; signing out locks the page again; a
share link still opens for someone who has no key.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.app.support import parse_sse
from tests.conftest import API_KEY
from tests.support.server import ROOT, ServerProcess, run_server
from tests.ui.chromium import ARGS, BROWSER_MARKS, CHROMIUM

playwright_sync = pytest.importorskip("playwright.sync_api")
pytestmark = BROWSER_MARKS
APP_KEY = "app-key-for-browser-4242"
SPARE_KEY = "spare-key-7d1c90"
SESSION_SECRET = "session-secret-9f3e11"
SECRETS = [APP_KEY, SPARE_KEY, SESSION_SECRET, API_KEY]  # API_KEY: the upstream's
ANSWER_MS = 150_000
QUESTION = "Who designed the Eiffel Tower?"


@pytest.fixture(scope="module")
def locked_app(llama_server: ServerProcess, artifacts_dir: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    store = tmp_path_factory.mktemp("locked") / "store.sqlite"
    env = {"SEARCH_APP_UPSTREAM_API_KEY": API_KEY, "SEARCH_APP_SESSION_SECRET": SESSION_SECRET}
    with run_server(["serve", "--engine", "openai", "--upstream-url",
                     f"{llama_server.url}/v1", "--api-key", APP_KEY, "--api-key", SPARE_KEY,
                     "--provider", "local", "--store-path", str(store)], env=env,
                    log_path=artifacts_dir / "locked_app.log") as server:
        auth = {"Authorization": f"Bearer {APP_KEY}"}
        for _ in range(240):  # /health is up before the answer engine
            if httpx.get(f"{server.url}/api/info", headers=auth).json()["state"] == "ready":
                break
            time.sleep(0.5)
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


def test_api_faces_need_a_key(locked_app: ServerProcess) -> None:
    url = locked_app.url
    doors = [("POST", "/api/search", {"query": QUESTION}),
             ("POST", "/query", {"query": QUESTION, "search_uuid": "x1"}),
             ("GET", "/searxng/search?q=tower&format=json", None),
             ("GET", "/v1/models", None), ("GET", "/api/history?client_id=a", None)]
    for method, path, body in doors:
        r = httpx.request(method, url + path, json=body, timeout=30)
        assert r.status_code == 401, (path, r.status_code)
        assert r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(url + "/health").status_code == 200
    assert httpx.get(url + "/metrics").status_code == 200
    r = httpx.get(url + "/searxng/search?q=tower&format=json",
                  headers={"Authorization": f"Bearer {SPARE_KEY}"})
    assert r.status_code == 200 and r.json()["results"]


def test_browser_signs_in_asks_and_signs_out(locked_app: ServerProcess, browser: Any) -> None:
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(locked_app.url + "/t/nothing-yet")
    assert "/login?next=%2Ft%2Fnothing-yet" in page.url
    page.fill("#key", "wrong key")
    page.click("button[type=submit]")
    assert page.locator("#login-error").inner_text() == "That key is not valid."
    page.goto(locked_app.url + "/")  # back to the form with next=/
    page.fill("#key", APP_KEY)
    page.click("button[type=submit]")
    page.wait_for_url(locked_app.url + "/")
    cookie = next(c for c in context.cookies() if c["name"] == "search_app_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert "search_app_session" not in page.evaluate("document.cookie")
    assert APP_KEY not in cookie["value"]

    page.fill("#q", QUESTION)
    page.keyboard.press("Enter")
    turn = page.locator("article.turn").first
    turn.locator("xpath=self::*[@aria-busy='false']").wait_for(timeout=ANSWER_MS)
    assert turn.locator(".error").is_hidden(), turn.locator(".error").inner_text()
    assert "Eiffel Tower" in turn.locator(".card-title").all_inner_texts()

    # A script on the page (or an injected one) that skips the CSRF token is refused.
    status = page.evaluate("""async () => (await fetch('/api/search', {method: 'POST',
        headers: {'Content-Type': 'application/json'},
        body: JSON.stringify({query: 'x'})})).status""")
    assert status == 403
    page.click("#signout")
    page.wait_for_url(locked_app.url + "/login")
    assert page.evaluate("async () => (await fetch('/api/info')).status") == 401
    assert errors == []
    context.close()


def test_share_link_opens_without_a_key(locked_app: ServerProcess, browser: Any) -> None:
    r = httpx.post(locked_app.url + "/api/search", json={"query": QUESTION}, timeout=120,
                   headers={"Authorization": f"Bearer {APP_KEY}"})
    assert r.status_code == 200
    events = parse_sse(r.text)
    assert events[-1][0] == "done", events[-1]
    search_id = next(d for n, d in events if n == "search")["search_id"]
    context = browser.new_context()  # a stranger: no key, no session
    page = context.new_page()
    page.goto(f"{locked_app.url}/s/{search_id}")
    turn = page.locator("article.turn").first
    turn.locator("xpath=self::*[@aria-busy='false']").wait_for(timeout=30_000)
    assert turn.locator(".error").is_hidden()
    assert page.locator("h2.q").first.inner_text() == QUESTION
    context.close()


def test_no_secret_in_any_byte(locked_app: ServerProcess) -> None:
    """Drive every face and error path with distinctive secrets configured (two keys,
    the session secret, the upstream's key); no byte of any response, header or the
    server's log may hold one."""
    url, auth = locked_app.url, {"Authorization": f"Bearer {APP_KEY}"}
    captured: list[httpx.Response] = []
    with httpx.Client(timeout=120) as http:
        def go(method: str, path: str, **kw: Any) -> httpx.Response:
            r = http.request(method, url + path, **kw)
            captured.append(r)
            return r

        for path in ("/health", "/metrics", "/api/info", "/openapi.json", "/login",
                     "/", "/v1/models", "/api/history?client_id=x", "/s/none",
                     "/api/search/none", "/api/threads/none", "/no/such/path"):
            go("GET", path)
            go("GET", path, headers=auth)
        go("GET", "/metrics", headers=auth)
        go("POST", "/login", data={"key": APP_KEY[:-1], "next": "/"})
        go("POST", "/login", data={"key": SPARE_KEY, "next": "/"})
        go("POST", "/api/search", headers={"Authorization": f"Bearer {APP_KEY}x"},
           json={"query": "q"})
        go("POST", "/api/search", headers=auth, json={"query": ""})
        go("POST", "/api/search", headers=auth, json={"query": "q", "provider": "nope"})
        go("POST", "/api/search", headers=auth, json={"query": "q", "thread_id": "none"})
        go("POST", "/api/search", headers={**auth, "Content-Type": "application/json"},
           content=b'{"query": "x\\ud800"}')
        go("POST", "/api/search", headers=auth, content=b"{not json")
        go("POST", "/query", headers=auth, json={"query": "q", "search_uuid": ""})
        go("POST", "/v1/chat/completions", headers=auth,
           json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]})
        go("POST", "/v1/chat/completions", headers=auth,
           json={"model": "search-app", "messages": [{"role": "user", "content": "hi"}],
                 "n": 2})
        go("POST", "/v1/completions", headers=auth, json={"prompt": "hi"})
        go("DELETE", "/v1/models", headers=auth)
        go("GET", "/searxng/search?q=tower&format=json", headers=auth)
        go("GET", "/searxng/search?q=tower&format=html", headers=auth)
        go("POST", "/v1/embeddings", headers=auth, json={"model": "nope", "input": "x"})
        go("POST", "/v1/embeddings", headers=auth,
           json={"model": "all-MiniLM-L6-v2", "input": ""})
        go("POST", "/api/search", headers=auth, json={"query": QUESTION})  # a real answer
    for r in captured:
        raw = r.content.decode("utf-8", "replace") + repr(r.headers.multi_items())
        for secret in SECRETS:
            assert secret not in raw, (r.request.method, r.request.url.path, secret)
    log = locked_app.log()
    assert "answer engine ready" in log and "POST /login" in log  # it was logging
    for secret in SECRETS:
        assert secret not in log, secret


PASSWORDS = {"alice": "alice-password-1", "bob": "bob-password-22"}


@pytest.fixture(scope="module")
def accounts_app(llama_server: ServerProcess, artifacts_dir: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Multi-user mode; the accounts are made with the CLI, as an admin would."""
    data = tmp_path_factory.mktemp("accounts")
    store = data / "store.sqlite"
    for name, password in PASSWORDS.items():
        made = subprocess.run([sys.executable, "-m", "search_app.cli", "users", "add", name,
                               "--password-stdin", "--store-path", str(store)],
                              input=password + "\n", capture_output=True, text=True,
                              cwd=ROOT, timeout=120)
        assert made.returncode == 0, made.stderr
    env = {"SEARCH_APP_UPSTREAM_API_KEY": API_KEY, "SEARCH_APP_DATA_DIR": str(ROOT / "data")}
    with run_server(["serve", "--engine", "openai", "--upstream-url",
                     f"{llama_server.url}/v1", "--multi-user", "--provider", "local",
                     "--store-path", str(store)], env=env,
                    log_path=artifacts_dir / "accounts_app.log") as server:
        for _ in range(240):
            r = httpx.get(f"{server.url}/health")
            if r.status_code == 200 and "answer engine ready" in server.log():
                break
            time.sleep(0.5)
        yield server


def _sign_in(browser: Any, url: str, name: str) -> tuple[Any, Any]:
    context = browser.new_context()
    page = context.new_page()
    page.goto(url + "/")
    assert "/login" in page.url
    page.fill("#name", name)
    page.fill("#password", PASSWORDS[name])
    page.click("button[type=submit]")
    page.wait_for_url(url + "/")
    return context, page


def test_two_users_each_see_only_their_own(accounts_app: ServerProcess, browser: Any) -> None:
    url = accounts_app.url
    alice_ctx, alice = _sign_in(browser, url, "alice")
    alice.fill("#q", QUESTION)
    alice.keyboard.press("Enter")
    turn = alice.locator("article.turn").first
    turn.locator("xpath=self::*[@aria-busy='false']").wait_for(timeout=ANSWER_MS)
    assert turn.locator(".error").is_hidden(), turn.locator(".error").inner_text()
    thread_url = alice.url
    assert "/t/" in thread_url
    alice.click("#history-btn")
    alice.locator("#history-list a.hist").first.wait_for(timeout=10_000)
    assert alice.locator("#history-list a.hist").first.inner_text() == QUESTION
    listed = alice.evaluate(
        "async () => (await (await fetch('/api/history')).json()).threads[0].thread_id")
    assert thread_url.endswith(listed)

    bob_ctx, bob = _sign_in(browser, url, "bob")
    bob.click("#history-btn")
    # The list says "Loading…" in the same slot until /api/history answers: wait for the
    # final word, then check nothing of alice's is listed.
    bob.locator("#history-list li.none", has_text="No searches yet.").wait_for(timeout=10_000)
    assert bob.locator("#history-list a.hist").count() == 0
    bob.goto(thread_url)  # alice's conversation, by its address
    error = bob.locator("article.turn .error").first
    error.wait_for(timeout=30_000)
    assert "not stored here" in error.inner_text()
    shared = httpx.get(f"{url}/api/threads/{thread_url.rsplit('/', 1)[1]}",
                       headers={"Authorization": "Bearer nope"})
    assert shared.status_code == 401
    alice_ctx.close()
    bob_ctx.close()
