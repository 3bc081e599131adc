"""The web search providers: each is a request builder and a response parser.

Response shapes follow each provider's documented JSON; the loopback mocks in
``tests/support/loopback_web.py`` serve the same shapes, including error bodies.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import httpx

from retrieval.filters import SearchFilters
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

    _TIME_RANGES = ("day", "week", "month", "year")  # SearXNG has no "hour"

    def build_request(self, query: str, k: int, filters: SearchFilters) -> httpx.Request:
        params = {"q": _with_sites(query, filters), "format": "json", "pageno": "1"}
        if self.language:
            params["language"] = self.language
        if (wanted := _covering_recency(filters, self._TIME_RANGES)) is not None:
            params["time_range"] = wanted  # engines without time ranges are left out
        return self.client.build_request("GET", f"{self.base_url}/search", params=params,
                                         headers=_JSON)

    def dates_exact(self, filters: SearchFilters) -> bool:
        return filters.only_recency in self._TIME_RANGES

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

    _FRESHNESS = {"hour": "pd", "day": "pd", "week": "pw", "month": "pm", "year": "py"}

    def build_request(self, query: str, k: int, filters: SearchFilters) -> httpx.Request:
        params = {"q": _with_sites(query, filters), "count": str(min(k, 20))}
        if (recency := filters.only_recency) is not None:
            params["freshness"] = self._FRESHNESS[recency]
        elif filters.dated:  # a custom range: YYYY-MM-DDtoYYYY-MM-DD
            start, end = _span(filters)
            params["freshness"] = f"{start.isoformat()}to{end.isoformat()}"
        return self.client.build_request(
            "GET", f"{self.base_url}/res/v1/web/search", params=params,
            headers={**_JSON, "X-Subscription-Token": self.key})

    def dates_exact(self, filters: SearchFilters) -> bool:
        return filters.dated and filters.only_recency != "hour"

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

    _RESTRICT = {"hour": "d1", "day": "d1", "week": "w1", "month": "m1", "year": "y1"}

    def build_request(self, query: str, k: int, filters: SearchFilters) -> httpx.Request:
        params = {"key": self.key, "cx": self.engine_id, "num": str(min(k, 10))}
        sites = [*filters.include, *filters.exclude]
        if len(sites) == 1:  # Google's own site parameter takes exactly one domain
            params["siteSearch"] = sites[0]
            params["siteSearchFilter"] = "i" if filters.include else "e"
            params["q"] = query
        else:
            params["q"] = _with_sites(query, filters)
        if (recency := filters.only_recency) is not None:
            params["dateRestrict"] = self._RESTRICT[recency]
        elif filters.dated:  # a range restricts by sorting on it (Google's documented way)
            start, end = _span(filters)
            params["sort"] = f"date:r:{start:%Y%m%d}:{end:%Y%m%d}"
        return self.client.build_request("GET", f"{self.base_url}/customsearch/v1",
                                         params=params, headers=_JSON)

    def dates_exact(self, filters: SearchFilters) -> bool:
        return filters.dated and filters.only_recency != "hour"

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

    def build_request(self, query: str, k: int, filters: SearchFilters) -> httpx.Request:
        body: dict[str, Any] = {"q": _with_sites(query, filters), "num": min(k, 100)}
        if (tbs := _google_tbs(filters)) is not None:
            body["tbs"] = tbs
        return self.client.build_request("POST", f"{self.base_url}/search", json=body,
                                         headers={**_JSON, "X-API-KEY": self.key})

    def dates_exact(self, filters: SearchFilters) -> bool:
        return filters.dated

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

    def build_request(self, query: str, k: int, filters: SearchFilters) -> httpx.Request:
        params = {"engine": "google", "q": _with_sites(query, filters),
                  "num": str(min(k, 100)), "api_key": self.key}
        if (recency := filters.only_recency) is not None:
            params["time_period"] = f"last_{recency}"
        elif filters.dated:
            start, end = _span(filters)
            params["time_period_min"] = _us_date(start)
            params["time_period_max"] = _us_date(end)
        return self.client.build_request("GET", f"{self.base_url}/api/v1/search",
                                         params=params, headers=_JSON)

    def dates_exact(self, filters: SearchFilters) -> bool:
        return filters.dated

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

    _TIME_RANGES = ("day", "week", "month", "year")

    def build_request(self, query: str, k: int, filters: SearchFilters) -> httpx.Request:
        body: dict[str, Any] = {"query": query, "max_results": min(k, 20),
                                "search_depth": "basic"}
        if filters.include:
            body["include_domains"] = list(filters.include)
        if filters.exclude:
            body["exclude_domains"] = list(filters.exclude)
        if (wanted := _covering_recency(filters, self._TIME_RANGES)) is not None:
            body["time_range"] = wanted
        elif filters.dated:
            start, end = _span(filters)
            body["start_date"], body["end_date"] = start.isoformat(), end.isoformat()
        return self.client.build_request(
            "POST", f"{self.base_url}/search", json=body,
            headers={**_JSON, "Authorization": f"Bearer {self.key}"})

    def dates_exact(self, filters: SearchFilters) -> bool:
        return filters.dated and filters.only_recency != "hour"

    def parse(self, payload: dict[str, Any]) -> list[SearchResult]:
        hits = self.require_list(payload, "results")
        return self.to_results(hits, title="title", url="url", snippet="content",
                               dates=("published_date",))


# --- the filters in the providers' native forms --------------------------------------

def _with_sites(query: str, filters: SearchFilters) -> str:
    """The query with Google-style ``site:`` operators, for providers whose only domain
    control is the query (SearXNG, Brave, Serper, SearchApi)."""
    operators = filters.site_operators()
    return f"{query} {operators}" if operators else query


def _covering_recency(filters: SearchFilters, offered: tuple[str, ...]) -> str | None:
    """The provider's relative range for a recency filter; "hour" asks for "day" (the
    smallest it has). Dates are days, so the chain's own check cannot tell an hour from
    a day: it drops what is dated before the start day, and results without a date."""
    recency = filters.only_recency
    if recency is None:
        return None
    return recency if recency in offered else offered[0]


def _span(filters: SearchFilters) -> tuple[date, date]:
    """The date range with both ends (an open end: the epoch, or today)."""
    return (filters.after or date(1970, 1, 1),
            filters.before or datetime.now(UTC).date())


def _us_date(day: date) -> str:
    return f"{day.month}/{day.day}/{day.year}"


def _google_tbs(filters: SearchFilters) -> str | None:
    """Google's ``tbs``: ``qdr:h|d|w|m|y`` or ``cdr:1,cd_min:M/D/YYYY,cd_max:M/D/YYYY``."""
    if (recency := filters.only_recency) is not None:
        return f"qdr:{recency[0]}"
    if filters.dated:
        start, end = _span(filters)
        return f"cdr:1,cd_min:{_us_date(start)},cd_max:{_us_date(end)}"
    return None
