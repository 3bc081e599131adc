"""The lock on every door (search_app/access.py), in process: which paths need a key,
the browser's sign-in, session cookies, CSRF, and limits that count per key.

The app is built but its lifespan is not run, so a request that gets past the lock
meets a 503 (nothing loaded) instead of a 401: that difference is what these tests read.
The same lock is driven end to end, over a real server and in a real browser, in
tests/ui/test_access_browser.py.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import httpx

from search_app.access import SESSION_COOKIE, Sessions, safe_next
from search_app.app import create_app
from search_app.config import Settings
from search_app.ratelimit import RateLimiter, RateLimitMiddleware, StreamCounter
from serving.auth import KeyRing

KEYS = ["first-key-abc", "second-key-xyz"]
# Every door that spends compute or provider keys (method, path, JSON body).
DOORS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/api/search", {"query": "hi"}),
    ("GET", "/api/history?client_id=x", None),
    ("GET", "/api/threads/t1", None),
    ("GET", "/api/info", None),
    ("POST", "/query", {"query": "hi", "search_uuid": "u1"}),
    ("GET", "/searxng/search?q=hi&format=json", None),
    ("GET", "/v1/models", None),
    ("POST", "/v1/chat/completions", {"model": "search-app",
                                      "messages": [{"role": "user", "content": "hi"}]}),
    ("POST", "/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": "hi"}),
    ("GET", "/no/such/path", None),  # unknown paths do not tell a stranger they are 404
]


def make_client(tmp_path: Path, **settings: Any) -> httpx.AsyncClient:
    base = {"api_keys": KEYS, "data_dir": tmp_path, "embedding_model": None}
    app = create_app(Settings(**{**base, **settings}))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t",
                             follow_redirects=False)


async def send(client: httpx.AsyncClient, method: str, path: str,
               body: dict[str, Any] | None, **kw: Any) -> httpx.Response:
    return await client.request(method, path, json=body, **kw)


async def sign_in(client: httpx.AsyncClient, key: str = KEYS[0], next_path: str = "/"
                  ) -> httpx.Response:
    return await client.post("/login", data={"key": key, "next": next_path})


async def csrf_of(client: httpx.AsyncClient) -> str:
    page = await client.get("/")
    assert page.status_code == 200, page.status_code
    match = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
    assert match, "the page must carry the session's CSRF token"
    return match.group(1)


async def test_every_door_is_locked_without_a_key(tmp_path: Path) -> None:
    async with make_client(tmp_path) as c:
        for method, path, body in DOORS:
            r = await send(c, method, path, body)
            assert r.status_code == 401, (method, path, r.status_code)
            assert r.headers["www-authenticate"] == "Bearer"
            assert r.json()["error"]["type"] == "authentication_error"
            r = await send(c, method, path, body, headers={"Authorization": "Bearer nope"})
            assert r.status_code == 401, (method, path)


async def test_every_door_opens_with_either_key(tmp_path: Path) -> None:
    async with make_client(tmp_path) as c:
        for key in KEYS:
            for method, path, body in DOORS:
                r = await send(c, method, path, body,
                               headers={"Authorization": f"Bearer {key}"})
                assert r.status_code != 401, (method, path, r.text)


async def test_open_paths_stay_open(tmp_path: Path) -> None:
    async with make_client(tmp_path) as c:
        for path in ("/health", "/metrics", "/login", "/static/app.js", "/favicon.svg",
                     "/s/some-answer", "/api/search/some-answer"):
            r = await c.get(path)
            assert r.status_code not in (401, 303), (path, r.status_code)


async def test_metrics_and_share_links_can_be_closed(tmp_path: Path) -> None:
    async with make_client(tmp_path, protect_metrics=True, public_share_links=False) as c:
        assert (await c.get("/metrics")).status_code == 401
        assert (await c.get("/api/search/abc")).status_code == 401
        r = await c.get("/s/abc")
        assert r.status_code == 303 and r.headers["location"] == "/login?next=%2Fs%2Fabc"
        assert (await c.get("/health")).status_code != 401


async def test_no_keys_means_no_lock(tmp_path: Path) -> None:
    async with make_client(tmp_path, api_keys=[]) as c:
        assert (await c.get("/api/info")).status_code == 200
        r = await c.get("/login?next=/t/abc")
        assert r.status_code == 303 and r.headers["location"] == "/t/abc"


async def test_pages_send_the_browser_to_sign_in(tmp_path: Path) -> None:
    async with make_client(tmp_path) as c:
        r = await c.get("/")
        assert r.status_code == 303 and r.headers["location"] == "/login?next=%2F"
        r = await c.get("/t/abc?x=1")
        assert r.headers["location"] == "/login?next=%2Ft%2Fabc%3Fx%3D1"
        form = await c.get("/login?next=/t/abc")
        assert form.status_code == 200 and 'name="next" value="/t/abc"' in form.text
        assert "script-src 'self'" in form.headers["content-security-policy"]


async def test_sign_in_sets_a_strict_httponly_session(tmp_path: Path) -> None:
    async with make_client(tmp_path) as c:
        wrong = await sign_in(c, "not-a-key")
        assert wrong.status_code == 401 and "That key is not valid." in wrong.text
        assert SESSION_COOKIE not in wrong.cookies
        r = await sign_in(c, KEYS[1], "/t/abc")
        assert r.status_code == 303 and r.headers["location"] == "/t/abc"
        cookie = r.headers["set-cookie"]
        assert cookie.startswith(f"{SESSION_COOKIE}=")
        for attribute in ("HttpOnly", "SameSite=strict", "Path=/", "Max-Age="):
            assert attribute.lower() in cookie.lower(), cookie
        assert KEYS[1] not in cookie  # the cookie names the key, never holds it
        assert (await c.get("/")).status_code == 200
        assert (await c.get("/api/info")).status_code == 200
        assert 'id="signout"' in (await c.get("/")).text


async def test_cookie_requests_that_change_state_need_the_csrf_token(tmp_path: Path) -> None:
    async with make_client(tmp_path) as c:
        await sign_in(c)
        token = await csrf_of(c)
        for method, path, body in DOORS:
            if method != "POST":
                continue
            r = await send(c, method, path, body)
            assert r.status_code == 403, (path, r.status_code)
            assert r.json()["error"]["type"] == "permission_error"
            r = await send(c, method, path, body, headers={"X-CSRF-Token": token + "x"})
            assert r.status_code == 403, path
            r = await send(c, method, path, body, headers={"X-CSRF-Token": token})
            assert r.status_code not in (401, 403), (path, r.status_code, r.text)
        # Bearer requests carry no ambient credential: no token needed
        c.cookies.clear()
        r = await c.post("/api/search", json={"query": "hi"},
                         headers={"Authorization": f"Bearer {KEYS[0]}"})
        assert r.status_code not in (401, 403)


async def test_sign_out_forgets_the_session(tmp_path: Path) -> None:
    async with make_client(tmp_path) as c:
        await sign_in(c)
        r = await c.post("/logout")
        assert r.status_code == 303 and r.headers["location"] == "/login"
        assert (await c.get("/api/info")).status_code == 401


async def test_forged_stale_and_foreign_sessions_are_refused(tmp_path: Path) -> None:
    keys = KeyRing(KEYS)
    ours = Sessions.for_keys(keys, None, 3600)
    cookie, session = ours.issue("key#1")
    assert ours.load(cookie) == session
    assert ours.load(cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB")) is None
    assert ours.load("garbage") is None and ours.load(None) is None
    # other keys derive another secret: changing the keys signs everybody out
    assert Sessions.for_keys(KeyRing(["other"]), None, 3600).load(cookie) is None
    # an explicit secret is used instead of the derived one
    assert Sessions.for_keys(keys, "s3cret", 3600).load(cookie) is None
    stale = Sessions.for_keys(keys, None, 0)
    old, _ = stale.issue("key#1")
    time.sleep(1.1)
    assert stale.load(old) is None
    async with make_client(tmp_path) as c:
        c.cookies.set(SESSION_COOKIE, Sessions.for_keys(KeyRing(["x"]), None, 60)
                      .issue("key#1")[0])
        assert (await c.get("/api/info")).status_code == 401
        c.cookies.set(SESSION_COOKIE, ours.issue("key#9")[0])  # names no key
        assert (await c.get("/api/info")).status_code == 401


def test_after_sign_in_only_local_paths() -> None:
    for bad in ("//evil.example/x", "https://evil.example", "/\\evil.example", "evil",
                "/\nx", "", None):
        assert safe_next(bad) == "/", bad
    assert safe_next("/t/abc?x=1") == "/t/abc?x=1"


async def test_sign_in_attempts_are_rate_limited(tmp_path: Path) -> None:
    async with make_client(tmp_path) as c:
        codes = [(await sign_in(c, "wrong")).status_code for _ in range(7)]
        assert codes[:5] == [401] * 5 and codes[-1] == 429, codes
        r = await sign_in(c, KEYS[0])
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1


async def test_rate_limits_count_per_key(tmp_path: Path) -> None:
    async with make_client(tmp_path, rate_limit_burst=1, rate_limit_per_minute=1) as c:
        def auth(key: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {key}"}

        first = await c.post("/api/search", json={"query": "a"}, headers=auth(KEYS[0]))
        assert first.status_code == 503  # past the limiter: nothing is loaded here
        again = await c.post("/api/search", json={"query": "a"}, headers=auth(KEYS[0]))
        assert again.status_code == 429 and int(again.headers["retry-after"]) >= 1
        other = await c.post("/api/search", json={"query": "a"}, headers=auth(KEYS[1]))
        assert other.status_code == 503  # another key has its own bucket


async def test_concurrent_stream_cap() -> None:
    release = asyncio.Event()
    started = 0

    async def slow_app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal started
        started += 1
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    app = RateLimitMiddleware(slow_app, RateLimiter(0, 1), paths=["/api/search"],
                              streams=StreamCounter(2))

    async def post(key: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(key, 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.post("/api/search", json={})

    held = [asyncio.create_task(post("10.0.0.1")) for _ in range(2)]
    while started < 2:
        await asyncio.sleep(0.01)
    refused = await post("10.0.0.1")
    assert refused.status_code == 429 and refused.headers["retry-after"] == "5"
    assert "2 answers in progress" in refused.json()["error"]["message"]
    other = asyncio.create_task(post("10.0.0.2"))  # another client is not affected
    while started < 3:
        await asyncio.sleep(0.01)
    release.set()
    assert [r.status_code for r in await asyncio.gather(*held, other)] == [200, 200, 200]
    assert (await post("10.0.0.1")).status_code == 200  # freed when they finished



async def test_a_place_is_free_before_the_answer_ends() -> None:
    """A client at the cap that starts its next answer the moment one ends must get it:
    the place is freed before the last byte goes out, not after the work that follows
    it (an eval run at --concurrency equal to the cap once got two 429s)."""
    streams = StreamCounter(1)
    held_at_end: list[int] = []

    async def app_with_cleanup(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        await asyncio.sleep(0.05)  # e.g. saving the thread after the stream ended

    async def client_send(message: Any) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body"):
            held_at_end.append(sum(streams._open.values()))

    async def receive() -> Any:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    app = RateLimitMiddleware(app_with_cleanup, RateLimiter(0, 1), paths=["/api/search"],
                              streams=streams)
    scope = {"type": "http", "method": "POST", "path": "/api/search",
             "client": ("10.0.0.1", 1), "headers": []}
    await app(scope, receive, client_send)
    assert held_at_end == [0]
    assert streams._open == {}  # and freed once, not twice
    await app(scope, receive, client_send)
    assert held_at_end == [0, 0] and streams._open == {}
