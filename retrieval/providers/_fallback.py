"""A chain of providers tried in order: the first that answers wins.

Errors, timeouts and rate limits hand over to the next provider, and every attempt is
recorded, so the UI and the logs can say "brave: rate limited (HTTP 429) -> searxng: ok".
A provider that sent Retry-After is skipped until that time has passed instead of being
hammered on every question. Empty results are an answer, not a failure (unless asked).
Search filters go to each provider and every result is checked against them here, in
one place, whatever the provider did with them (retrieval/filters.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from retrieval.filters import NO_FILTERS, SearchFilters
from retrieval.providers._base import SearchProvider
from retrieval.providers._errors import AllProvidersFailed, ProviderError, ProviderRateLimited
from retrieval.types import SearchResult

__all__ = ["Attempt", "ChainResult", "FallbackSearch"]


class Attempt(NamedTuple):
    """One provider's try: status is "ok", "empty", "skipped" or a ProviderError status
    ("timeout", "rate_limited", "auth", "http_error", "bad_response", "unavailable",
    "error")."""

    provider: str
    status: str
    reason: str
    ms: float


@dataclass
class ChainResult:
    results: list[SearchResult]
    provider: str | None  # the provider whose results these are; None if all were empty
    attempts: list[Attempt] = field(default_factory=list)


class FallbackSearch:
    """Try ``providers`` in order. ``fallback_on_empty`` also hands over on zero hits
    (useful when the first provider is a narrow local index)."""

    def __init__(self, providers: Sequence[SearchProvider], *,
                 fallback_on_empty: bool = False) -> None:
        if not providers:
            raise ValueError("FallbackSearch needs at least one provider")
        self.providers = list(providers)
        self.fallback_on_empty = fallback_on_empty
        self._cooldown_until: dict[str, float] = {}  # provider name -> monotonic time

    @property
    def name(self) -> str:
        return ",".join(p.name for p in self.providers)

    async def search(self, query: str, k: int, filters: SearchFilters = NO_FILTERS
                     ) -> ChainResult:
        attempts: list[Attempt] = []
        empty: ChainResult | None = None
        for provider in self.providers:
            wait = self._cooldown_until.get(provider.name, 0.0) - time.monotonic()
            if wait > 0:
                attempts.append(Attempt(provider.name, "skipped",
                                        f"rate limited, retry in {wait:.0f} s", 0.0))
                continue
            started = time.perf_counter()
            try:
                results = await provider.search(query, k, filters)
            except ProviderError as exc:
                ms = (time.perf_counter() - started) * 1000
                attempts.append(Attempt(provider.name, exc.status, exc.message, ms))
                if isinstance(exc, ProviderRateLimited) and exc.retry_after:
                    self._cooldown_until[provider.name] = time.monotonic() + exc.retry_after
                continue
            ms = (time.perf_counter() - started) * 1000
            found = len(results)
            if filters.active:
                results = filters.apply(results,
                                        trust_undated=provider.dates_exact(filters))
            if results:
                attempts.append(Attempt(provider.name, "ok", f"{len(results)} results", ms))
                return ChainResult(results, provider.name, attempts)
            reason = (f"none of {found} results passed the filters" if found
                      else "no results")
            attempts.append(Attempt(provider.name, "empty", reason, ms))
            empty = empty or ChainResult([], provider.name, attempts)
            if not self.fallback_on_empty:
                return empty
        if empty is not None:
            return ChainResult([], empty.provider, attempts)
        raise AllProvidersFailed(attempts)
