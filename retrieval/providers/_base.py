"""The provider interface and the shared HTTP plumbing of the web providers.

A provider is one method, ``search(query, k, filters) -> list[SearchResult]``, like
httpx's ``BaseTransport.handle_request``. Web providers subclass :class:`HTTPProvider`
and write two small hooks: ``build_request`` (where the key goes, how k and the filters
are passed in the provider's native form) and ``parse`` (where the hits live in their
JSON); ``dates_exact`` says whether the provider applied a date range exactly itself
(retrieval/filters.py: then results without a date may be trusted). Sending, the
timeout, status mapping, JSON decoding and logging live here once, so every provider
fails the same way.
"""

from __future__ import annotations

import asyncio
import html
import logging
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar

import httpx
from pydantic import SecretStr

from retrieval.filters import NO_FILTERS, SearchFilters
from retrieval.providers._dates import normalize_date
from retrieval.providers._errors import (
    ProviderAuthError,
    ProviderBadResponse,
    ProviderError,
    ProviderHTTPError,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
)
from retrieval.types import SearchResult

__all__ = ["DEFAULT_TIMEOUT_S", "HTTPProvider", "SearchProvider"]

DEFAULT_TIMEOUT_S = 5.0  # a search call that takes longer is better handed to the next one
_MAX_MESSAGE = 200  # provider error messages are untrusted text; keep them short

logger = logging.getLogger("retrieval.providers")
_TAG = re.compile(r"<[^>]{0,200}>")


class SearchProvider(ABC):
    """One search backend. ``search`` returns at most ``k`` results ranked 1..n; an empty
    list means "no hits", never "something went wrong" (that raises ProviderError)."""

    name: str

    @abstractmethod
    async def search(self, query: str, k: int, filters: SearchFilters = NO_FILTERS
                     ) -> list[SearchResult]: ...

    def dates_exact(self, filters: SearchFilters) -> bool:
        """Whether this provider applied ``filters``' date range exactly itself, so that
        a result it returns without a date is still inside the range."""
        return False


class HTTPProvider(SearchProvider):
    """Base for JSON-over-HTTP providers sharing one ``httpx.AsyncClient``."""

    default_base_url: ClassVar[str]
    requires_key: ClassVar[bool] = True
    rate_limit_statuses: ClassVar[frozenset[int]] = frozenset({429})

    def __init__(self, client: httpx.AsyncClient, *, api_key: SecretStr | str | None = None,
                 base_url: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if isinstance(api_key, str):
            api_key = SecretStr(api_key)
        if self.requires_key and (api_key is None or not api_key.get_secret_value()):
            raise ValueError(f"the {self.name} provider needs an API key")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.client = client
        self.api_key = api_key
        self.base_url = (base_url or self.default_base_url).rstrip("/")
        if httpx.URL(self.base_url).scheme not in ("http", "https"):
            raise ValueError(f"{self.name}: base URL must be http(s), got {self.base_url!r}")
        self.timeout_s = timeout_s

    def __repr__(self) -> str:  # never show the key
        return f"{type(self).__name__}(base_url={self.base_url!r}, timeout_s={self.timeout_s})"

    @property
    def key(self) -> str:
        return self.api_key.get_secret_value() if self.api_key else ""

    # -- hooks -------------------------------------------------------------------------
    @abstractmethod
    def build_request(self, query: str, k: int, filters: SearchFilters) -> httpx.Request:
        """The request for ``query``; the filters in the provider's native form where it
        has one (the chain checks every result against them afterwards anyway)."""

    @abstractmethod
    def parse(self, payload: dict[str, Any]) -> list[SearchResult]:
        """Results from a 2xx JSON body; raise ProviderBadResponse if the shape changed."""

    def status_error(self, response: httpx.Response) -> ProviderError:
        """Map a non-2xx response to an exception (providers may refine this)."""
        message = self.error_message(response)
        status = response.status_code
        if status in self.rate_limit_statuses:
            return ProviderRateLimited(self.name, f"rate limited (HTTP {status}): {message}",
                                       retry_after=self.retry_after(response))
        if status in (401, 403):
            return ProviderAuthError(self.name, f"HTTP {status}: {message}", status)
        return ProviderHTTPError(self.name, f"HTTP {status}: {message}", status)

    def retry_after(self, response: httpx.Response) -> float | None:
        return parse_retry_after(response.headers.get("retry-after"))

    # -- the one code path -------------------------------------------------------------
    async def search(self, query: str, k: int, filters: SearchFilters = NO_FILTERS
                     ) -> list[SearchResult]:
        query = query.strip()
        if k <= 0 or not query:
            return []
        request = self.build_request(query, k, filters)
        started = time.perf_counter()
        status: int | str = "-"
        try:
            async with asyncio.timeout(self.timeout_s):  # total, not per read: slow drips
                response = await self.client.send(request)
            status = response.status_code
        except (TimeoutError, httpx.TimeoutException) as exc:
            status = "timeout"
            raise ProviderTimeout(self.name, f"no answer within {self.timeout_s:g} s") from exc
        except httpx.HTTPError as exc:  # connect/read errors; the message may hold the URL
            status = "unavailable"
            raise ProviderUnavailable(self.name, f"{type(exc).__name__}") from exc
        finally:
            logger.info("search provider=%s status=%s ms=%.0f", self.name, status,
                        (time.perf_counter() - started) * 1000)
        if not response.is_success:
            raise self.status_error(response)
        try:
            payload = response.json()
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise ProviderBadResponse(
                self.name, f"malformed JSON ({response.headers.get('content-type', '?')}, "
                           f"{len(response.content)} bytes)") from exc
        if not isinstance(payload, dict):
            raise ProviderBadResponse(self.name, f"expected a JSON object, got "
                                                 f"{type(payload).__name__}")
        return self.parse(payload)[:k]

    # -- helpers for parse() -------------------------------------------------------------
    def require_list(self, payload: Mapping[str, Any], key: str, *,
                     optional: bool = False) -> list[Any]:
        value = payload.get(key)
        if value is None and optional:
            return []
        if not isinstance(value, list):
            raise ProviderBadResponse(self.name, f"response has no {key!r} list "
                                                 f"(keys: {sorted(payload)[:8]})")
        return value

    def to_results(self, items: Iterable[Any], *, title: str, url: str, snippet: str,
                   dates: tuple[str, ...] = ()) -> list[SearchResult]:
        """Build ranked results from hit dicts. Hits without a URL are skipped, but if
        every hit lacks one the shape has changed and that is an error, not "no results"."""
        items = list(items)
        results: list[SearchResult] = []
        for item in items:
            if not isinstance(item, dict):
                continue
            link = item.get(url)
            if not isinstance(link, str) or not link.startswith(("http://", "https://")):
                continue
            published = next((d for d in (normalize_date(item.get(f)) for f in dates) if d),
                             None)
            results.append(SearchResult(
                title=clean_text(item.get(title)) or link, url=link,
                snippet=clean_text(item.get(snippet)), provider=self.name,
                rank=len(results) + 1, published=published))
        if items and not results:
            raise ProviderBadResponse(self.name, f"none of {len(items)} hits has a {url!r}")
        return results

    def error_message(self, response: httpx.Response) -> str:
        """The provider's own words from its error JSON, short and with the key removed."""
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        message = _find_message(body) or response.reason_phrase or "error"
        if self.key:
            message = message.replace(self.key, "***")
        return message[:_MAX_MESSAGE]


def _find_message(body: Any) -> str | None:
    """Error JSON differs per provider: {"error": {"message"}}, {"error": "..."},
    {"message": ...}, {"detail": {"error": ...}}, {"detail": "..."}."""
    if isinstance(body, str):
        text = clean_text(body)
        return text or None
    if isinstance(body, dict):
        for key in ("error", "detail", "message", "msg"):
            if key in body:
                found = _find_message(body[key])
                if found:
                    return found
        error_text = body.get("detail") or body.get("code")
        return str(error_text) if error_text else None
    return None


def clean_text(value: Any) -> str:
    """Provider snippets carry markup (<strong>, &amp;); the model wants plain text."""
    if not isinstance(value, str):
        return ""
    return " ".join(html.unescape(_TAG.sub("", value)).split())


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After is seconds or an HTTP date; anything else is ignored."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
