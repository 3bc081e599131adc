"""The browser UI's pages: home ``/``, shared answers ``/s/{id}``, threads ``/t/{id}``,
the favicon and the static assets under ``/static``.

Why server-rendered shells: the page needs no build step, and its first render (model,
provider, theme, example questions) comes from the app alone in one request; ``app.js``
then drives everything else through the public API (``/api/search`` and friends).

Security: every page carries a Content-Security-Policy without inline scripts or styles,
so even markup that slipped past the sanitizer could not run (docs/ui.md).
"""

from __future__ import annotations

import uuid
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from search_app.deps import CLIENT_COOKIE
from search_app.routes.info import app_info

__all__ = ["CSP", "THEME_COOKIE", "UI_DIR", "page_headers", "router", "static_app",
           "templates"]

UI_DIR = Path(str(files("ui")))
THEME_COOKIE = "search_app_theme"
EXAMPLES = [
    "Who designed the Eiffel Tower?",
    "What is bronze made of?",
    "Where is Timbuktu?",
    "How does photosynthesis work?",
]
# No inline script or style anywhere; images only from the app (letter badges are CSS);
# fetch only to the app; no framing. 'self' for styles: app.css and nothing else.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'; manifest-src 'self'")
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
            "Cache-Control": "no-store"}
_FAVICON = (  # the app's own icon: a magnifier, so the tab needs no request elsewhere
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">'
    '<rect width="32" height="32" rx="8" fill="#2f5bd3"/>'
    '<circle cx="14" cy="14" r="7" fill="none" stroke="#fff" stroke-width="3"/>'
    '<path d="M19 19l6 6" stroke="#fff" stroke-width="3" stroke-linecap="round"/></svg>')

def page_headers() -> dict[str, str]:
    """Headers of every HTML page: CSP, no sniffing, no referrer, no framing, no cache."""
    return dict(_HEADERS)


router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(UI_DIR / "templates"))
static_app = StaticFiles(directory=str(UI_DIR / "static"))


def _page(request: Request, *, mode: str, ident: str = "", title: str = "",
          status: int = 200) -> HTMLResponse:
    theme = request.cookies.get(THEME_COOKIE)
    session = getattr(request.state, "session", None)  # set by the access lock
    context: dict[str, Any] = {
        "info": app_info(request.app), "examples": EXAMPLES, "mode": mode, "ident": ident,
        "title": title, "theme": theme if theme in ("light", "dark") else None,
        "csrf": session.csrf if session is not None else "",
        "signed_in": session is not None,
    }
    response = templates.TemplateResponse(request, "index.html", context,
                                          status_code=status, headers=_HEADERS)
    if not request.cookies.get(CLIENT_COOKIE):  # so history works from the first visit
        response.set_cookie(CLIENT_COOKIE, uuid.uuid4().hex, max_age=365 * 24 * 3600,
                            httponly=True, samesite="lax")
    return response


@router.get("/", response_class=HTMLResponse)
async def home(request: Request) -> HTMLResponse:
    return _page(request, mode="home")


@router.get("/s/{search_id}", response_class=HTMLResponse)
async def shared(request: Request, search_id: str) -> HTMLResponse:
    """A stored answer, replayed by the page from ``GET /api/search/{id}`` (never
    recomputed). The title is the question, for link previews; 404 when unknown."""
    store = getattr(request.app.state, "store", None)
    record = await store.aget_answer(search_id) if store is not None else None
    if store is not None and record is None:
        return _page(request, mode="share", ident=search_id, status=404)
    return _page(request, mode="share", ident=search_id,
                 title=record.query if record is not None else "")


@router.get("/t/{thread_id}", response_class=HTMLResponse)
async def thread(request: Request, thread_id: str) -> HTMLResponse:
    """A whole conversation from the history list (``GET /api/threads/{id}``)."""
    return _page(request, mode="thread", ident=thread_id)


@router.get("/static/{path:path}")
async def static(path: str, request: Request) -> Response:
    """The UI's assets. A route rather than a mount, so the UI stays one router that
    ``routes.router`` includes; StaticFiles still resolves the path safely (no
    traversal) and answers ETag / If-None-Match."""
    response = await static_app.get_response(path, request.scope)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@router.get("/favicon.ico")
@router.get("/favicon.svg")
async def favicon() -> Response:
    return Response(_FAVICON, media_type="image/svg+xml",
                    headers={"Cache-Control": "public, max-age=86400"})
