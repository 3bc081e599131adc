"""Search providers against recorded-shape mock APIs on a real loopback server."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest

import retrieval.providers as providers
from retrieval.providers import (
    AllProvidersFailed,
    FallbackSearch,
    LocalProvider,
    ProviderAuthError,
    ProviderBadResponse,
    ProviderError,
    ProviderHTTPError,
    ProviderOptions,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
    SearchProvider,
    build_chain,
    build_provider,
    normalize_date,
)
from retrieval.types import SearchResult
from tests.support.loopback_web import API_KEY, LoopbackWeb

WEB_PROVIDERS = ["searxng", "brave", "google", "serper", "searchapi", "tavily"]
KEYED = [p for p in WEB_PROVIDERS if p != "searxng"]
RETRY_AFTER = {"searxng": 30.0, "brave": 1.0, "google": 60.0, "serper": 2.0,
               "searchapi": 5.0, "tavily": 7.0}
EXPECTED = [  # (title, url, snippet, published): markup and entities cleaned, dates ISO
    ("Alpha river report", "https://alpha.example/a", "The river rose & fell.", "2024-03-05"),
    ("Beta notes", "https://beta.example/b", "Notes on floods.", None),
    ("Gamma archive", "https://gamma.example/g", "Old records.", "2023-11-20"),
]


def options(web: LoopbackWeb, key: str = API_KEY, **overrides: object) -> ProviderOptions:
    values: dict[str, object] = {"timeout_s": 2.0, "google_cx": "cx-123"}
    for name in WEB_PROVIDERS:
        values[f"{name}_url"] = web.url(f"/{name}")
        if name != "searxng":
            values[f"{name}_api_key"] = key
    values.update(overrides)
    return ProviderOptions.model_validate(values)


def last_request(web: LoopbackWeb, name: str) -> dict:
    return [r for r in web.requests if r["path"].startswith(f"/{name}/")][-1]


def test_public_surface_is_exported() -> None:
    for name in providers.__all__:
        assert hasattr(providers, name), name
    assert set(providers.PROVIDER_NAMES) == {*WEB_PROVIDERS, "local"}


@pytest.mark.parametrize("name", WEB_PROVIDERS)
async def test_parses_documented_shape(web: LoopbackWeb, client: httpx.AsyncClient,
                                       name: str) -> None:
    provider = build_provider(name, options(web), client=client)
    results = await provider.search("river flood", 3)
    assert [(r.title, r.url, r.snippet, r.published) for r in results] == EXPECTED
    assert [r.rank for r in results] == [1, 2, 3]
    assert {r.provider for r in results} == {name}
    two = await provider.search("river flood", 2)
    assert [r.url for r in two] == [e[1] for e in EXPECTED[:2]]


async def test_requests_follow_each_api(web: LoopbackWeb, client: httpx.AsyncClient) -> None:
    """The mock answers 401/403 unless the key is where the provider documents it; here
    we also check the query and the result count went where they should."""
    for name in WEB_PROVIDERS:
        await build_provider(name, options(web), client=client).search("q1", 2)
    assert last_request(web, "searxng")["query"] == {"q": "q1", "format": "json", "pageno": "1"}
    brave = last_request(web, "brave")
    assert brave["query"] == {"q": "q1", "count": "2"}
    assert brave["headers"]["x-subscription-token"] == API_KEY
    assert last_request(web, "google")["query"] == {"key": API_KEY, "cx": "cx-123", "q": "q1",
                                                    "num": "2"}
    serper = last_request(web, "serper")
    assert serper["json"] == {"q": "q1", "num": 2} and serper["headers"]["x-api-key"] == API_KEY
    assert last_request(web, "searchapi")["query"]["engine"] == "google"
    tavily = last_request(web, "tavily")
    assert tavily["json"]["max_results"] == 2
    assert tavily["headers"]["authorization"] == f"Bearer {API_KEY}"


@pytest.mark.parametrize("name", WEB_PROVIDERS)
async def test_429_is_rate_limited_with_retry_after(web: LoopbackWeb, client: httpx.AsyncClient,
                                                    name: str) -> None:
    with pytest.raises(ProviderRateLimited) as info:
        await build_provider(name, options(web), client=client).search("__429__", 3)
    assert info.value.retry_after == pytest.approx(RETRY_AFTER[name])
    assert info.value.provider == name and info.value.status == "rate_limited"


@pytest.mark.parametrize("name", WEB_PROVIDERS)
async def test_malformed_json_and_changed_shape_are_bad_responses(
        web: LoopbackWeb, client: httpx.AsyncClient, name: str) -> None:
    provider = build_provider(name, options(web), client=client)
    with pytest.raises(ProviderBadResponse, match="malformed JSON") as info:
        await provider.search("__malformed__", 3)
    assert isinstance(info.value.__cause__, ValueError)  # translated where it entered
    with pytest.raises(ProviderBadResponse):  # never a silent []
        await provider.search("__shape__", 3)


@pytest.mark.parametrize("name", WEB_PROVIDERS)
async def test_no_hits_is_an_empty_list(web: LoopbackWeb, client: httpx.AsyncClient,
                                        name: str) -> None:
    assert await build_provider(name, options(web), client=client).search("__empty__", 5) == []


@pytest.mark.parametrize("name", KEYED)
async def test_wrong_key_is_an_auth_error_with_the_providers_words(
        web: LoopbackWeb, client: httpx.AsyncClient, name: str) -> None:
    provider = build_provider(name, options(web, key="wrong-key"), client=client)
    with pytest.raises(ProviderAuthError) as info:
        await provider.search("river", 3)
    assert info.value.http_status in (400, 401, 403)
    assert any(w in info.value.message.lower() for w in ("invalid", "unauthorized", "not valid"))


async def test_other_failures(web: LoopbackWeb, client: httpx.AsyncClient) -> None:
    with pytest.raises(ProviderHTTPError) as info:
        await build_provider("serper", options(web), client=client).search("__500__", 3)
    assert info.value.http_status == 500 and "backend exploded" in info.value.message
    with pytest.raises(ProviderRateLimited):  # Google's 403 dailyLimitExceeded is a quota
        await build_provider("google", options(web), client=client).search("__quota403__", 3)
    searxng = build_provider("searxng", options(web, searxng_url=web.url("/searxng/x")),
                             client=client)
    with pytest.raises(ProviderHTTPError):
        await searxng.search("river", 3)


async def test_timeout_bounds_the_whole_call(web: LoopbackWeb, client: httpx.AsyncClient) -> None:
    provider = build_provider("tavily", options(web, timeout_s=0.3), client=client)
    started = time.monotonic()
    with pytest.raises(ProviderTimeout):
        await provider.search("__slow__", 3)
    assert time.monotonic() - started < 1.5


async def test_unreachable_provider_is_unavailable(client: httpx.AsyncClient) -> None:
    provider = providers.SearXNGProvider(client, base_url="http://127.0.0.1:9", timeout_s=2)
    with pytest.raises(ProviderUnavailable):
        await provider.search("river", 3)


async def test_keys_never_reach_logs_reprs_or_messages(
        web: LoopbackWeb, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="retrieval")
    opts = options(web)
    google = build_provider("google", opts, client=client)  # key in the query string
    await google.search("river", 3)
    with pytest.raises(ProviderError) as info:
        await google.search("__429__", 3)
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("retrieval")]
    assert ours and all("provider=google" in m and "status=" in m for m in ours)
    assert not any(API_KEY in m for m in ours)
    assert API_KEY not in str(info.value) and API_KEY not in repr(google)
    assert API_KEY not in repr(opts) and API_KEY not in str(opts.model_dump())


async def test_fallback_chain_hands_over_and_reports(web: LoopbackWeb,
                                                     client: httpx.AsyncClient) -> None:
    async def index(query: str, k: int) -> list[SearchResult]:
        return [SearchResult("Local", "http://local/1", "from the index", "x", 9)]

    opts = options(web, brave_api_key="wrong", serper_url="http://127.0.0.1:9")
    chain = build_chain("brave, serper, searxng, local", opts, client=client, local=index)
    outcome = await chain.search("river", 3)
    assert outcome.provider == "searxng" and len(outcome.results) == 3
    assert [(a.provider, a.status) for a in outcome.attempts] == [
        ("brave", "auth"), ("serper", "unavailable"), ("searxng", "ok")]
    assert "subscription token is invalid" in outcome.attempts[0].reason
    assert all(a.ms >= 0 for a in outcome.attempts)

    limited = build_chain("tavily,local", opts, client=client, local=index)
    first = await limited.search("__429__ river", 3)
    assert first.provider == "local" and first.results[0].provider == "local"
    assert [(a.provider, a.status) for a in first.attempts] == [("tavily", "rate_limited"),
                                                                 ("local", "ok")]
    second = await limited.search("__429__ river", 3)  # Retry-After: 7 s not over yet
    assert second.attempts[0].status == "skipped" and "retry in" in second.attempts[0].reason


async def test_fallback_empty_and_total_failure(web: LoopbackWeb,
                                                client: httpx.AsyncClient) -> None:
    async def index(query: str, k: int) -> list[SearchResult]:
        return [SearchResult("Local", "http://local/1", "hit", "local", 1)]

    async def broken(query: str, k: int) -> list[SearchResult]:
        raise RuntimeError("index file missing")

    opts = options(web)
    outcome = await build_chain("searxng,local", opts, client=client, local=index).search(
        "__empty__", 3)
    assert outcome.results == [] and outcome.provider == "searxng"  # empty is an answer
    eager = build_chain("searxng,local", options(web, fallback_on_empty=True), client=client,
                        local=index)
    assert (await eager.search("__empty__", 3)).provider == "local"

    with pytest.raises(AllProvidersFailed) as info:
        await build_chain("searxng,local", opts, client=client, local=broken).search(
            "__malformed__", 3)
    assert [(a.provider, a.status) for a in info.value.attempts] == [
        ("searxng", "bad_response"), ("local", "error")]
    assert "index file missing" in str(info.value)


async def test_local_provider_adapts_callables_and_objects() -> None:
    class Index:
        async def search(self, query: str, k: int) -> list[SearchResult]:
            return [SearchResult(f"doc {i}", f"http://corpus/{i}", query, "idx", 0)
                    for i in range(5)]

    results = await LocalProvider(Index()).search("floods", 3)
    assert [(r.url, r.rank, r.provider) for r in results] == [
        ("http://corpus/0", 1, "local"), ("http://corpus/1", 2, "local"),
        ("http://corpus/2", 3, "local")]
    assert isinstance(LocalProvider(Index()), SearchProvider)

    async def wrong_type(query: str, k: int) -> list[SearchResult]:
        return [{"url": "x"}]  # type: ignore[list-item]

    with pytest.raises(ProviderBadResponse):
        await LocalProvider(wrong_type).search("q", 3)

    async def hangs(query: str, k: int) -> list[SearchResult]:
        await asyncio.sleep(10)
        return []

    with pytest.raises(ProviderTimeout):
        await LocalProvider(hangs, timeout_s=0.1).search("q", 3)


async def test_factory_says_what_is_missing(client: httpx.AsyncClient) -> None:
    with pytest.raises(ValueError, match="known: searxng"):
        build_provider("bing", ProviderOptions(), client=client)
    with pytest.raises(ValueError, match="brave_api_key"):
        build_provider("brave", ProviderOptions(), client=client)
    with pytest.raises(ValueError, match="google_cx"):
        build_provider("google", ProviderOptions(google_api_key="k"), client=client)
    with pytest.raises(ValueError, match="local index"):
        build_provider("local", ProviderOptions(), client=client)
    chain = build_chain(["searxng"], ProviderOptions(timeouts={"searxng": 1.5}), client=client)
    assert isinstance(chain, FallbackSearch) and chain.providers[0].timeout_s == 1.5


@pytest.mark.parametrize(("raw", "iso"), [
    ("2024-03-05T08:00:00", "2024-03-05"), ("2023-11-20T00:00:00Z", "2023-11-20"),
    ("2024-03-05 10:00:00+02:00", "2024-03-05"), ("Mar 5, 2024", "2024-03-05"),
    ("March 5, 2024", "2024-03-05"), ("5 Mar 2024", "2024-03-05"),
    ("Tue, 05 Mar 2024 08:00:00 GMT", "2024-03-05"), ("3 days ago", None), ("", None),
    (None, None), (12345, None), ("2024-13-45", None),
])
def test_normalize_date(raw: object, iso: str | None) -> None:
    assert normalize_date(raw) == iso
