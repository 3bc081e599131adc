"""API keys: kept as digests, checked in constant time, named without being shown.

Why digests: the process never needs a key back, only to recognise it, so a memory
dump, a log line or an error cannot show one. Why no early exit: the time a check takes
must not tell a caller how many keys it tried or which one nearly matched.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

__all__ = ["KeyRing", "bearer_token"]


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (None when absent)."""
    if not header or not header[:7].lower() == "bearer ":
        return None
    token = header[7:].strip()
    return token or None


class KeyRing:
    """The configured keys. A key's *name* (``key#1`` ..., its place in the list) is what
    rate limits and sessions use, so a principal is never the secret itself."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys if k]

    def __bool__(self) -> bool:
        return bool(self._digests)

    @property
    def fingerprint(self) -> bytes:
        """A digest of all keys: sessions are signed with a secret derived from it, so
        changing the keys signs every browser out (and replicas with the same keys
        accept each other's sessions)."""
        return hashlib.sha256(b"".join(sorted(self._digests))).digest()

    def has_name(self, name: str) -> bool:
        """Whether ``name`` (from a session) still names a configured key."""
        prefix, _, number = name.partition("#")
        return prefix == "key" and number.isdigit() and 1 <= int(number) <= len(self._digests)

    def match(self, key: str | None) -> str | None:
        """The key's name when it is one of the keys, else None."""
        if not key:
            return None
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        found = None
        for i, expected in enumerate(self._digests):  # every key compared, always
            if hmac.compare_digest(digest, expected) and found is None:
                found = f"key#{i + 1}"
        return found
