"""Page reading over real HTTP on 127.0.0.1: extraction, budgets, SSRF, odd bodies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from retrieval.extract import ExtractionError, decode, extract
from retrieval.reader import PageReader, ReaderOptions, make_reader_client
from retrieval.ssrf import SSRFPolicy
from retrieval.types import Document, SearchResult
from tests.support.loopback_web import (
    BOILERPLATE,
    CP1251_TEXT,
    LATIN1_TEXT,
    LoopbackWeb,
    serve_loopback_web,
)

LOOPBACK = ["127.0.0.1/32"]


@pytest.fixture(scope="module")
def web() -> Iterator[LoopbackWeb]:
    with serve_loopback_web() as server:
        yield server


@pytest.fixture
async def reader() -> AsyncIterator[PageReader]:
    async with PageReader(ReaderOptions(allow_cidrs=LOOPBACK, budget_s=3.0)) as page_reader:
        yield page_reader


def hit(web: LoopbackWeb, path: str, rank: int = 1) -> SearchResult:
    return SearchResult(title=f"result {path}", url=web.url(path), snippet=f"snippet of {path}",
                        provider="test", rank=rank, published="2020-01-01")


async def read_one(reader: PageReader, result: SearchResult, **kw: float) -> Document:
    [doc] = await reader.read([result], **kw)
    return doc


def assert_fallback(doc: Document, *words: str) -> None:
    assert doc.status == "snippet_fallback", doc
    assert doc.text == doc.result.snippet and doc.title == doc.result.title
    assert doc.reason and all(w in doc.reason for w in words), doc.reason


async def test_article_main_text_title_and_date(web: LoopbackWeb, reader: PageReader) -> None:
    doc = await read_one(reader, hit(web, "/page/article"))
    assert doc.status == "ok" and doc.reason is None
    assert doc.title == "Flood waters recede in Riverton"
    assert doc.published == "2024-03-05"  # from the page, not the provider's 2020-01-01
    assert "northern embankment held" in doc.text and "school reopened" in doc.text
    assert not any(b in doc.text for b in BOILERPLATE)
    assert "Ten cats" not in doc.text
    assert doc.fetch_ms is not None and doc.fetch_ms > 0


async def test_plain_text_pdf_and_redirect(web: LoopbackWeb, reader: PageReader) -> None:
    plain, pdf, moved = await reader.read([hit(web, "/page/plain"), hit(web, "/page/pdf"),
                                           hit(web, "/redirect/ok")])
    assert plain.status == "ok" and "peaked at 4.2 metres" in plain.text
    assert pdf.status == "ok" and "river peaked at 4.2 m" in pdf.text
    assert (pdf.title, pdf.published) == ("Riverton flood report", "2024-03-05")
    assert moved.status == "ok" and "northern embankment" in moved.text
    assert moved.url == web.url("/redirect/ok")  # the document keeps its search result


async def test_bad_charsets_are_decoded(web: LoopbackWeb, reader: PageReader) -> None:
    latin1, meta = await reader.read([hit(web, "/page/latin1-as-utf8"),
                                      hit(web, "/page/meta-charset")])
    assert latin1.status == "ok" and LATIN1_TEXT.split(";")[0] in latin1.text
    assert "crème brûlée" in latin1.text and "\ufffd" not in latin1.text
    assert meta.status == "ok" and CP1251_TEXT.split("!")[0] in meta.text


async def test_binary_bodies_fall_back(web: LoopbackWeb, reader: PageReader) -> None:
    octet, fake_html, missing = await reader.read([
        hit(web, "/page/octet-stream"), hit(web, "/page/binary-as-html"),
        hit(web, "/page/missing")])
    assert_fallback(octet, "unsupported content type application/octet-stream")
    assert_fallback(fake_html, "not text")
    assert_fallback(missing, "HTTP 404")


async def test_slow_pages_fall_back_within_the_budget(web: LoopbackWeb) -> None:
    """A 10 s page and a one-byte-every-0.2-s page cannot hold the read past its budget,
    and do not stop a fast page in the same read from being used."""
    options = ReaderOptions(allow_cidrs=LOOPBACK, budget_s=10, page_timeout_s=10)
    async with PageReader(options) as reader:
        started = time.monotonic()
        slow, drip, fast = await reader.read([hit(web, "/page/slow"), hit(web, "/page/drip"),
                                              hit(web, "/page/article")], budget_s=1.0)
        elapsed = time.monotonic() - started
    assert elapsed < 1.0 + 1.0
    assert_fallback(slow, "read budget of 1 s")
    assert_fallback(drip, "read budget of 1 s")
    assert fast.status == "ok"


async def test_page_timeout_is_reported_as_such(web: LoopbackWeb) -> None:
    options = ReaderOptions(allow_cidrs=LOOPBACK, budget_s=5, page_timeout_s=0.5)
    async with PageReader(options) as reader:
        started = time.monotonic()
        doc = await read_one(reader, hit(web, "/page/drip"))
    assert time.monotonic() - started < 0.5 + 1.0
    assert_fallback(doc, "page timed out after 0.5 s")


async def test_redirects_are_checked_and_bounded(web: LoopbackWeb) -> None:
    """Redirects to internal addresses are refused before any connection to them."""
    contacted: list[str] = []

    class Recording(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.AsyncHTTPTransport()

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            contacted.append(request.url.host)
            return await self.inner.handle_async_request(request)

        async def aclose(self) -> None:
            await self.inner.aclose()

    policy = SSRFPolicy(allow_cidrs=LOOPBACK)
    client = make_reader_client(policy, inner=Recording())
    async with PageReader(ReaderOptions(max_redirects=5), ssrf=policy, client=client) as reader:
        private, metadata, scheme, loop, chain = await reader.read([
            hit(web, "/redirect/private"), hit(web, "/redirect/metadata"),
            hit(web, "/redirect/file"), hit(web, "/redirect/loop-a"),
            hit(web, "/redirect/chain-0")])
    await client.aclose()
    assert_fallback(private, "refused", "10.0.0.1", "private")
    assert_fallback(metadata, "refused", "169.254.169.254", "metadata")
    assert_fallback(scheme, "refused", "'file'")
    assert_fallback(loop, "redirect loop", "/redirect/loop-a")
    assert_fallback(chain, "too many redirects")
    assert set(contacted) == {"127.0.0.1"}  # nothing was sent to 10.0.0.1 or 169.254.x
    assert len(contacted) == 3 + 2 + 6  # one each, loop a -> b (-> a), chain 0..5


async def test_loopback_needs_the_allowlist(web: LoopbackWeb) -> None:
    async with PageReader(ReaderOptions()) as reader:
        doc = await read_one(reader, hit(web, "/page/article"))
    assert_fallback(doc, "refused", "127.0.0.1 is a loopback address")


async def test_bombs_and_huge_pages_stay_within_budget(
        web: LoopbackWeb, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nesting bomb, 6 MB page and a gzip bomb: bounded input, extraction in threads (the
    event loop keeps ticking) and the deadline over all of it."""
    import threading

    import retrieval.reader

    lags: list[float] = []
    extract_threads: list[int] = []
    real_extract = retrieval.reader.extract

    def recording_extract(*args, **kwargs):  # type: ignore[no-untyped-def]
        extract_threads.append(threading.get_ident())
        return real_extract(*args, **kwargs)

    monkeypatch.setattr(retrieval.reader, "extract", recording_extract)

    async def probe() -> None:
        while True:
            tick = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - tick - 0.01)

    options = ReaderOptions(allow_cidrs=LOOPBACK, budget_s=3.0, max_text_chars=50_000)
    async with PageReader(options) as reader:
        ticker = asyncio.create_task(probe())
        started = time.monotonic()
        bomb, huge, gzip_bomb = await reader.read([
            hit(web, "/page/bomb"), hit(web, "/page/huge"), hit(web, "/page/gzip-bomb")])
        elapsed = time.monotonic() - started
        ticker.cancel()
    assert elapsed < 3.0 + 1.0
    # parsing never ran on the event loop: not on its thread, and the loop kept ticking
    # (the lag bound is loose: a busy 2-core machine delays any loop a little)
    assert extract_threads and threading.get_ident() not in extract_threads
    assert max(lags) < 1.5
    assert bomb.status == "ok" or bomb.reason in ("no main text", "extraction did not "
                                                  "finish within the read budget of 3 s")
    if huge.status == "ok":  # cut at max_bytes, then before parsing, then to max_text_chars
        assert huge.text.startswith("Riverton flood records") and len(huge.text) <= 50_000
    else:
        assert_fallback(huge, "read budget")
    assert gzip_bomb.status == "ok" or "budget" in (gzip_bomb.reason or "")


async def test_only_the_top_pages_are_read(web: LoopbackWeb) -> None:
    async with PageReader(ReaderOptions(allow_cidrs=LOOPBACK, max_pages=3)) as reader:
        docs = await reader.read([
            hit(web, "/page/article", 1),
            SearchResult("bad", "http://[::1/x", "s", "t", 2),
            SearchResult("closed", "http://127.0.0.1:9/", "s", "t", 3),
            hit(web, "/page/plain", 4)])
    assert [d.result.rank for d in docs] == [1, 2, 3, 4]  # order kept
    assert docs[0].status == "ok"
    assert_fallback(docs[1], "invalid URL")
    assert_fallback(docs[2], "fetch failed", "ConnectError")
    assert_fallback(docs[3], "not read")


async def test_bodies_are_cut_at_max_bytes(web: LoopbackWeb) -> None:
    options = ReaderOptions(allow_cidrs=LOOPBACK, max_bytes=4_000)
    async with PageReader(options) as reader:
        huge, gzip_bomb = await reader.read([hit(web, "/page/huge"),
                                             hit(web, "/page/gzip-bomb")])
    assert huge.status == "ok" and 0 < len(huge.text) < 4_000
    assert huge.text.startswith("Riverton flood records")
    assert gzip_bomb.status == "ok" and len(gzip_bomb.text) < 4_000  # decompressed size


def test_decoding_helpers() -> None:
    assert decode("café".encode("latin-1"), "utf-8", html=False) == "café"
    assert decode(b"\xef\xbb\xbfhi", None, html=False) == "hi"
    assert decode("x\u00e9".encode(), "no-such-charset", html=False) == "x\u00e9"
    with pytest.raises(ExtractionError, match="not text"):
        extract(b"\x01\x02\x03\x04\x05\x06\x07\x08" * 100, "text/plain")
    with pytest.raises(ExtractionError, match="not a PDF"):
        extract(b"<html>", "application/pdf")
    assert extract(b"  hello  ", None).text == "hello"
