"""Search filters (Sonar's controls): parsing, the native form each provider receives on a
real loopback mock, enforcement on results in the chain, and the local index searching
inside them."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime
from pathlib import Path

import httpx
import pytest

from retrieval.corpus import SourceText
from retrieval.embeddings import EmbeddingCache
from retrieval.filters import FilterError, SearchFilters
from retrieval.index import LocalIndex
from retrieval.providers import build_chain, build_provider
from retrieval.types import SearchResult
from tests.retrieval.test_providers import WEB_PROVIDERS, options
from tests.support.loopback_web import LoopbackWeb
from tests.support.retrieval_fixtures import CountingModel

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)


def sent(web: LoopbackWeb, name: str) -> dict:
    """What the provider's last request carried: query parameters and JSON body merged."""
    last = [r for r in web.requests if r["path"].startswith(f"/{name}/")][-1]
    return {**last["query"], **last["json"]}


# --- parsing ------------------------------------------------------------------------

def test_sonar_fields_parse_into_one_range() -> None:
    f = SearchFilters.parse(domains=["Wikipedia.org", "-fr.wikipedia.org", "www.nasa.gov"],
                            after="3/1/2025", before="2025-03-05", now=NOW)
    assert f.include == ("wikipedia.org", "nasa.gov") and f.exclude == ("fr.wikipedia.org",)
    assert (f.after, f.before) == (date(2025, 3, 1), date(2025, 3, 5))
    assert f.describe() == ("site:wikipedia.org, site:nasa.gov, -site:fr.wikipedia.org, "
                            "from 2025-03-01, until 2025-03-05")
    assert f.site_operators() == "site:wikipedia.org OR site:nasa.gov -site:fr.wikipedia.org"
    week = SearchFilters.parse(recency="week", now=NOW)
    assert (week.after, week.only_recency, week.describe()) == (
        date(2025, 3, 3), "week", "past week")
    # an explicit date later than the recency's start is the binding one
    later = SearchFilters.parse(recency="year", after="3/5/2025", now=NOW)
    assert (later.after, later.recency) == (date(2025, 3, 5), None)
    assert not SearchFilters.parse(now=NOW).active


@pytest.mark.parametrize(("kwargs", "param", "words"), [
    ({"after": "3/5/2025", "before": "3/1/2025"}, "search_after_date_filter",
     "No results in that range"),
    ({"after": "4/1/2025"}, "search_after_date_filter", "in the future"),
    ({"recency": "day", "before": "1/1/2024"}, "search_recency_filter",
     "No results in that range"),
    ({"after": "13/45/2025"}, "search_after_date_filter", "M/D/YYYY"),
    ({"before": "yesterday"}, "search_before_date_filter", "M/D/YYYY"),
    ({"domains": ["not a domain"]}, "search_domain_filter", "is not a domain"),
    ({"domains": ["localhost"]}, "search_domain_filter", "is not a domain"),
    ({"domains": [f"site{i}.org" for i in range(21)]}, "search_domain_filter",
     "at most 20"),
    ({"domains": ["a.org", "-a.org"]}, "search_domain_filter", "both includes and excludes"),
])
def test_impossible_or_malformed_filters_are_refused(kwargs: dict, param: str,
                                                     words: str) -> None:
    with pytest.raises(FilterError) as info:
        SearchFilters.parse(now=NOW, **kwargs)
    assert info.value.param == param and words in info.value.message


def test_site_matching_is_by_host_not_by_text() -> None:
    f = SearchFilters.parse(domains=["wikipedia.org", "-de.wikipedia.org"], now=NOW)
    assert f.admits_url("https://en.wikipedia.org/wiki/Bee")
    assert f.admits_url("https://www.wikipedia.org/")
    assert not f.admits_url("https://de.wikipedia.org/wiki/Biene")
    assert not f.admits_url("https://notwikipedia.org/x")
    assert not f.admits_url("https://evil.example/wikipedia.org")
    assert not f.admits_url("https://wikipedia.org.evil.example/")
    assert not f.admits_url("file:///home/me/notes.md")  # on no site: not in the list
    assert SearchFilters.parse(domains=["-x.org"], now=NOW).admits_url("file:///a.md")


def test_dates_known_are_checked_and_undated_need_a_voucher() -> None:
    f = SearchFilters.parse(after="3/1/2025", before="3/5/2025", now=NOW)
    assert f.admits_date("2025-03-01", trust_undated=False)
    assert f.admits_date("2025-03-05T23:59:00", trust_undated=False)
    assert not f.admits_date("2025-02-28", trust_undated=True)  # known and outside: out
    assert not f.admits_date(None, trust_undated=False)
    assert f.admits_date(None, trust_undated=True)
    results = [SearchResult("a", "https://a.org/1", "", "p", 1, "2025-03-02"),
               SearchResult("b", "https://b.org/1", "", "p", 2, "2024-01-01"),
               SearchResult("c", "https://c.org/1", "", "p", 3, None)]
    assert [(r.title, r.rank) for r in f.apply(results)] == [("a", 1)]
    assert [(r.title, r.rank) for r in f.apply(results, trust_undated=True)] == [
        ("a", 1), ("c", 2)]


# --- native forms, on the loopback mocks ---------------------------------------------

NATIVE = {  # provider -> (recency "week", range 3/1..3/5/2025), as each one documents
    "searxng": ({"time_range": "week"}, {}),
    "brave": ({"freshness": "pw"}, {"freshness": "2025-03-01to2025-03-05"}),
    "google": ({"dateRestrict": "w1"}, {"sort": "date:r:20250301:20250305"}),
    "serper": ({"tbs": "qdr:w"}, {"tbs": "cdr:1,cd_min:3/1/2025,cd_max:3/5/2025"}),
    "searchapi": ({"time_period": "last_week"},
                  {"time_period_min": "3/1/2025", "time_period_max": "3/5/2025"}),
    "tavily": ({"time_range": "week"}, {"start_date": "2025-03-01", "end_date": "2025-03-05"}),
}


@pytest.mark.parametrize("name", WEB_PROVIDERS)
async def test_each_provider_gets_the_filters_in_its_native_form(
        web: LoopbackWeb, client: httpx.AsyncClient, name: str) -> None:
    provider = build_provider(name, options(web), client=client)
    recent, ranged = NATIVE[name]
    await provider.search("river", 3, SearchFilters.parse(recency="week", now=NOW))
    assert recent.items() <= sent(web, name).items()
    await provider.search("river", 3, SearchFilters.parse(after="3/1/2025",
                                                          before="3/5/2025", now=NOW))
    assert ranged.items() <= sent(web, name).items()
    await provider.search("river", 3, SearchFilters.parse(
        domains=["alpha.example", "beta.example", "-gamma.example"], now=NOW))
    got = sent(web, name)
    if name == "tavily":
        assert got["include_domains"] == ["alpha.example", "beta.example"]
        assert got["exclude_domains"] == ["gamma.example"] and got["query"] == "river"
    else:
        assert got["q"] == "river site:alpha.example OR site:beta.example -site:gamma.example"
    await provider.search("river", 3)  # no filters: nothing added
    assert not ({"time_range", "freshness", "dateRestrict", "tbs", "time_period",
                 "include_domains", "siteSearch"} & sent(web, name).keys())


async def test_google_takes_a_single_site_natively(web: LoopbackWeb,
                                                   client: httpx.AsyncClient) -> None:
    google = build_provider("google", options(web), client=client)
    await google.search("river", 3, SearchFilters.parse(domains=["-gamma.example"], now=NOW))
    got = sent(web, "google")
    assert (got["siteSearch"], got["siteSearchFilter"], got["q"]) == (
        "gamma.example", "e", "river")


# --- enforcement in the chain ---------------------------------------------------------
# The mocks ignore every filter and always return alpha (2024-03-05), beta (no date) and
# gamma (2023-11-20): exactly the provider that must not leak.

async def test_chain_drops_what_a_provider_let_through(web: LoopbackWeb,
                                                       client: httpx.AsyncClient) -> None:
    chain = build_chain("serper", options(web), client=client)
    sites = SearchFilters.parse(domains=["-alpha.example"], now=NOW)
    assert [r.url for r in (await chain.search("river", 3, sites)).results] == [
        "https://beta.example/b", "https://gamma.example/g"]
    # a range the provider applied exactly (tbs): the undated result is vouched for
    ranged = SearchFilters.parse(after="1/1/2024", before="12/31/2024", now=NOW)
    found = await chain.search("river", 3, ranged)
    assert [r.url for r in found.results] == ["https://alpha.example/a",
                                              "https://beta.example/b"]
    assert [r.rank for r in found.results] == [1, 2]


async def test_inexact_native_range_keeps_only_dated_results(
        web: LoopbackWeb, client: httpx.AsyncClient) -> None:
    # SearXNG has no "hour": it is asked for a day, so only results dated inside count
    chain = build_chain("searxng", options(web), client=client)
    hour = SearchFilters.parse(recency="hour", now=datetime(2024, 3, 5, 9, tzinfo=UTC))
    found = await chain.search("river", 3, hour)
    assert [r.url for r in found.results] == ["https://alpha.example/a"]
    assert sent(web, "searxng")["time_range"] == "day"


async def test_nothing_in_range_is_an_empty_answer_that_says_why(
        web: LoopbackWeb, client: httpx.AsyncClient) -> None:
    chain = build_chain("brave", options(web), client=client)
    found = await chain.search("river", 3, SearchFilters.parse(domains=["nowhere.example"],
                                                               now=NOW))
    assert found.results == []
    assert found.attempts[-1].status == "empty"
    assert found.attempts[-1].reason == "none of 3 results passed the filters"


# --- the local index searches inside the filters --------------------------------------

def test_local_index_filters_by_host_and_date(tmp_path: Path) -> None:
    data = tmp_path / "data"
    index = LocalIndex(data, CountingModel(EmbeddingCache(data / "cache" / "e.sqlite")))
    # many on-topic pages on one site, one weaker page on another: a post-filter of the
    # global top candidates would never see the other site's page
    bees = [SourceText(key=f"https://bees.example/{i}", kind="url",
                       url=f"https://bees.example/{i}", title=f"Bees {i}",
                       text=f"Honey bees make honey from nectar. Hive note {i}.")
            for i in range(60)]
    other = SourceText(key="https://garden.example/x", kind="url",
                       url="https://garden.example/x", title="Garden",
                       text="Flowers in the garden give nectar; bees visit them.")
    index.upsert([*bees, other])
    assert len({r.url for r in index.search("honey bees nectar", 10)}) == 10
    only = index.search("honey bees nectar", 5,
                        SearchFilters.parse(domains=["garden.example"], now=NOW))
    assert [r.url for r in only] == ["https://garden.example/x"]
    # files carry their modification day as their date; other documents have none
    notes = tmp_path / "notes"
    notes.mkdir()
    old, new = notes / "old.md", notes / "new.md"
    old.write_text("# Nectar\n\nBees turn nectar into honey, said the old note.\n")
    new.write_text("# Nectar\n\nBees turn nectar into honey, says the new note.\n")
    os.utime(old, (datetime(2020, 5, 1, tzinfo=UTC).timestamp(),) * 2)
    os.utime(new, (datetime(2025, 3, 2, tzinfo=UTC).timestamp(),) * 2)
    index.update([notes])
    recent = index.search("bees nectar honey note", 10,
                          SearchFilters.parse(after="1/1/2025", now=NOW))
    assert [(Path(r.url).name, r.published) for r in recent] == [("new.md", "2025-03-02")]
    index.close()
