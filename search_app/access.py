"""One lock for every door: who may use the app when API keys are configured.

Why one middleware and not a dependency per route: a route that forgets its dependency
is an open door, and paths that no route serves must not tell a stranger whether they
exist. So every request passes here first and is sorted into one of three kinds:

    open        /health, /metrics (unless protect_metrics), /login, /logout, /static/*,
                /favicon.*; share links (/s/{id} and GET /api/search/{id}) unless
                public_share_links is off: a link is made to be passed on
    page        the browser UI's pages (/, /t/{id}): without a session, a redirect to
                /login
    everything else (/api/*, /query, /searxng/*, /v1/*, /mcp, unknown paths): a Bearer
                key or a session cookie, else 401 in OpenAI's error shape (MCP
                clients send the key as a header: search_app/mcp_server.py)

Browsers sign in once at ``/login`` with a key and get a session cookie: signed
(itsdangerous, a secret derived from the keys unless ``session_secret`` is set),
expiring, HttpOnly (scripts cannot read it) and SameSite=Strict (other sites' pages
cannot send it). A state-changing request that relies on the cookie must also carry the
session's CSRF token in ``X-CSRF-Token`` (the page has it in a meta tag); Bearer
requests need none, since a browser never adds that header by itself.

In multi-user mode (``--multi-user``, search_app/users.py) users sign in with a name
and password, and API clients may use a user's own API key; their principal is
``user:NAME`` and their history and threads are theirs alone.

The principal (``key#N`` for a configured key, ``user:NAME`` for a user; a session
carries the principal it was made for) goes to ``scope["state"]["principal"]``, so rate
limits count per key or user, not per address, and the routes know whose data it is.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.datastructures import Headers
from starlette.responses import RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from search_app.ratelimit import TokenBuckets
from search_app.users import USER_PREFIX, Users
from serving.api import error_response, unauthorized
from serving.auth import KeyRing, bearer_token
from serving.errors import PermissionDeniedError

__all__ = ["CSRF_HEADER", "SESSION_COOKIE", "Access", "AccessMiddleware", "Session",
           "Sessions", "safe_next"]

SESSION_COOKIE = "search_app_session"
CSRF_HEADER = "x-csrf-token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_OPEN_EXACT = frozenset({"/health", "/login", "/logout", "/favicon.ico", "/favicon.svg"})
_OPEN_PREFIXES = ("/static/",)
_SHARE = re.compile(r"^/(s/[^/]+|api/search/[^/]+)$")
_PAGE = re.compile(r"^/(t/[^/]+)?$")


@dataclass(frozen=True)
class Session:
    principal: str
    csrf: str


class Sessions:
    """Signed, expiring browser sessions: the cookie holds the principal and a CSRF
    token, nothing secret, and a forged or stale one is simply not a session."""

    def __init__(self, secret: bytes, max_age_s: int) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt="search-app-session")
        self.max_age_s = max_age_s

    @classmethod
    def for_keys(cls, keys: KeyRing, secret: str | None, max_age_s: int) -> Sessions:
        """The signing secret: ``session_secret`` when set, else one derived from the
        keys (replicas with the same keys accept each other's cookies; new keys sign
        everybody out)."""
        material = secret.encode() if secret else hmac.new(
            keys.fingerprint, b"search-app session secret", hashlib.sha256).digest()
        return cls(material, max_age_s)

    def issue(self, principal: str) -> tuple[str, Session]:
        session = Session(principal, secrets.token_urlsafe(24))
        return self._serializer.dumps({"p": session.principal, "c": session.csrf}), session

    def load(self, cookie: str | None) -> Session | None:
        if not cookie:
            return None
        try:
            data: Any = self._serializer.loads(cookie, max_age=self.max_age_s)
        except (BadSignature, ValueError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("p"), str) \
                or not isinstance(data.get("c"), str):
            return None
        return Session(data["p"], data["c"])


@dataclass(frozen=True)
class Access:
    """What the lock and the login page share (``app.state.access``; None: no keys and
    not multi-user). ``users`` is set in multi-user mode."""

    keys: KeyRing
    sessions: Sessions
    login_limiter: TokenBuckets
    users: Users | None = None

    def principal_exists(self, principal: str) -> bool:
        """Whether a session's principal still names a key or a user."""
        if principal.startswith(USER_PREFIX):
            return self.users is not None and self.users.exists(principal)
        return self.keys.has_name(principal)

    def match_key(self, key: str | None) -> str | None:
        """The principal of a Bearer key: a configured key, or a user's API key."""
        found = self.keys.match(key)
        if found is None and self.users is not None:
            found = self.users.match_key(key)
        return found

    # The users' side reads the store (a network round trip with PostgreSQL): off the
    # event loop. Configured keys are checked in memory.
    async def amatch_key(self, key: str | None) -> str | None:
        found = self.keys.match(key)
        if found is None and self.users is not None and key:
            found = await asyncio.to_thread(self.users.match_key, key)
        return found

    async def aprincipal_exists(self, principal: str) -> bool:
        if principal.startswith(USER_PREFIX):
            return await asyncio.to_thread(self.principal_exists, principal)
        return self.keys.has_name(principal)


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this site only (no ``//host``, no
    scheme), so the login page cannot be used to send people elsewhere."""
    if not target or not target.startswith("/") or target.startswith("//") \
            or "\\" in target or any(ord(c) < 32 for c in target):
        return "/"
    return target


class AccessMiddleware:
    def __init__(self, app: ASGIApp, access: Access, *, protect_metrics: bool = False,
                 public_share_links: bool = True) -> None:
        self.app = app
        self.access = access
        self.protect_metrics = protect_metrics
        self.public_share_links = public_share_links

    def _is_open(self, method: str, path: str) -> bool:
        if path in _OPEN_EXACT or path.startswith(_OPEN_PREFIXES):
            return True
        if path == "/metrics":
            return not self.protect_metrics
        return self.public_share_links and method in ("GET", "HEAD") \
            and _SHARE.match(path) is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if method == "OPTIONS" or self._is_open(method, path):  # CORS preflights too
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        state = scope.setdefault("state", {})
        principal = await self.access.amatch_key(bearer_token(headers.get("authorization")))
        if principal is not None:
            state["principal"] = principal
            await self.app(scope, receive, send)
            return
        session = self.access.sessions.load(_cookie(headers, SESSION_COOKIE))
        if session is None or not await self.access.aprincipal_exists(session.principal):
            if method in ("GET", "HEAD") and _PAGE.match(path) or (
                    not self.public_share_links and path.startswith("/s/")):
                target = path + ("?" + scope["query_string"].decode("latin-1")
                                 if scope.get("query_string") else "")
                response = RedirectResponse(f"/login?next={quote(target, safe='')}", 303)
                await response(scope, receive, send)
                return
            await unauthorized("Sign in first: send `Authorization: Bearer <key>`, or "
                               "sign in at /login in a browser.")(scope, receive, send)
            return
        if method not in _SAFE_METHODS and not hmac.compare_digest(
                (headers.get(CSRF_HEADER) or "").encode(), session.csrf.encode()):
            err = PermissionDeniedError(
                "This request relies on the session cookie but lacks its CSRF token "
                f"({CSRF_HEADER}); reload the page.")
            await error_response(403, err.to_dict())(scope, receive, send)
            return
        state["principal"] = session.principal
        state["session"] = session
        await self.app(scope, receive, send)


def _cookie(headers: Headers, name: str) -> str | None:
    for part in headers.get("cookie", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None
