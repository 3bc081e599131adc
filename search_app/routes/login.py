"""``/login`` and ``/logout``: the browser's way in when the app has API keys or
accounts (``--multi-user``: a name and a password; a key still works).

Why a page and a cookie: a browser cannot add ``Authorization: Bearer`` to page loads
and share links, so the key is typed once and exchanged for a signed session cookie
(search_app/access.py holds the rules). Attempts are rate limited per address, and a
wrong key costs the same time as a right one.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from search_app.access import SESSION_COOKIE, safe_next
from search_app.ratelimit import RateLimitedError, check
from search_app.routes.ui import THEME_COOKIE, page_headers, templates

__all__ = ["router"]

router = APIRouter(include_in_schema=False)


def _login_page(request: Request, *, next_path: str, error: str = "",
                status: int = 200) -> HTMLResponse:
    theme = request.cookies.get(THEME_COOKIE)
    access = request.app.state.access
    return templates.TemplateResponse(
        request, "login.html",
        {"next": next_path, "error": error, "accounts": access.users is not None,
         "theme": theme if theme in ("light", "dark") else None},
        status_code=status, headers=page_headers())


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str = "/") -> Response:
    if request.app.state.access is None:  # no keys: nothing to sign in to
        return RedirectResponse(safe_next(next), 303)
    return _login_page(request, next_path=safe_next(next))


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, key: Annotated[str, Form(max_length=1000)] = "",
                name: Annotated[str, Form(max_length=100)] = "",
                password: Annotated[str, Form(max_length=1000)] = "",
                next: Annotated[str, Form(max_length=2000)] = "/") -> Response:
    access = request.app.state.access
    target = safe_next(next)
    if access is None:
        return RedirectResponse(target, 303)
    client = request.client.host if request.client else "unknown"
    try:
        await check(access.login_limiter, client)
    except RateLimitedError as exc:
        response = _login_page(request, next_path=target, status=429,
                               error=f"Too many attempts; try again in {exc.retry_after} s.")
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    if access.users is not None and name:
        principal = await access.users.averify_password(name.strip().lower(), password)
        wrong = "That name and password do not match."
    else:
        principal, wrong = await access.amatch_key(key), "That key is not valid."
    if principal is None:
        return _login_page(request, next_path=target, status=401, error=wrong)
    cookie, _ = access.sessions.issue(principal)
    response = RedirectResponse(target, 303)
    response.set_cookie(SESSION_COOKIE, cookie, max_age=access.sessions.max_age_s,
                        httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    """Forget the session cookie. No CSRF check needed: signing someone out is all a
    forged request could do, and SameSite=Strict keeps the cookie off it anyway."""
    response = RedirectResponse("/login" if request.app.state.access else "/", 303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response
