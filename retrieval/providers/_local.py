"""The ``local`` provider: a thin adapter over the local index (built elsewhere).

It accepts either an async callable ``(query, k, filters) -> list[SearchResult]`` or any
object with such a ``search`` method, so this package never imports the index. The
filters are passed only when there are some, so that the index can search inside them
(a site filter on a 10k-document index must not be a post-filter of the top 50). Whatever the
index raises becomes a ProviderError, so a fallback chain treats it like any provider.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from retrieval.filters import NO_FILTERS, SearchFilters
from retrieval.providers._base import DEFAULT_TIMEOUT_S, SearchProvider
from retrieval.providers._errors import ProviderBadResponse, ProviderError, ProviderTimeout
from retrieval.types import SearchResult

__all__ = ["LocalProvider", "LocalSearch", "SearchFn"]

SearchFn = Callable[..., Awaitable[list[SearchResult]]]  # (query, k[, filters])


@runtime_checkable
class LocalSearch(Protocol):
    async def search(self, query: str, k: int, filters: SearchFilters = NO_FILTERS
                     ) -> list[SearchResult]: ...


class LocalProvider(SearchProvider):
    name = "local"

    def __init__(self, index: SearchFn | LocalSearch, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 name: str = "local") -> None:
        self._search: SearchFn = index.search if isinstance(index, LocalSearch) else index
        self.timeout_s = timeout_s
        self.name = name

    def dates_exact(self, filters: SearchFilters) -> bool:
        return True  # the index knows each document's date, or that it has none

    async def search(self, query: str, k: int, filters: SearchFilters = NO_FILTERS
                     ) -> list[SearchResult]:
        if k <= 0 or not query.strip():
            return []
        try:
            async with asyncio.timeout(self.timeout_s):
                hits = await (self._search(query, k, filters) if filters.active
                              else self._search(query, k))
        except ProviderError:
            raise
        except TimeoutError as exc:
            raise ProviderTimeout(self.name, f"no answer within {self.timeout_s:g} s") from exc
        except Exception as exc:  # the index is someone else's code: contain it here
            raise ProviderError(self.name, f"{type(exc).__name__}: {exc}"[:200]) from exc
        if not isinstance(hits, list) or not all(isinstance(h, SearchResult) for h in hits):
            raise ProviderBadResponse(self.name, "the local index must return SearchResults")
        # Normalise provider and rank so results look the same whichever source they came from.
        return [dataclasses.replace(hit, provider=self.name, rank=i)
                for i, hit in enumerate(hits[:k], start=1)]
