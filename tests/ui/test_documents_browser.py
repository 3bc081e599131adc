"""Your own documents in a real browser (Debian's chromium driven by Playwright) against
a real ``search-app serve`` (the session's llama.cpp model server through the upstream
engine): upload a PDF with the Documents control's button, ask with only that
collection, and see the file name and page on the source card. One answer."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.app.test_faults_e2e import app_args, wait_ready
from tests.conftest import API_KEY
from tests.support.documents import pdf_file
from tests.support.server import ROOT, ServerProcess, run_server
from tests.ui.chromium import ARGS, BROWSER_MARKS, CHROMIUM

playwright_sync = pytest.importorskip("playwright.sync_api")
pytestmark = BROWSER_MARKS
ANSWER_MS = 150_000
PAGES = ["Zorbex 4000 coffee machine manual. Read these safety notes before first use.",
         "The Zorbex 4000 coffee machine must be descaled every 30 days with citric acid."]
SHOTS = ROOT / "artifacts" / "ui"


@pytest.fixture(scope="module")
def docs_app(llama_server: ServerProcess, artifacts_dir: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("documents-ui")
    env = {"SEARCH_APP_UPSTREAM_API_KEY": API_KEY, "SEARCH_APP_DATA_DIR": str(data)}
    with run_server(app_args(llama_server, data / "store.sqlite", "--provider", "local"),
                    env=env, log_path=artifacts_dir / "documents_ui_app.log") as server:
        wait_ready(server)
        yield server


def test_upload_with_the_button_and_ask_with_it(docs_app: ServerProcess,
                                                tmp_path: Path) -> None:
    manual = tmp_path / "zorbex.pdf"
    manual.write_bytes(pdf_file(PAGES))
    SHOTS.mkdir(parents=True, exist_ok=True)
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(docs_app.url + "/")
        page.locator("#docs summary").click()
        page.fill("#doc-collection", "manuals")
        with page.expect_file_chooser() as chooser:  # the button opens the file picker
            page.locator("#doc-pick").click()
        chooser.value.set_files(str(manual))
        page.locator("#doc-status").filter(has_text="Added zorbex.pdf to manuals").wait_for()
        item = page.locator("#doc-list li", has_text="manuals (1)")
        item.wait_for()
        assert item.locator("input[type=checkbox]").is_checked()  # chosen once uploaded
        page.locator("#doc-web").uncheck()  # only the collection
        page.screenshot(path=str(SHOTS / "documents.png"))

        page.fill("#q", "How often must the Zorbex 4000 coffee machine be descaled?")
        page.keyboard.press("Enter")
        turn = page.locator("article.turn").first
        turn.locator("xpath=self::*[@aria-busy='false']").wait_for(timeout=ANSWER_MS)
        card = turn.locator(".cards .card").first
        assert card.locator(".card-title").inner_text() == "zorbex.pdf, p. 2"
        assert "your documents" in card.locator(".card-site").inner_text()
        href: Any = card.get_attribute("href")
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/api/documents/[0-9a-f]{32}#page=2",
                            href), href
        assert turn.locator(".error").is_hidden()
        assert turn.locator(".answer").inner_text().strip()
        page.screenshot(path=str(SHOTS / "documents_answer.png"), full_page=True)
        assert not errors, errors  # no script error, no CSP violation
        browser.close()
