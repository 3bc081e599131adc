"""A loopback web whose pages and search results carry XSS payloads, for the UI tests.

A SearXNG-shaped ``/searxng/search`` returns hits that point at ``/page/hostile`` on the
same server; titles and snippets carry ``<script>`` and ``<img onerror>`` (escaped, as
SearXNG sends markup, so the provider's unescaping turns them into literal text), and the
page's text carries the same plus a ``javascript:`` markdown link. Every payload, if it
ever ran, would set ``window.__xss`` and request ``/beacon/<name>`` here, which
``HostileWeb.beacons`` records: the test asserts both stay empty.
"""

from __future__ import annotations

import html
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["HostileWeb", "payloads", "serve_hostile_web"]


def payloads(base: str) -> dict[str, str]:
    """The raw hostile strings, each reporting to ``base``/beacon/<name> if it runs."""
    return {
        "script": f"<script>window.__xss='script';new Image().src='{base}/beacon/script'"
                  "</script>",
        "img": f"<img src=x onerror=\"window.__xss='img';new Image().src='{base}/beacon/img'\">",
        "js_link": f"[read the full report](javascript:window.__xss='js';"
                   f"fetch('{base}/beacon/js'))",
        "remote_img": f"![flood map]({base}/beacon/remote-image.png)",
    }


PROSE = ("The Riverton flood defences report says the Mill River embankment was rebuilt in "
         "2021 with a higher concrete wall after the great flood of 2019 damaged the mill "
         "district. Engineers of the Riverton council inspect the flood defences every "
         "spring and publish the flood defences report each May.")


@dataclass
class HostileWeb:
    base_url: str
    beacons: list[str] = field(default_factory=list)


def _app(web: HostileWeb) -> Starlette:
    def hostile_text() -> str:
        p = payloads(web.base_url)
        return f"{p['script']} {p['img']} {p['js_link']} {p['remote_img']}"

    async def searxng(request: Request) -> Response:
        text = hostile_text()
        img = payloads(web.base_url)["img"]
        results = [
            {"url": f"{web.base_url}/page/hostile", "engine": "loopback", "score": 1.0,
             "title": html.escape(f"Riverton flood defences report {img}"),
             "content": html.escape(f"{PROSE} {text}"), "category": "general"},
            {"url": f"{web.base_url}/page/hostile?copy=2", "engine": "loopback",
             "score": 0.9, "title": html.escape("Flood defences <script>alert(1)</script>"),
             "content": html.escape(f"Riverton flood defences, spring inspection. {text}"),
             "category": "general"},
        ]
        return JSONResponse({"query": request.query_params.get("q", ""), "results": results,
                             "number_of_results": len(results), "answers": [],
                             "corrections": [], "infoboxes": [], "suggestions": [],
                             "unresponsive_engines": []})

    async def page(request: Request) -> Response:
        body = (f"<h1>Riverton flood defences report</h1><p>{html.escape(PROSE)}</p>"
                f"<p>{html.escape(hostile_text())}</p><p>{html.escape(PROSE)}</p>")
        return Response(f"<!DOCTYPE html><html><head><title>Riverton flood defences report"
                        f"</title></head><body><main><article>{body}</article></main>"
                        "</body></html>", media_type="text/html; charset=utf-8")

    async def beacon(request: Request) -> Response:
        web.beacons.append(request.path_params["name"])
        return Response(b"", status_code=204)

    return Starlette(routes=[Route("/searxng/search", searxng), Route("/page/hostile", page),
                             Route("/beacon/{name:path}", beacon)])


@contextmanager
def serve_hostile_web() -> Iterator[HostileWeb]:
    """Serve on a socket bound beforehand (a free port, no race) until the block exits."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    web = HostileWeb(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}")
    server = uvicorn.Server(uvicorn.Config(_app(web), log_level="warning", lifespan="off",
                                           access_log=False, timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield web
    finally:
        server.should_exit = True
        thread.join(timeout=5)
