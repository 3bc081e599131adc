"""A real HTTP server on 127.0.0.1 for retrieval tests: web pages that misbehave in the
ways real sites do, and mock search APIs in each provider's documented JSON shape.

Mock APIs pick a scenario from the query text: ``__429__`` (rate limited, with
Retry-After), ``__malformed__`` (invalid JSON), ``__shape__`` (valid JSON, changed
shape), ``__empty__``, ``__slow__`` (answers after 3 s), ``__500__``; any other query
gets three results. A wrong key gets the provider's own 401/403 error body.
``server.requests`` records what each request sent (path, query, headers, JSON body).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from tests.support.documents import assemble_pdf

__all__ = ["API_KEY", "LoopbackWeb", "make_app", "minimal_pdf", "serve_loopback_web"]

API_KEY = "test-key"
BOILERPLATE = ("Subscribe to our newsletter", "All rights reserved", "Cookie settings")
HITS = [  # (title, url, snippet, published in ISO, Serper/SearchApi style, RFC 2822)
    ("Alpha <b>river</b> report", "https://alpha.example/a", "The river rose &amp; fell.",
     ("2024-03-05T08:00:00", "Mar 5, 2024", "Tue, 05 Mar 2024 08:00:00 GMT")),
    ("Beta notes", "https://beta.example/b", "Notes on <strong>floods</strong>.", None),
    ("Gamma archive", "https://gamma.example/g", "Old records.",
     ("2023-11-20T00:00:00Z", "Nov 20, 2023", "Mon, 20 Nov 2023 00:00:00 GMT")),
]


# ---------------------------------------------------------------------------- pages
def article_html(title: str = "Flood waters recede in Riverton",
                 date: str = "2024-03-05") -> str:
    body = "".join(
        f"<p>{s}</p>" for s in (
            "Flood waters in Riverton receded on Tuesday after three days of heavy rain "
            "pushed the Mill River to its highest level in forty years.",
            "Engineers said the northern embankment held, but a section near the old "
            "stone bridge failed late on Sunday night, flooding the mill district.",
            "Residents returned to their homes on Wednesday morning. The town council "
            "has promised an inquiry into the maintenance of the flood defences.",
            "Volunteers from neighbouring villages helped clear mud from the high street, "
            "and the school reopened after the weekend.",
        ))
    return f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<title>{title} | Riverton Gazette</title>
<meta property="og:title" content="{title}">
<meta property="article:published_time" content="{date}T09:30:00+00:00">
</head><body>
<header><nav><a href="/">Home</a> <a href="/news">News</a> <a href="/sub">{BOILERPLATE[0]}</a>
</nav></header>
<main><article><h1>{title}</h1><p class="byline">By Jane Doe, {date}</p>{body}</article></main>
<aside><h3>Most read</h3><ul><li><a href="/x">Ten cats you must see</a></li></ul></aside>
<footer><p>Copyright 2024 Riverton Gazette. {BOILERPLATE[1]}.</p>
<a href="/cookies">{BOILERPLATE[2]}</a></footer></body></html>"""


LATIN1_TEXT = ("Le café de la gare était fermé; les élèves ont mangé une crème brûlée à côté "
               "du théâtre. Après la pluie, la rivière a débordé près du pont. ")
CP1251_TEXT = "Привет из Ривертона! Вода в реке поднялась на три метра за одну ночь. "


def _legacy_page(text: str, meta: str = "") -> str:
    paras = "".join(f"<p>{text}</p>" for _ in range(4))
    return f"<html><head>{meta}<title>Legacy</title></head><body><article>{paras}" \
           f"</article></body></html>"


def minimal_pdf(text: str) -> bytes:
    """A valid one-page PDF showing ``text`` (correct xref offsets, Helvetica)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Title (Riverton flood report) /CreationDate (D:20240305093000Z) >>",
    ]
    return assemble_pdf(objects)


_CACHE: dict[str, bytes] = {}


def _cached(name: str, build: Any) -> bytes:
    if name not in _CACHE:
        _CACHE[name] = build()
    return _CACHE[name]


async def page(request: Request) -> Response:
    name = request.path_params["name"]
    html = "text/html; charset=utf-8"
    if name == "article":
        return Response(article_html(), media_type=html)
    if name == "plain":
        return PlainTextResponse("Plain notes.\nThe Mill River peaked at 4.2 metres.\n")
    if name == "latin1-as-utf8":
        return Response(_legacy_page(LATIN1_TEXT).encode("latin-1"), media_type=html)
    if name == "meta-charset":
        body = _legacy_page(CP1251_TEXT, '<meta charset="windows-1251">').encode("cp1251")
        return Response(body, headers={"content-type": "text/html"})
    if name == "octet-stream":
        return Response(bytes(range(256)) * 64, media_type="application/octet-stream")
    if name == "binary-as-html":
        return Response(b"\x89PNG\r\n\x1a\n\x00\x00" + bytes(range(256)) * 64,
                        headers={"content-type": "text/html"})
    if name == "bomb":  # deeply nested markup: quadratic or recursive parsers choke
        return Response(_cached("bomb", lambda: (
            "<html><body>" + "<div><span>" * 50_000 + "deep" + "</span></div>" * 50_000
            + "</body></html>").encode()), media_type=html)
    if name == "huge":  # ~6 MB: cut at max_bytes, and again before parsing
        return Response(_cached("huge", lambda: (
            "<html><body><article>" + "<p>Riverton flood records, volume one.</p>" * 150_000
            + "</article></body></html>").encode()), media_type=html)
    if name == "gzip-bomb":  # 20 MB of markup in ~20 kB on the wire
        return Response(_cached("gzip", lambda: gzip.compress(
            b"<html><body>" + b"<p>x</p>" * 2_500_000, 9)),
            headers={"content-type": "text/html", "content-encoding": "gzip"})
    if name == "pdf":
        return Response(minimal_pdf("Riverton flood report: the river peaked at 4.2 m."),
                        media_type="application/pdf")
    if name == "slow":  # answers after 10 s, or stops when the client gives up
        for _ in range(100):
            if await request.is_disconnected():
                return Response(status_code=499)
            await asyncio.sleep(0.1)
        return Response(article_html(), media_type=html)
    if name == "drip":  # headers at once, then one byte per 0.2 s for a minute
        async def drip() -> AsyncIterator[bytes]:
            for _ in range(300):
                yield b" "
                await asyncio.sleep(0.2)
        return StreamingResponse(drip(), media_type=html)
    if name == "missing":
        return Response("<h1>Not found</h1>", status_code=404, media_type=html)
    return Response("no such page", status_code=404)


async def redirect(request: Request) -> Response:
    to = {"private": "http://10.0.0.1/admin", "metadata":
          "http://169.254.169.254/latest/meta-data/iam/", "ok": "/page/article",
          "file": "file:///etc/passwd", "loop-a": "/redirect/loop-b",
          "loop-b": "/redirect/loop-a"}.get(request.path_params["name"])
    if to is None:  # /redirect/chain-N -> chain-N+1 forever
        n = int(request.path_params["name"].removeprefix("chain-"))
        to = f"/redirect/chain-{n + 1}"
    return RedirectResponse(to, status_code=302)


# ------------------------------------------------------------------------ mock APIs
def _scenario(query: str) -> str | None:
    for s in ("429", "malformed", "shape", "empty", "slow", "500", "quota403", "web"):
        if f"__{s}__" in query:
            return s
    return None


def _dates(hit: tuple, style: int) -> str | None:
    return hit[3][style] if hit[3] else None


def _shape(provider: str, query: str, k: int, empty: bool) -> dict[str, Any]:
    hits = [] if empty else HITS[:k]
    if provider == "searxng":
        results = [{"url": u, "title": t, "content": s, "engine": "duckduckgo",
                    "engines": ["duckduckgo"], "score": 1.0, "category": "general",
                    "publishedDate": _dates(h, 0)} for h in hits for t, u, s, _ in [h]]
        if not empty:
            results.insert(1, {"title": "an infobox-like hit without url", "content": "?"})
        return {"query": query, "number_of_results": 0, "results": results, "answers": [],
                "corrections": [], "infoboxes": [], "suggestions": [],
                "unresponsive_engines": []}
    if provider == "brave":
        out: dict[str, Any] = {"type": "search", "query": {"original": query}}
        if hits:  # Brave leaves "web" out when nothing matched
            out["web"] = {"type": "search", "family_friendly": True, "results": [
                {"title": t, "url": u, "description": s, "page_age": _dates(h, 0),
                 "age": _dates(h, 1), "language": "en"} for h in hits for t, u, s, _ in [h]]}
        return out
    if provider == "google":
        out = {"kind": "customsearch#search", "searchInformation": {
            "totalResults": str(len(hits))}, "queries": {"request": [{"searchTerms": query}]}}
        if hits:  # and Google leaves "items" out
            out["items"] = [{"kind": "customsearch#result", "title": t, "link": u,
                             "snippet": s, "displayLink": u.split("/")[2], "pagemap": {
                                 "metatags": [{"article:published_time": _dates(h, 0)}
                                              if h[3] else {}]}}
                            for h in hits for t, u, s, _ in [h]]
        return out
    organic = [{"position": i, "title": t, "link": u, "snippet": s, "date": _dates(h, 1)}
               for i, h in enumerate(hits, 1) for t, u, s, _ in [h]]
    for hit in organic:
        if hit["date"] is None:
            del hit["date"]
    if provider == "serper":
        return {"searchParameters": {"q": query, "type": "search", "engine": "google"},
                "organic": organic, "relatedSearches": [], "credits": 1}
    if provider == "searchapi":
        return {"search_metadata": {"id": "search_1", "status": "Success"},
                "search_parameters": {"engine": "google", "q": query},
                "organic_results": organic}
    return {"query": query, "answer": None, "images": [], "response_time": 0.4,
            "results": [{"title": t, "url": u, "content": s, "score": 0.9,
                         "raw_content": None, "published_date": _dates(h, 2)}
                        for h in hits for t, u, s, _ in [h]]}


_AUTH_ERRORS: dict[str, tuple[int, Any]] = {
    "brave": (401, {"type": "ErrorResponse", "error": {
        "id": "e1", "status": 401, "code": "SUBSCRIPTION_TOKEN_INVALID",
        "detail": "The provided subscription token is invalid.",
        "meta": {"component": "authentication"}}, "time": 1710000000}),
    "google": (400, {"error": {"code": 400, "message": "API key not valid. Please pass a "
               "valid API key.", "status": "INVALID_ARGUMENT", "errors": [
               {"message": "API key not valid.", "domain": "global", "reason": "badRequest"}],
               "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                            "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]}}),
    "serper": (403, {"message": "Unauthorized.", "statusCode": 403}),
    "searchapi": (401, {"error": "Invalid API key. Your API key should be here: "
                                 "https://www.searchapi.io/api_key"}),
    "tavily": (401, {"detail": {"error": "Unauthorized: missing or invalid API key."}}),
}
_RATE_ERRORS: dict[str, tuple[dict[str, str], Any]] = {
    "searxng": ({"retry-after": "30"}, "Too Many Requests"),
    "brave": ({"x-ratelimit-limit": "1, 2000", "x-ratelimit-remaining": "0, 1990",
               "x-ratelimit-reset": "1, 1419704"}, {"type": "ErrorResponse", "error": {
                   "id": "e2", "status": 429, "code": "RATE_LIMITED",
                   "detail": "Request rate limit exceeded for plan.",
                   "meta": {"plan": "Free", "rate_limit": 1, "rate_current": 2}}}),
    "google": ({"retry-after": "60"}, {"error": {"code": 429, "message": "Quota exceeded "
               "for quota metric 'Queries' and limit 'Queries per minute'.",
               "status": "RESOURCE_EXHAUSTED", "errors": [{"reason": "rateLimitExceeded"}]}}),
    "serper": ({"retry-after": "2"}, {"message": "Too many requests.", "statusCode": 429}),
    "searchapi": ({"retry-after": "5"}, {"error": "You have exceeded the rate limit."}),
    "tavily": ({"retry-after": "7"}, {"detail": {"error": "Your request has been blocked "
                                                          "due to excessive requests."}}),
}


def _key_ok(provider: str, request: Request, body: dict[str, Any]) -> bool:
    headers, params = request.headers, request.query_params
    return {
        "searxng": True,
        "brave": headers.get("x-subscription-token") == API_KEY,
        "google": params.get("key") == API_KEY and bool(params.get("cx")),
        "serper": headers.get("x-api-key") == API_KEY,
        "searchapi": API_KEY in (params.get("api_key"), headers.get("authorization", "")[7:]),
        "tavily": API_KEY in (headers.get("authorization", "")[7:], body.get("api_key")),
    }[provider]


async def search_api(request: Request) -> Response:
    provider = request.path_params["provider"]
    body: dict[str, Any] = {}
    if request.method == "POST":
        body = json.loads(await request.body() or b"{}")
    params = request.query_params
    request.app.state.requests.append({"path": request.url.path, "query": dict(params),
                                       "headers": dict(request.headers), "json": body})
    query = str(params.get("q") or body.get("q") or body.get("query") or "")
    k = int(params.get("count") or params.get("num") or body.get("num")
            or body.get("max_results") or 10)
    if provider == "searxng" and params.get("format") != "json":
        return Response("<h1>403 Forbidden</h1>", status_code=403, media_type="text/html")
    if not _key_ok(provider, request, body):
        status, error = _AUTH_ERRORS[provider]
        return JSONResponse(error, status_code=status)
    scenario = _scenario(query)
    if scenario == "429":
        headers, error = _RATE_ERRORS[provider]
        if isinstance(error, str):
            return PlainTextResponse(error, status_code=429, headers=headers)
        return JSONResponse(error, status_code=429, headers=headers)
    if scenario == "quota403":
        return JSONResponse({"error": {"code": 403, "message": "Daily Limit Exceeded.",
                                       "errors": [{"reason": "dailyLimitExceeded"}]}}, 403)
    if scenario == "malformed":
        return Response('{"results": [{"title": "cut off', media_type="application/json")
    if scenario == "shape":
        return JSONResponse({"data": {"hits": []}, "version": 2})
    if scenario == "500":
        return JSONResponse({"error": {"message": "backend exploded"}}, status_code=500)
    if scenario == "slow":
        await asyncio.sleep(3)
    if scenario == "web" and provider == "searxng":
        return JSONResponse(_web_results(str(request.base_url).rstrip("/"), query))
    return JSONResponse(_shape(provider, query, k, empty=scenario == "empty"))


WEB_PAGES = [  # (path, title, snippet): results that point back at this server's pages
    ("/page/article", "Flood waters recede in Riverton", "Riverton flood report."),
    ("/page/slow", "Slow local news", "Snippet: the council meets on Friday."),
    ("/redirect/private", "Intranet admin", "Snippet: internal page."),
    ("/page/binary-as-html", "Broken upload", "Snippet: an image upload."),
    ("/page/plain", "Plain notes", "Snippet: plain notes on the river."),
]


def _web_results(base: str, query: str) -> dict[str, Any]:
    """SearXNG's shape, with hits on this loopback web (the ``__web__`` scenario)."""
    return {"query": query, "number_of_results": len(WEB_PAGES), "answers": [],
            "corrections": [], "infoboxes": [], "suggestions": [],
            "unresponsive_engines": [],
            "results": [{"url": base + path, "title": title, "content": snippet,
                         "engine": "loopback", "score": 1.0, "category": "general"}
                        for path, title, snippet in WEB_PAGES]}


def make_app() -> Starlette:
    app = Starlette(routes=[
        Route("/page/{name}", page),
        Route("/redirect/{name}", redirect),
        Route("/{provider:str}/search", search_api, methods=["GET", "POST"]),
        Route("/{provider:str}/res/v1/web/search", search_api),
        Route("/{provider:str}/customsearch/v1", search_api),
        Route("/{provider:str}/api/v1/search", search_api),
    ])
    app.state.requests = []
    return app


# --------------------------------------------------------------------------- server
@dataclass
class LoopbackWeb:
    base_url: str
    app: Starlette
    port: int
    requests: list[dict[str, Any]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"


@contextmanager
def serve_loopback_web() -> Iterator[LoopbackWeb]:
    """Run the app with uvicorn in a background thread on a socket bound beforehand
    (a free port with no race), until the block exits."""
    app = make_app()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False,
                            timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        if not thread.is_alive():
            raise RuntimeError("loopback web server failed to start")
        threading.Event().wait(0.01)
    else:
        raise RuntimeError("loopback web server did not start within 5 s")
    try:
        yield LoopbackWeb(f"http://127.0.0.1:{port}", app, port, app.state.requests)
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()
