"""Read the top search results under one time budget, falling back to snippets.

Every page is fetched concurrently through an SSRF-checking transport (see ssrf.py):
redirects are followed by hand (each hop re-checked, loops and long chains stopped),
bodies are read up to ``max_bytes`` (decompressed size, so gzip bombs stop too) and
extraction runs in a dedicated thread pool. One deadline bounds the whole read: a page
that is slow, drips bytes, fails or is not text becomes
``Document(status="snippet_fallback", reason=...)`` and the reason is reported, so an
answer never waits on the slowest site.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from retrieval.extract import Extracted, ExtractionError, extract
from retrieval.ssrf import SSRFBlocked, SSRFPolicy, SSRFTransport, check_scheme
from retrieval.types import Document, SearchResult

__all__ = ["PageReader", "ReaderOptions", "make_reader_client"]

logger = logging.getLogger("retrieval.reader")

_HEADERS = {
    "User-Agent": "Mozilla/5.0 (compatible; search-app/0.1; +self-hosted AI search)",
    "Accept": "text/html,application/xhtml+xml,text/plain;q=0.9,application/pdf;q=0.8,"
              "*/*;q=0.5",
    "Accept-Encoding": "gzip, deflate",  # only what _Decoder can cap while decompressing
}
_REDIRECTS = {301, 302, 303, 307, 308}


class ReaderOptions(BaseModel):
    """Tunables for page reading; the app's Settings fills these."""

    model_config = ConfigDict(extra="forbid")

    budget_s: float = Field(3.0, gt=0, description="whole read, all pages, per question")
    page_timeout_s: float = Field(2.5, gt=0, description="one page, redirects included")
    max_bytes: int = Field(2_000_000, gt=0, description="stop reading a body beyond this")
    max_redirects: int = Field(5, ge=0)
    max_pages: int = Field(8, ge=0, description="read the top N results; the rest keep "
                                               "their snippets")
    max_extract_chars: int = Field(500_000, gt=0, description="HTML cut before parsing "
                                                              "(~0.5 s of parsing)")
    max_extract_tags: int = Field(20_000, gt=0, description="and at this many tags")
    max_text_chars: int = Field(100_000, gt=0, description="main text kept per page")
    extract_workers: int = Field(4, ge=1, description="threads; several, so one big page "
                                                          "does not queue the others")
    allow_hosts: list[str] = Field(default_factory=list,
                                   description="host names exempt from SSRF checks")
    allow_cidrs: list[str] = Field(default_factory=list,
                                   description="address ranges opened, e.g. 127.0.0.1/32")

    @field_validator("allow_cidrs")
    @classmethod
    def _valid_cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:  # fail at startup, not on the first question
            ipaddress.ip_network(cidr.strip(), strict=False)
        return value

    def policy(self) -> SSRFPolicy:
        return SSRFPolicy(self.allow_hosts, self.allow_cidrs)


class FetchError(Exception):
    """A page could not be fetched; the message is the reported reason."""


@dataclass
class _Page:
    url: str
    body: bytes
    content_type: str | None
    truncated: bool


def make_reader_client(policy: SSRFPolicy, *,
                       inner: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """The client page reading needs: SSRF transport, no env proxies (a proxy would
    defeat the address check), no automatic redirects, no cookies kept across sites."""
    return httpx.AsyncClient(transport=SSRFTransport(policy, inner), trust_env=False,
                             follow_redirects=False, headers=_HEADERS,
                             timeout=httpx.Timeout(10.0))


class PageReader:
    """Reads search results into Documents. Use as ``async with PageReader(opts) as r``
    (or call ``aclose``): it owns its HTTP client and extraction threads unless given.
    A client passed in must come from :func:`make_reader_client` (the SSRF transport is
    what enforces the policy)."""

    def __init__(self, options: ReaderOptions | None = None, *, ssrf: SSRFPolicy | None = None,
                 client: httpx.AsyncClient | None = None,
                 executor: Executor | None = None) -> None:
        self.options = options or ReaderOptions()
        self.ssrf = ssrf or self.options.policy()
        self._client = client or make_reader_client(self.ssrf)
        self._owns_client = client is None
        # Own pool: a runaway extraction must not starve getaddrinfo in the default pool.
        self._executor = executor or ThreadPoolExecutor(self.options.extract_workers,
                                                        thread_name_prefix="extract")
        self._owns_executor = executor is None

    async def __aenter__(self) -> PageReader:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()
        if self._owns_executor:  # don't wait for a stuck extraction
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def read(self, results: Sequence[SearchResult],
                   budget_s: float | None = None, max_pages: int | None = None
                   ) -> list[Document]:
        """One Document per result, in order, within ``budget_s`` (default from options);
        at most ``max_pages`` are fetched (default from options; research mode reads its
        own page budget), the rest keep their snippets."""
        budget = budget_s if budget_s is not None else self.options.budget_s
        limit = max_pages if max_pages is not None else self.options.max_pages
        deadline = time.monotonic() + budget
        top = list(results[:limit])
        docs = await asyncio.gather(*(self._read_one(r, deadline, budget) for r in top))
        rest = [_fallback(r, f"not read (only the top {limit} are read)")
                for r in results[limit:]]
        return [*docs, *rest]

    async def _read_one(self, result: SearchResult, deadline: float,
                        budget: float) -> Document:
        started = time.monotonic()
        page_limit = min(self.options.page_timeout_s, deadline - started)
        stage = "fetch"
        try:
            if page_limit <= 0:
                raise TimeoutError
            async with asyncio.timeout(page_limit):
                page = await self._fetch(result.url)
            stage = "extraction"
            loop = asyncio.get_running_loop()
            job = functools.partial(extract, page.body, page.content_type, url=page.url,
                                    max_chars=self.options.max_extract_chars,
                                    max_tags=self.options.max_extract_tags,
                                    max_text_chars=self.options.max_text_chars)
            extracted: Extracted = await asyncio.wait_for(
                loop.run_in_executor(self._executor, job),
                timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            if stage == "fetch" and page_limit == self.options.page_timeout_s:
                reason = f"page timed out after {page_limit:g} s"
            else:
                reason = f"{stage} did not finish within the read budget of {budget:g} s"
            return self._log(_fallback(result, reason), started)
        except SSRFBlocked as exc:
            return self._log(_fallback(result, f"refused: {exc.reason}"), started)
        except (FetchError, ExtractionError) as exc:
            return self._log(_fallback(result, str(exc)), started)
        except httpx.InvalidURL:
            return self._log(_fallback(result, "invalid URL"), started)
        except httpx.HTTPError as exc:  # connect errors, protocol errors
            return self._log(_fallback(result, f"fetch failed: {_describe(exc)}"), started)
        except Exception as exc:  # one broken page must not sink the answer
            logger.exception("unexpected error reading a page")
            return self._log(_fallback(result, f"internal error: {type(exc).__name__}"),
                             started)
        doc = Document(result=result, text=extracted.text,
                       title=extracted.title or result.title, status="ok",
                       published=extracted.published or result.published)
        return self._log(doc, started)

    async def _fetch(self, url: str) -> _Page:
        seen = {url}
        current = url
        for _ in range(self.options.max_redirects + 1):
            check_scheme(current)  # httpx would quietly drop an unknown scheme
            request = self._client.build_request("GET", current)
            response = await self._client.send(request, stream=True)
            try:
                location = response.headers.get("location")
                if response.status_code in _REDIRECTS and location:
                    current = str(response.url.join(location))
                    if current in seen:
                        raise FetchError(f"redirect loop at {current}")
                    seen.add(current)
                    continue
                if not response.is_success:
                    raise FetchError(f"HTTP {response.status_code}")
                body, truncated = await _read_capped(response, self.options.max_bytes)
                return _Page(str(response.url), body, response.headers.get("content-type"),
                             truncated)
            finally:
                await response.aclose()
        raise FetchError(f"too many redirects (more than {self.options.max_redirects})")

    @staticmethod
    def _log(doc: Document, started: float) -> Document:
        doc.fetch_ms = (time.monotonic() - started) * 1000
        try:
            host = urlsplit(doc.url).hostname or "-"
        except ValueError:
            host = "-"
        logger.info("read host=%s status=%s ms=%.0f reason=%s", host, doc.status,
                    doc.fetch_ms, doc.reason or "")
        return doc


def _fallback(result: SearchResult, reason: str) -> Document:
    return Document(result=result, text=result.snippet, title=result.title,
                    status="snippet_fallback", reason=reason, published=result.published)


def _describe(exc: httpx.HTTPError) -> str:
    message = str(exc)
    return f"{type(exc).__name__}: {message}"[:200] if message else type(exc).__name__


async def _read_capped(response: httpx.Response, max_bytes: int) -> tuple[bytes, bool]:
    """Read at most ``max_bytes`` of decoded body; returns (body, truncated)."""
    decoder = _Decoder(response.headers.get("content-encoding", ""))
    parts: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        data = decoder.feed(chunk, max_bytes - size)
        parts.append(data)
        size += len(data)
        if size >= max_bytes or decoder.overflow:
            return b"".join(parts), True
    return b"".join(parts), False


class _Decoder:
    """gzip/deflate decoding that never produces more than it is asked for."""

    def __init__(self, encoding: str) -> None:
        encoding = encoding.strip().lower()
        if encoding in ("", "identity"):
            self._zlib = None
        elif encoding in ("gzip", "x-gzip", "deflate"):
            self._zlib = zlib.decompressobj(wbits=47)  # zlib or gzip header, detected
        else:
            raise FetchError(f"unsupported content-encoding {encoding}")
        self.overflow = False

    def feed(self, chunk: bytes, limit: int) -> bytes:
        if self._zlib is None:
            return chunk[:limit]
        try:
            out = self._zlib.decompress(self._zlib.unconsumed_tail + chunk, max(limit, 1))
        except zlib.error as exc:
            raise FetchError("corrupt compressed body") from exc
        self.overflow = bool(self._zlib.unconsumed_tail) and len(out) >= limit
        return out[:limit]
