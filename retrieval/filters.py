"""Search filters: which sites and which publication dates a search may return.

The controls follow Perplexity's Sonar API, the shape most search-backed chat clients
already send: ``search_domain_filter`` (up to 20 domains, a leading ``-`` excludes),
``search_recency_filter`` (hour, day, week, month, year) and
``search_after_date_filter`` / ``search_before_date_filter`` (``%m/%d/%Y``; ISO
``YYYY-MM-DD`` is accepted too).

Why filters are applied twice: each provider gets them in its native form where it has
one (SearXNG ``time_range``, Brave ``freshness``, Serper ``tbs``, ...), which makes the
provider search the right slice; then :meth:`SearchFilters.admits` checks every result
again, so a provider that ignores a filter (or maps it only roughly, "past 24 hours" for
"past hour") cannot leak a result outside it. A result's site is always known (its URL).
Its date often is not: a result with a known date outside the range is always dropped; a
result without a date is kept only from a provider that applied exactly this date range
itself (``SearchProvider.dates_exact``), because nothing else vouches for it. After the
pages are read, dates found in the pages are checked once more (the pipeline).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Literal
from urllib.parse import urlsplit

from retrieval.types import SearchResult

__all__ = ["MAX_DOMAINS", "NO_FILTERS", "FilterError", "Recency", "SearchFilters",
           "parse_filter_date"]

Recency = Literal["hour", "day", "week", "month", "year"]
RECENCY_SPAN: dict[str, timedelta] = {"hour": timedelta(hours=1), "day": timedelta(days=1),
                                      "week": timedelta(days=7), "month": timedelta(days=30),
                                      "year": timedelta(days=365)}
MAX_DOMAINS = 20  # Sonar's limit
_HOST = re.compile(r"^(?=.{1,253}$)([a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*"
                   r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_SONAR_DATE = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4})$")


class FilterError(ValueError):
    """A filter that cannot be applied as written; ``param`` names the request field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message, self.param = message, param


def parse_filter_date(value: str, param: str) -> date:
    """Sonar's ``%m/%d/%Y`` ("3/1/2025") or ISO ``YYYY-MM-DD``."""
    text = value.strip()
    try:
        if match := _SONAR_DATE.match(text):
            month, day, year = (int(g) for g in match.groups())
            return date(year, month, day)
        return date.fromisoformat(text)
    except ValueError:
        raise FilterError(f"{param} must be a date as M/D/YYYY (e.g. 3/1/2025) or "
                          f"YYYY-MM-DD, got {value[:40]!r}.", param) from None


def _domain(entry: str) -> str:
    """``Example.com``, ``www.example.com`` or ``https://example.com/x`` -> example.com."""
    text = entry.strip().lower()
    if "://" in text:
        text = urlsplit(text).hostname or ""
    text = text.split("/", 1)[0].rstrip(".").removeprefix("www.")
    if not _HOST.match(text) or "." not in text:
        raise FilterError(f"search_domain_filter: {entry[:80]!r} is not a domain "
                          "(like example.com, or -example.com to exclude it).",
                          "search_domain_filter")
    return text


def _host(url: str) -> str:
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return ""
    return host.rstrip(".").removeprefix("www.")


@dataclass(frozen=True)
class SearchFilters:
    """What a search may return. ``after``/``before`` are inclusive days (UTC); a
    ``recency`` has already been turned into ``after`` and is kept for the providers
    that take it natively."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    after: date | None = None
    before: date | None = None
    recency: Recency | None = None

    @classmethod
    def parse(cls, *, domains: Sequence[str] | None = None, recency: Recency | None = None,
              after: str | None = None, before: str | None = None,
              now: datetime | None = None) -> SearchFilters:
        """Filters from Sonar's request fields; raises :class:`FilterError` for a filter
        that is malformed or that no result could ever pass (an empty date range, a date
        in the future)."""
        now = now or datetime.now(UTC)
        today = now.date()
        domains = list(domains or [])
        if len(domains) > MAX_DOMAINS:
            raise FilterError(f"search_domain_filter takes at most {MAX_DOMAINS} domains, "
                              f"got {len(domains)}.", "search_domain_filter")
        include = [_domain(d) for d in domains if not d.strip().startswith("-")]
        exclude = [_domain(d.strip()[1:]) for d in domains if d.strip().startswith("-")]
        if overlap := sorted(set(include) & set(exclude)):
            raise FilterError(f"search_domain_filter both includes and excludes "
                              f"{overlap[0]}.", "search_domain_filter")
        start = parse_filter_date(after, "search_after_date_filter") if after else None
        end = parse_filter_date(before, "search_before_date_filter") if before else None
        if recency is not None:
            since = (now - RECENCY_SPAN[recency]).date()
            if start is not None and start > since:
                recency = None  # the explicit date is the binding one
            else:
                start = since
        if start is not None and start > today:
            raise FilterError(f"No results can be published after {start.isoformat()}: "
                              "that is in the future.", "search_after_date_filter")
        if start is not None and end is not None and start > end:
            raise FilterError(f"No results in that range: {start.isoformat()} is after "
                              f"{end.isoformat()}.",
                              "search_after_date_filter" if after else
                              "search_recency_filter")
        return cls(include=tuple(dict.fromkeys(include)),
                   exclude=tuple(dict.fromkeys(exclude)), after=start, before=end,
                   recency=recency)

    # -- what is asked -------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return bool(self.include or self.exclude or self.dated)

    @property
    def dated(self) -> bool:
        return self.after is not None or self.before is not None

    @property
    def only_recency(self) -> Recency | None:
        """The recency when it alone sets the range (what relative native filters such as
        SearXNG's ``time_range`` mean exactly); None when explicit dates are involved."""
        return self.recency if self.before is None else None

    def describe(self) -> str:
        """The filters in words, for messages and the UI ("site:example.com, from
        2025-03-01")."""
        parts = [f"site:{d}" for d in self.include] + [f"-site:{d}" for d in self.exclude]
        if self.only_recency is not None:
            parts.append(f"past {self.recency}")
        else:
            if self.after is not None:
                parts.append(f"from {self.after.isoformat()}")
            if self.before is not None:
                parts.append(f"until {self.before.isoformat()}")
        return ", ".join(parts)

    def site_operators(self) -> str:
        """The domains as search operators (``site:a OR site:b -site:c``), for providers
        whose only domain control is the query itself."""
        include = " OR ".join(f"site:{d}" for d in self.include)
        exclude = " ".join(f"-site:{d}" for d in self.exclude)
        return " ".join(part for part in (include, exclude) if part)

    # -- what passes ---------------------------------------------------------------------
    def admits_url(self, url: str) -> bool:
        host = _host(url)
        if not host:  # a local file (file://): on no site, so only a site list excludes it
            return not self.include

        def under(domain: str) -> bool:
            return host == domain or host.endswith("." + domain)
        if any(under(d) for d in self.exclude):
            return False
        return not self.include or any(under(d) for d in self.include)

    def admits_date(self, published: str | None, *, trust_undated: bool) -> bool:
        if not self.dated:
            return True
        if not published:
            return trust_undated
        try:
            day = date.fromisoformat(published[:10])
        except ValueError:
            return trust_undated
        return (self.after is None or day >= self.after) and \
            (self.before is None or day <= self.before)

    def admits(self, result: SearchResult, *, trust_undated: bool = False) -> bool:
        return self.admits_url(result.url) and \
            self.admits_date(result.published, trust_undated=trust_undated)

    def apply(self, results: Iterable[SearchResult], *, trust_undated: bool = False
              ) -> list[SearchResult]:
        """The results that pass, ranked 1..n again."""
        kept = [r for r in results if self.admits(r, trust_undated=trust_undated)]
        return [replace(r, rank=i) for i, r in enumerate(kept, 1)]


NO_FILTERS = SearchFilters()
