"""Accounts for multi-user mode (``--multi-user``): who may sign in, and as whom.

Why these choices: passwords are hashed with argon2id (argon2-cffi, the OWASP first
choice; its defaults are RFC 9106's low-memory profile), never stored or logged as
given; each user also gets an API key for scripts and API clients, kept as a SHA-256
digest only (a random 256-bit key needs no slow hash) and shown once. The admin is
whoever can run ``search-app users`` on the server: there is no web admin to attack.

A user's principal is ``user:NAME``; their answers and threads are stored under it, so
one user can never list or open another's history or threads (share links stay public
by design; see docs/security.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from search_app.store import Store

__all__ = ["MIN_PASSWORD", "USER_PREFIX", "User", "UserError", "Users", "user_principal"]

USER_PREFIX = "user:"
MIN_PASSWORD = 10
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,31}$")
_HASHER = PasswordHasher()
# Verified when the name is unknown, so that a wrong name costs as long as a wrong
# password and the time does not tell which names exist.
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))
_EXISTS_TTL_S = 5.0


class UserError(ValueError):
    """A request the admin can fix (bad name, short password, unknown user)."""


@dataclass(frozen=True)
class User:
    name: str
    created: float


def user_principal(name: str) -> str:
    return USER_PREFIX + name


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class Users:
    """The accounts in the answer store. ``store`` is a callable because the app opens
    its store in the lifespan, after this object is built (None until then)."""

    def __init__(self, store: Callable[[], Store | None]) -> None:
        self._store = store
        self._seen: dict[str, tuple[bool, float]] = {}  # name -> (exists, checked at)

    def _open(self) -> Store:
        store = self._store()
        if store is None:
            raise UserError("the store is not open yet")
        return store

    # --- the admin's side (search-app users) -------------------------------------------

    def add(self, name: str, password: str) -> str:
        """Create ``name``; returns its API key (shown once, stored as a digest)."""
        if not _NAME.match(name):
            raise UserError("a user name is 1-32 of a-z 0-9 . _ - (starting with a letter "
                            "or digit)")
        if len(password) < MIN_PASSWORD:
            raise UserError(f"the password must have at least {MIN_PASSWORD} characters")
        key = "sa-" + secrets.token_urlsafe(32)
        if not self._open().add_user(name, _HASHER.hash(password), _digest(key)):
            raise UserError(f"user {name!r} exists already")
        self._seen.pop(name, None)
        return key

    def remove(self, name: str) -> None:
        if not self._open().remove_user(name):
            raise UserError(f"no user {name!r}")
        self._seen.pop(name, None)

    def new_key(self, name: str) -> str:
        """Replace ``name``'s API key (the old one stops working at once)."""
        key = "sa-" + secrets.token_urlsafe(32)
        if not self._open().set_user_key(name, _digest(key)):
            raise UserError(f"no user {name!r}")
        return key

    def list(self) -> list[User]:
        return [User(name, created) for name, created in self._open().users()]

    # --- the lock's side -----------------------------------------------------------------

    def verify_password(self, name: str, password: str) -> str | None:
        """The principal when the password is right, else None (CPU-bound: ~0.1 s)."""
        store = self._store()
        stored = store.user_password_hash(name) if store is not None else None
        try:
            _HASHER.verify(stored or _DUMMY_HASH, password)
        except (VerificationError, InvalidHashError):
            return None
        return user_principal(name) if stored else None

    async def averify_password(self, name: str, password: str) -> str | None:
        return await asyncio.to_thread(self.verify_password, name, password)

    def match_key(self, key: str | None) -> str | None:
        """The principal whose API key this is, else None."""
        store = self._store()
        if not key or not key.startswith("sa-") or store is None:
            return None
        name = store.user_by_key(_digest(key))
        return user_principal(name) if name else None

    def exists(self, principal: str) -> bool:
        """Whether a session's ``user:NAME`` still names a user (removed users are
        signed out within a few seconds; checked at most every 5 s per name)."""
        if not principal.startswith(USER_PREFIX):
            return False
        name = principal[len(USER_PREFIX):]
        known, checked = self._seen.get(name, (False, 0.0))
        if time.monotonic() - checked > _EXISTS_TTL_S:
            store = self._store()
            known = store is not None and store.user_password_hash(name) is not None
            self._seen[name] = (known, time.monotonic())
        return known
