"""The web search providers: each is a request builder and a response parser.

Response shapes follow each provider's documented JSON; the loopback mocks in
``tests/support/loopback_web.py`` serve the same shapes, including error bodies.
"""

from __future__ import annotations

from typing import Any

import httpx

from retrieval.providers._base import HTTPProvider
from retrieval.providers._errors import (
    ProviderAuthError,
    ProviderBadResponse,
    ProviderError,
    ProviderRateLimited,
)
from retrieval.types import SearchResult

__all__ = [
    "BraveProvider",
    "GoogleProvider",
    "SearchApiProvider",
    "SearXNGProvider",
    "SerperProvider",
    "TavilyProvider",
]

_JSON = {"Accept": "application/json"}


class SearXNGProvider(HTTPProvider):
    """Self-hosted SearXNG (no key): ``GET /search?q=&format=json``.

    SearXNG answers 403 when the JSON format is not enabled on the instance, the most
    common setup mistake, so that error says how to fix it.
    """

    name = "searxng"
    default_base_url = "http://localhost:8080"
    requires_key = False

    def __init__(self, client: httpx.AsyncClient, *, language: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self.language = language

    def build_request(self, query: str, k: int) -> httpx.Request:
        params = {"q": query, "format": "json", "pageno": "1"}
        if self.language:
            params["language"] = self.language
        return self.client.build_request("GET", f"{self.base_url}/search", params=params,
                                         headers=_JSON)

    def status_error(self, response: httpx.Response) -> ProviderError:
        if response.status_code == 403:
            return ProviderAuthError(self.name, "HTTP 403: is 'json' listed in search.formats "
                                                "of the instance's settings.yml?", 403)
        return super().status_error(response)

    def parse(self, payload: dict[str, Any]) -> list[SearchResult]:
        hits = self.require_list(payload, "results")
        return self.to_results(hits, title="title", url="url", snippet="content",
                               dates=("publishedDate", "pubdate"))


class BraveProvider(HTTPProvider):
    """Brave Search API: ``GET /res/v1/web/search`` with ``X-Subscription-Token``."""

    name = "brave"
    default_base_url = "https://api.search.brave.com"

    def build_request(self, query: str, k: int) -> httpx.Request:
        return self.client.build_request(
            "GET", f"{self.base_url}/res/v1/web/search",
            params={"q": query, "count": str(min(k, 20))},
            headers={**_JSON, "X-Subscription-Token": self.key})

    def retry_after(self, response: httpx.Response) -> float | None:
        """Brave sends per-window lists ("1, 1419704"): wait for the exhausted window."""
        hint = super().retry_after(response)
        if hint is not None:
            return hint
        try:
            resets = [float(v) for v in response.headers.get("x-ratelimit-reset", "").split(",")]
            left = [float(v) for v in response.headers.get("x-ratelimit-remaining",
                                                           "").split(",")]
        except ValueError:
            return None
        exhausted = [r for r, n in zip(resets, left, strict=False) if n <= 0]
        return max(exhausted) if exhausted else (min(resets) if resets else None)

    def parse(self, payload: dict[str, Any]) -> list[SearchResult]:
        if payload.get("type") != "search":
            raise ProviderBadResponse(self.name, f"unexpected type {payload.get('type')!r}")
        web = payload.get("web") or {}  # Brave omits "web" when nothing matched
        hits = self.require_list(web, "results", optional=True) if isinstance(web, dict) \
            else []
        return self.to_results(hits, title="title", url="url", snippet="description",
                               dates=("page_age", "age"))


class GoogleProvider(HTTPProvider):
    """Google Programmable Search (Custom Search JSON API): ``GET /customsearch/v1``.

    The key travels in the query string as Google documents it; it is never logged.
    Google reports quota exhaustion as 403 ``rateLimitExceeded`` as well as 429.
    """

    name = "google"
    default_base_url = "https://customsearch.googleapis.com"
    _QUOTA_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded",
                                "dailyLimitExceeded", "quotaExceeded"})

    def __init__(self, client: httpx.AsyncClient, *, engine_id: str, **kwargs: Any) -> None:
        if not engine_id:
            raise ValueError("the google provider needs a search engine id (cx)")
        super().__init__(client, **kwargs)
        self.engine_id = engine_id

    def build_request(self, query: str, k: int) -> httpx.Request:
        return self.client.build_request(
            "GET", f"{self.base_url}/customsearch/v1",
            params={"key": self.key, "cx": self.engine_id, "q": query, "num": str(min(k, 10))},
            headers=_JSON)

    def status_error(self, response: httpx.Response) -> ProviderError:
        reasons = self._reasons(response)
        if response.status_code == 403 and reasons & self._QUOTA_REASONS:
            return ProviderRateLimited(self.name, f"quota exceeded: {self.error_message(response)}",
                                       retry_after=self.retry_after(response))
        if response.status_code == 400 and "API_KEY_INVALID" in reasons:  # Google's 401
            return ProviderAuthError(self.name, f"HTTP 400: {self.error_message(response)}", 400)
        return super().status_error(response)

    @staticmethod
    def _reasons(response: httpx.Response) -> set[str]:
        """Reasons from Google's error JSON: ``errors[].reason`` and ``details[].reason``."""
        try:
            error = response.json()["error"]
            entries = [*(error.get("errors") or []), *(error.get("details") or [])]
        except (ValueError, KeyError, TypeError, AttributeError):
            return set()
        return {str(e["reason"]) for e in entries if isinstance(e, dict) and "reason" in e}

    def parse(self, payload: dict[str, Any]) -> list[SearchResult]:
        if payload.get("kind") != "customsearch#search":
            raise ProviderBadResponse(self.name, f"unexpected kind {payload.get('kind')!r}")
        items = self.require_list(payload, "items", optional=True)  # absent: no results
        hits = [{**item, "_published": _meta_date(item)} if isinstance(item, dict) else item
                for item in items]
        return self.to_results(hits, title="title", url="link", snippet="snippet",
                               dates=("_published",))


def _meta_date(item: dict[str, Any]) -> Any:
    """Google has no date field; the page's own meta tags carry one, when at all."""
    pagemap = item.get("pagemap")
    tags = pagemap.get("metatags") if isinstance(pagemap, dict) else None
    if isinstance(tags, list) and tags and isinstance(tags[0], dict):
        return tags[0].get("article:published_time") or tags[0].get("og:updated_time")
    return None


class SerperProvider(HTTPProvider):
    """Serper (Google results): ``POST /search`` with ``X-API-KEY``."""

    name = "serper"
    default_base_url = "https://google.serper.dev"

    def build_request(self, query: str, k: int) -> httpx.Request:
        return self.client.build_request(
            "POST", f"{self.base_url}/search", json={"q": query, "num": min(k, 100)},
            headers={**_JSON, "X-API-KEY": self.key})

    def parse(self, payload: dict[str, Any]) -> list[SearchResult]:
        if "searchParameters" not in payload and "organic" not in payload:
            self.require_list(payload, "organic")  # raises with the keys it did find
        hits = self.require_list(payload, "organic", optional=True)
        return self.to_results(hits, title="title", url="link", snippet="snippet",
                               dates=("date",))


class SearchApiProvider(HTTPProvider):
    """SearchApi.io: ``GET /api/v1/search?engine=google&q=&api_key=``."""

    name = "searchapi"
    default_base_url = "https://www.searchapi.io"

    def build_request(self, query: str, k: int) -> httpx.Request:
        return self.client.build_request(
            "GET", f"{self.base_url}/api/v1/search",
            params={"engine": "google", "q": query, "num": str(min(k, 100)),
                    "api_key": self.key},
            headers=_JSON)

    def parse(self, payload: dict[str, Any]) -> list[SearchResult]:
        if "search_metadata" not in payload and "organic_results" not in payload:
            self.require_list(payload, "organic_results")
        hits = self.require_list(payload, "organic_results", optional=True)
        return self.to_results(hits, title="title", url="link", snippet="snippet",
                               dates=("date",))


class TavilyProvider(HTTPProvider):
    """Tavily: ``POST /search`` with a Bearer key. 432/433 are plan and spend limits,
    which, like 429, mean "ask someone else for now"."""

    name = "tavily"
    default_base_url = "https://api.tavily.com"
    rate_limit_statuses = frozenset({429, 432, 433})

    def build_request(self, query: str, k: int) -> httpx.Request:
        return self.client.build_request(
            "POST", f"{self.base_url}/search",
            json={"query": query, "max_results": min(k, 20), "search_depth": "basic"},
            headers={**_JSON, "Authorization": f"Bearer {self.key}"})

    def parse(self, payload: dict[str, Any]) -> list[SearchResult]:
        hits = self.require_list(payload, "results")
        return self.to_results(hits, title="title", url="url", snippet="content",
                               dates=("published_date",))
