"""The UI's pages and assets over HTTP, without a browser or a model (fast): security
headers, no inline script or style, nothing loaded from elsewhere, the size budget, the
share page's 404, ``GET /api/info``. The browser behaviour is in test_browser.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from search_app.app import create_app
from search_app.config import Settings
from search_app.routes.ui import UI_DIR
from search_app.store import Store

BUDGET_BYTES = 150 * 1024


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    # No lifespan: nothing loads; the pages must still render (the model is "loading").
    app = create_app(Settings(engine="llamacpp", data_dir=tmp_path, provider="local,searxng"))
    yield TestClient(app)


def test_home_headers_and_no_inline_code(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert "search_app_client=" in response.headers["set-cookie"]  # history from visit one
    html = response.text
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline script"
    assert "<style" not in html and not re.search(r"\sstyle=", html), "inline style"
    assert not re.search(r"\son[a-z]+=", html), "inline event handler"
    # Everything the page loads comes from the app itself.
    loaded = re.findall(r"<(?:script|img|link|iframe)[^>]*\b(?:src|href)=\"([^\"]+)\"", html)
    assert loaded and all(u.startswith("/") and not u.startswith("//") for u in loaded), loaded
    assert 'id="q"' in html and "autofocus" in html
    assert 'data-state="loading"' in html and "The model is loading" in html
    provider = html[html.index('id="provider"'):]
    provider = provider[:provider.index("</select>")]
    assert re.findall(r'<option value="([^"]+)"', provider) == [
        "local,searxng", "local", "searxng"]
    when = html[html.index('id="when"'):]
    assert re.findall(r'<option value="([^"]*)"', when[:when.index("</select>")]) == [
        "", "hour", "day", "week", "month", "year"]  # Sonar's search_recency_filter


def test_assets_fit_the_budget(client: TestClient) -> None:
    html = client.get("/").text
    urls = re.findall(r'<script src="([^"]+)"', html)
    urls += re.findall(r'<link rel="stylesheet" href="([^"]+)"', html)
    assert len(urls) == 4, urls
    total = 0
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200, url
        assert response.headers["x-content-type-options"] == "nosniff"
        total += len(response.content)
    assert total <= BUDGET_BYTES, f"JS+CSS {total} bytes > {BUDGET_BYTES}"


def test_vendored_libraries_carry_their_licences() -> None:
    vendor = UI_DIR / "static" / "vendor"
    assert (vendor / "marked.LICENSE.txt").read_text().startswith("# License information")
    assert "Apache License" in (vendor / "dompurify.LICENSE.txt").read_text()
    assert "sourceMappingURL" not in (vendor / "marked.min.js").read_text()
    assert "sourceMappingURL" not in (vendor / "purify.min.js").read_text()


def test_static_files_are_confined(client: TestClient) -> None:
    assert client.get("/static/app.css").status_code == 200
    for bad in ("/static/../__init__.py", "/static/%2e%2e/templates/index.html",
                "/static/nope.js"):
        assert client.get(bad).status_code == 404, bad
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"


def test_theme_cookie_renders_the_theme(client: TestClient) -> None:
    client.cookies.set("search_app_theme", "dark")
    assert '<html lang="en" data-theme="dark">' in client.get("/").text
    client.cookies.set("search_app_theme", '"><script>x</script>')
    assert '<html lang="en">' in client.get("/").text


def test_share_page(client: TestClient, tmp_path: Path) -> None:
    # Store not open yet: the page renders and its script asks the API (which says 503).
    assert client.get("/s/abc").status_code == 200
    client.app.state.store = Store(tmp_path / "store.sqlite")
    try:
        response = client.get("/s/abc")
        assert response.status_code == 404
        assert 'data-mode="share"' in response.text and 'data-ident="abc"' in response.text
        hostile = client.get('/s/"><script>alert(1)</script>')
        assert "<script>alert(1)" not in hostile.text  # autoescaped
    finally:
        client.app.state.store.close()
    assert 'data-mode="thread"' in client.get("/t/xyz").text


def test_api_info(client: TestClient) -> None:
    info = client.get("/api/info").json()
    assert info["state"] == "loading" and info["model"] is None
    assert info["provider"] == "local,searxng"
    assert info["providers"] == ["local,searxng", "local", "searxng"]
    assert info["answer_model"] == "search-app" and info["version"]
