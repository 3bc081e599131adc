"""The browser UI in a real browser (Debian's chromium driven by Playwright) against a
real ``search-app serve``: llama.cpp with SmolLM2, MiniLM and the default local index,
plus a loopback SearXNG-shaped web whose results carry XSS payloads.

One app server and one browser for the module; the tests share a page where a later one
builds on an earlier answer (follow-up, share, phone width), so the model answers only a
handful of questions. Screenshots of the main states go to artifacts/ui/.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from search_app.events import DeltaEvent, SearchEvent, Source, SourcesEvent
from search_app.store import AnswerRecord, Store
from tests.support.server import ROOT, ServerProcess, run_server
from tests.ui.chromium import ARGS, BROWSER_MARKS, CHROMIUM
from tests.ui.hostile_web import HostileWeb, payloads, serve_hostile_web

playwright_sync = pytest.importorskip("playwright.sync_api")
pytestmark = BROWSER_MARKS
SHOTS = ROOT / "artifacts" / "ui"
ANSWER_S = 150_000  # ms: one answer from SmolLM2 on a busy 2-core machine
QUESTION = "Who designed the Eiffel Tower?"
BUDGET_BYTES = 150 * 1024


# ------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileWeb]:
    with serve_hostile_web() as web:
        yield web


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ui-store") / "store.sqlite"


@pytest.fixture(scope="module")
def app_server(hostile: HostileWeb, store_path: Path, artifacts_dir: Path
               ) -> Iterator[ServerProcess]:
    env = {"SEARCH_APP_PROVIDER": "local,searxng",
           "SEARCH_APP_SEARXNG_URL": f"{hostile.base_url}/searxng",
           "SEARCH_APP_FETCH_ALLOW": "127.0.0.1/32"}
    with run_server(["serve", "--engine", "llamacpp", "--context-length", "2048",
                     "--store-path", str(store_path)], env=env,
                    log_path=artifacts_dir / "ui_server.log") as server:
        for _ in range(240):  # /health is up before the answer engine
            if httpx.get(f"{server.url}/api/info").json()["state"] == "ready":
                break
            time.sleep(0.5)
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with playwright_sync.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


class Watch:
    """What a page did: requests, console messages, uncaught errors, dialogs."""

    def __init__(self, page: Any) -> None:
        self.requests: list[Any] = []
        self.console: list[str] = []
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("request", lambda r: self.requests.append(r))
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))


@pytest.fixture(scope="module")
def context(browser: Any, app_server: ServerProcess) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 860})
    ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=app_server.url)
    # Source links open in new tabs; the machine is offline, so answer them here.
    ctx.route(re.compile(r"^https?://(?!127\.0\.0\.1)"),
              lambda route: route.fulfill(status=200, body="external page",
                                          content_type="text/plain"))
    yield ctx
    ctx.close()


@pytest.fixture(scope="module")
def page(context: Any) -> Any:
    page = context.new_page()
    page.watch = Watch(page)
    return page


def shot(page: Any, name: str, *, full: bool = True) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full)


def wait_done(page: Any, turn: int) -> Any:
    """The turn's article once it is no longer busy (finished, stopped or failed)."""
    node = page.locator("article.turn").nth(turn)
    node.locator("xpath=self::*[@aria-busy='false']").wait_for(timeout=ANSWER_S)
    return node


# --------------------------------------------------------------------------- tests
def test_home_first_render_budget_and_csp(page: Any, app_server: ServerProcess) -> None:
    response = page.goto(app_server.url + "/")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    page.wait_for_load_state("networkidle")
    origins = {re.match(r"^[a-z]+://[^/]+", r.url).group(0) for r in page.watch.requests}
    assert origins == {app_server.url}, origins  # nothing beyond the app itself
    assert page.evaluate("document.activeElement.id") == "q"  # focus on load
    assert page.locator("#model").inner_text() == "SmolLM2-135M-Instruct.Q4_1"
    assert page.locator("#provider option").all_inner_texts() == ["local,searxng", "local",
                                                                  "searxng"]
    assert page.locator(".examples button").count() >= 3
    # Budget: every script and stylesheet the page loaded, uncompressed.
    assets = [r for r in page.watch.requests if r.resource_type in ("script", "stylesheet")]
    assert {r.url.rsplit("/", 1)[-1] for r in assets} >= {"app.js", "app.css",
                                                         "marked.min.js", "purify.min.js"}
    total = sum(len(r.response().body()) for r in assets)
    assert total <= BUDGET_BYTES, f"JS+CSS {total} bytes > {BUDGET_BYTES}"
    # "/" focuses the search box from anywhere.
    page.locator("#history-btn").focus()
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "q"
    assert page.locator("#q").input_value() == ""
    shot(page, "home")


def test_ask_sources_then_streamed_answer_with_chips(page: Any, context: Any,
                                                     store_path: Path) -> None:
    # Record, as it happens, when the sources and the answer first appear and what the
    # stage indicator says, to show the order and the streaming.
    page.evaluate("""() => {
      window.__seen = [];
      const note = (what) => { if (!window.__seen.includes(what)) window.__seen.push(what); };
      new MutationObserver(() => {
        if (document.querySelector('.cards .card')) note('sources');
        const a = document.querySelector('.answer');
        if (a && a.textContent.trim()) note('answer:' + a.textContent.length);
        const s = document.querySelector('.stage-text');
        if (s && !s.closest('[hidden]')) note('stage:' + s.textContent);
      }).observe(document.body, {subtree: true, childList: true, characterData: true,
                                 attributes: true});
    }""")
    page.fill("#q", QUESTION)
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "fq"  # focus follows the page
    page.locator(".cards .card").first.wait_for(timeout=ANSWER_S)
    shot(page, "streaming")
    turn = wait_done(page, 0)
    seen: list[str] = page.evaluate("window.__seen")
    first_answer = next(i for i, s in enumerate(seen) if s.startswith("answer:"))
    assert seen.index("sources") < first_answer, seen
    assert any(s.startswith("stage:Searching") for s in seen), seen
    assert "stage:Writing the answer…" in seen, seen
    assert page.locator(".answer").get_attribute("aria-live") == "polite"
    assert turn.locator(".error").is_hidden()
    assert "Eiffel Tower" in turn.locator(".card-title").all_inner_texts()
    text = turn.locator(".answer").inner_text()
    assert len(text) > 20 and "[citation:" not in text
    # The lead: the sources' own words open the answer, labelled and cited.
    lead = turn.locator(".answer blockquote.lead")
    assert lead.count() == 1 and lead.locator(".lead-label").inner_text() == \
        "From the sources"
    assert lead.locator("a.cite").count() == 1
    quote = lead.inner_text().removeprefix("From the sources").strip()
    timings = turn.locator(".timings").inner_text()
    assert "first token" in timings and "total" in timings
    assert turn.locator(".stage").is_hidden()  # no spinner left behind
    assert re.fullmatch(r".*/t/[0-9a-f]+", page.url)

    # Citation chips. SmolLM2 samples (temperature 0.2) and does not always cite; then
    # the same checks run on a stored copy of this answer with a citation added, which
    # the page renders through the same code (the share replay).
    chips = turn.locator(".answer a.cite")
    if chips.count():
        _check_chip(page, context, turn)
    else:
        other = context.new_page()
        search_id = _seed_cited_copy(page, store_path)
        other.goto(f"{page.url.split('/t/')[0]}/s/{search_id}")
        _check_chip(other, context, wait_done(other, 0))
        other.close()

    shot(page, "answer")
    # Copy: the answer with its sources as footnotes.
    turn.locator("[data-act=copy]").click()
    copied = page.evaluate("navigator.clipboard.readText()")
    assert "Sources:\n[1] " in copied and "[citation:" not in copied
    assert copied.startswith(f"> {quote[:20]}")  # the quote, as a Markdown block quote


def _check_chip(page: Any, context: Any, turn: Any) -> None:
    """Hover or focus shows the source; a click opens it in a new tab, safely."""
    chip = turn.locator(".answer a.cite").first
    n = int(chip.inner_text())
    card = turn.locator(".cards a.card").nth(n - 1)
    assert chip.get_attribute("href") == card.get_attribute("href")
    assert chip.get_attribute("rel") == "noopener noreferrer"
    assert chip.get_attribute("target") == "_blank"
    chip.hover()
    pop = page.locator("#pop")
    pop.wait_for(state="visible")
    assert pop.locator(".pop-title").inner_text() == card.locator(".card-title").inner_text()
    assert pop.locator(".pop-snippet").inner_text().strip()
    assert chip.get_attribute("aria-describedby") == "pop"
    shot(page, "citation-popover", full=False)
    with context.expect_page() as opened:
        chip.click()
    tab = opened.value
    tab.wait_for_load_state()
    assert tab.url == chip.get_attribute("href")
    assert tab.evaluate("window.opener") is None  # noopener
    tab.close()
    page.mouse.move(0, 0)
    pop.wait_for(state="hidden")
    page.evaluate("document.activeElement && document.activeElement.blur()")
    chip.focus()  # keyboard users get the same
    pop.wait_for(state="visible")
    page.keyboard.press("Escape")
    pop.wait_for(state="hidden")


def _seed_cited_copy(page: Any, store_path: Path) -> str:
    """Store a copy of the page's finished answer whose first sentence cites source 1."""
    thread_id = page.url.rsplit("/", 1)[-1]
    record = httpx.get(page.url.replace(f"/t/{thread_id}", f"/api/threads/{thread_id}")
                       ).json()["answers"][0]
    search_id = uuid.uuid4().hex
    events = []
    for e in record["events"]:
        data = dict(e["data"])
        if e["event"] == "search":
            data.update(search_id=search_id, thread_id=search_id)
        elif e["event"] == "delta" and "[citation:" not in "".join(
                x["data"].get("text", "") for x in events if x["event"] == "delta"):
            data["text"] = data["text"].rstrip() + "[citation:1] "
        events.append({"event": e["event"], "data": data})
    answer = "".join(e["data"]["text"] for e in events if e["event"] == "delta")
    store = Store(store_path)
    try:
        store.save_answer(AnswerRecord(id=search_id, thread_id=search_id, client_id=None,
                                       query=record["query"], search_query=record["query"],
                                       answer=answer, events=events))
    finally:
        store.close()
    return search_id


def test_follow_up_continues_the_thread(page: Any, app_server: ServerProcess) -> None:
    page.fill("#fq", "When was it built?")
    page.keyboard.press("Enter")
    second = wait_done(page, 1)
    assert page.locator("article.turn").count() == 2
    assert second.locator(".error").is_hidden()
    assert second.locator(".cards .card").count() >= 1  # its own sources
    assert second.locator(".answer").inner_text().strip()
    thread_id = page.url.rsplit("/", 1)[-1]
    stored = httpx.get(f"{app_server.url}/api/threads/{thread_id}").json()
    assert [a["query"] for a in stored["answers"]] == [QUESTION, "When was it built?"]
    assert page.locator("#export").get_attribute("href") == \
        f"/api/threads/{thread_id}?format=md"
    # Only the last turn can be regenerated.
    assert page.locator("article.turn").nth(0).locator("[data-act=regen]").is_hidden()
    assert second.locator("[data-act=regen]").is_visible()
    # History lists the thread; its link reopens the conversation.
    page.click("#history-btn")
    link = page.locator("#history-list a.hist").first
    link.wait_for()
    assert link.inner_text() == QUESTION
    assert link.get_attribute("href") == f"/t/{thread_id}"
    shot(page, "history", full=False)
    page.keyboard.press("Escape")
    shot(page, "conversation")


def test_share_link_replays_the_stored_answer(page: Any, context: Any) -> None:
    first = page.locator("article.turn").nth(0)
    first.locator("[data-act=share]").click()
    url = page.evaluate("navigator.clipboard.readText()")
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/s/[0-9a-f]+", url), url
    answer = first.locator(".answer").inner_text()
    sources = first.locator(".card-title").all_inner_texts()
    other = context.new_page()
    watch = Watch(other)
    other.goto(url)
    replayed = wait_done(other, 0)
    assert replayed.locator(".answer").inner_text() == answer
    assert replayed.locator(".card-title").all_inner_texts() == sources
    assert other.locator("article.turn h2").inner_text() == QUESTION
    assert not [r for r in watch.requests if r.method == "POST"]  # replayed, not recomputed
    assert QUESTION in other.title()
    assert not watch.errors, watch.errors
    other.close()


def _seed_thread(store_path: Path) -> tuple[str, str]:
    """A stored two-turn thread that cites its sources (no model needed): its thread id
    and its first answer's id."""
    thread_id = uuid.uuid4().hex
    turns = [("Who designed the Eiffel Tower?",
              "The company of Gustave Eiffel designed it[citation:1].",
              [("Eiffel Tower", "https://en.wikipedia.org/wiki/Eiffel_Tower")]),
             ("Where is it?", "It stands in Paris [citation:2].",
              [("Champ de Mars", "https://en.wikipedia.org/wiki/Champ_de_Mars"),
               ("Paris", "https://en.wikipedia.org/wiki/Paris")])]
    store = Store(store_path)
    ids = []
    try:
        for query, answer, sources in turns:
            search_id = uuid.uuid4().hex
            ids.append(search_id)
            events = [
                SearchEvent(search_id=search_id, thread_id=thread_id, query=query,
                            search_query=query).record(),
                SourcesEvent(sources=[Source(number=n, title=title, url=url,
                                             site="en.wikipedia.org", snippet=title)
                                      for n, (title, url) in enumerate(sources, 1)]
                             ).record(),
                DeltaEvent(text=answer).record()]
            store.save_answer(AnswerRecord(id=search_id, thread_id=thread_id,
                                           client_id=None, query=query, search_query=query,
                                           answer=answer, events=events))
    finally:
        store.close()
    return thread_id, ids[0]


def _download(page: Any) -> tuple[str, str]:
    """Click the Export link; the suggested file name and the Markdown downloaded."""
    link = page.locator("#export")
    link.wait_for(state="visible")
    assert link.get_attribute("download") is not None
    with page.expect_download() as info:
        link.click()
    download = info.value
    return download.suggested_filename, Path(download.path()).read_text(encoding="utf-8")


def test_export_downloads_markdown_with_footnotes(context: Any, app_server: ServerProcess,
                                                  store_path: Path) -> None:
    thread_id, first_id = _seed_thread(store_path)
    page = context.new_page()
    watch = Watch(page)
    page.goto(f"{app_server.url}/t/{thread_id}")
    wait_done(page, 1)
    assert page.locator("#export").get_attribute("href") == \
        f"/api/threads/{thread_id}?format=md"
    name, text = _download(page)
    assert name == "who-designed-the-eiffel-tower.md"
    assert text.startswith("# Who designed the Eiffel Tower?\n")
    assert "designed it[^1-1]." in text and "in Paris [^2-2]." in text
    assert "[^1-1]: [Eiffel Tower](https://en.wikipedia.org/wiki/Eiffel_Tower)" in text
    assert "[^2-2]: [Paris](https://en.wikipedia.org/wiki/Paris)" in text
    # The share page exports the shared answer, through the share link's own route.
    page.goto(f"{app_server.url}/s/{first_id}")
    wait_done(page, 0)
    assert page.locator("#export").get_attribute("href") == \
        f"/api/search/{first_id}?format=md"
    name, text = _download(page)
    assert name == "who-designed-the-eiffel-tower.md"
    assert "designed it[^1]." in text and "Where is it?" not in text
    assert "[^1]: [Eiffel Tower](https://en.wikipedia.org/wiki/Eiffel_Tower)" in text
    assert not watch.errors, watch.errors
    page.close()


def test_search_filters_from_the_controls_and_the_address(context: Any,
                                                         app_server: ServerProcess) -> None:
    page = context.new_page()
    sent: list[dict] = []
    page.on("request", lambda r: sent.append(json.loads(r.post_data or "{}"))
            if r.url.endswith("/api/search") and r.method == "POST" else None)
    # A link with filters fills the controls; changing them rewrites the address.
    page.goto(f"{app_server.url}/?recency=week&site=wikipedia.org")
    assert page.locator("#when").input_value() == "week"
    assert page.locator("#site").input_value() == "wikipedia.org"
    page.select_option("#when", "year")
    page.wait_for_function("location.search.includes('recency=year')")
    # The default index is undated Wikipedia: no result can be from the past year,
    # and the answer says so instead of answering from unfiltered results.
    page.fill("#q", QUESTION)
    page.keyboard.press("Enter")
    turn = wait_done(page, 0)
    assert sent[-1]["search_recency_filter"] == "year"
    assert sent[-1]["search_domain_filter"] == ["wikipedia.org"]
    assert turn.locator(".turn-filters").inner_text() == \
        "Filtered: site:wikipedia.org, past year"
    assert "No results match the search filters" in turn.locator(".answer").inner_text()
    assert turn.locator(".cards .card").count() == 0
    assert re.search(r"/t/[0-9a-f]+\?recency=year&site=wikipedia\.org$", page.url), page.url
    # A follow-up keeps the conversation's filters, also after a reload of its address.
    page.reload()
    wait_done(page, 0)
    page.fill("#fq", "When was it built?")
    page.keyboard.press("Enter")
    wait_done(page, 1)
    assert sent[-1]["search_recency_filter"] == "year"
    assert sent[-1]["search_domain_filter"] == ["wikipedia.org"]
    # A search link runs the search it names, with its filters.
    page.goto(f"{app_server.url}/?q={QUESTION.replace(' ', '+').replace('?', '%3F')}"
              "&site=-example.org")
    turn = wait_done(page, 0)
    assert sent[-1] == {"query": QUESTION, "search_domain_filter": ["-example.org"]}
    assert turn.locator(".turn-filters").inner_text() == "Filtered: -site:example.org"
    assert turn.locator(".cards .card").count() >= 1  # Wikipedia is not excluded
    page.close()


def test_research_mode_shows_the_plan_and_a_sectioned_report(context: Any,
                                                             app_server: ServerProcess
                                                             ) -> None:
    page = context.new_page()
    sent: list[dict] = []
    page.on("request", lambda r: sent.append(json.loads(r.post_data or "{}"))
            if r.url.endswith("/api/search") and r.method == "POST" else None)
    page.goto(app_server.url + "/")
    page.check("#research")
    page.wait_for_function("location.search.includes('mode=research')")
    page.fill("#q", "Who designed the Eiffel Tower, and where is the Statue of Liberty?")
    page.keyboard.press("Enter")
    turn = wait_done(page, 0)
    assert sent[-1]["mode"] == "research"
    assert turn.locator(".error").is_hidden(), turn.locator(".error").inner_text()
    assert turn.locator(".plan-box").is_visible()
    steps = turn.locator(".plan li").all_inner_texts()
    assert len(steps) >= 2 and all(s.endswith("?") for s in steps), steps
    # each step is a section of the rendered report, then the conclusion
    assert turn.locator(".answer h2").all_inner_texts() == [*steps, "Conclusion"]
    assert turn.locator(".cards .card").count() >= 1
    assert "mode=research" in page.url
    shot(page, "research")
    page.close()


def test_dark_mode_toggle_is_remembered(page: Any) -> None:
    light = page.evaluate("getComputedStyle(document.body).backgroundColor")
    page.click("#theme")
    assert page.get_attribute("html", "data-theme") == "dark"
    assert page.get_attribute("#theme", "aria-pressed") == "true"
    dark = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert dark != light
    page.reload()
    wait_done(page, 1)
    assert page.get_attribute("html", "data-theme") == "dark"  # remembered (cookie)
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == dark
    shot(page, "dark")
    page.click("#theme")
    assert page.get_attribute("html", "data-theme") == "light"


def test_phone_width_has_no_horizontal_scroll(page: Any) -> None:
    page.set_viewport_size({"width": 360, "height": 740})
    try:
        page.reload()
        wait_done(page, 1)
        width = page.evaluate("[document.documentElement.scrollWidth, "
                              "document.documentElement.clientWidth]")
        assert width[0] <= width[1], width
        shot(page, "phone")
        page.goto(page.url.split("/t/")[0] + "/")
        width = page.evaluate("[document.documentElement.scrollWidth, "
                              "document.documentElement.clientWidth]")
        assert width[0] <= width[1], width
        shot(page, "phone-home")
    finally:
        page.set_viewport_size({"width": 1280, "height": 860})


def test_stop_generation(page: Any, app_server: ServerProcess) -> None:
    page.goto(app_server.url + "/")
    page.fill("#q", "What is bronze made of?")
    page.keyboard.press("Enter")
    turn = page.locator("article.turn").first
    turn.locator(".cards .card").first.wait_for(timeout=ANSWER_S)  # the model is writing
    turn.locator("[data-act=stop]").click()
    wait_done(page, 0)
    assert turn.locator(".stage-text").inner_text() == "Stopped."
    assert turn.locator(".spin").is_hidden()
    assert turn.locator("[data-act=stop]").is_hidden()
    assert turn.locator("[data-act=regen]").is_visible()
    assert turn.locator("[data-act=share]").is_hidden()  # nothing was stored
    assert turn.locator(".error").is_hidden()
    assert page.url.endswith("/")
    shot(page, "stopped")


def test_errors_are_shown_in_place_with_retry(page: Any, app_server: ServerProcess) -> None:
    sse = ('event: search\ndata: {"search_id": "e1", "thread_id": "t1", "query": "q", '
           '"search_query": "q"}\n\n')
    cases = [  # (what the server answers, the error code the page must show)
        (dict(status=429, headers={"Retry-After": "7"}, content_type="application/json",
              body='{"error": {"message": "Rate limit exceeded", "type": "rate_limit"}}'),
         "rate_limited", "Retry in 7 s"),
        (dict(status=503, content_type="application/json",
              body='{"error": {"message": "The model is still loading"}}'),
         "model_unavailable", "still loading"),
        (dict(status=200, content_type="text/event-stream", body=sse + 'event: error\ndata: '
              '{"code": "search_failed", "message": "searxng: 500"}\n\n'),
         "search_failed", "searxng: 500"),
        (dict(status=200, content_type="text/event-stream", body=sse),  # dropped mid-way
         "dropped", "ended before"),
    ]
    for reply, code, words in cases:
        page.goto(app_server.url + "/")
        page.route("**/api/search", _fulfil(reply))
        page.fill("#q", "Anything at all?")
        page.keyboard.press("Enter")
        turn = wait_done(page, 0)
        error = turn.locator(".error")
        assert error.get_attribute("data-code") == code
        assert words in error.inner_text()
        assert error.get_attribute("role") == "alert"
        assert turn.locator(".spin").is_hidden()
        page.unroute("**/api/search")
        shot(page, f"error-{code}", full=False)
    # Retry really retries: now against the real app.
    turn.locator("[data-act=retry]").click()
    wait_done(page, 0)
    assert turn.locator(".error").is_hidden()
    # An unknown shared answer is a 404 page with the error in place.
    response = page.goto(app_server.url + "/s/does-not-exist")
    assert response.status == 404
    error = wait_done(page, 0).locator(".error")
    assert error.get_attribute("data-code") == "not_found"


def test_related_questions_and_unsupported_sentences(page: Any,
                                                     app_server: ServerProcess) -> None:
    """The answer's extras, from a scripted stream (the tiny model rarely gives related
    questions): related questions ask a follow-up in the same thread; sentences the
    support check rejected are marked."""
    events = [
        ("search", {"search_id": "s1", "thread_id": "thread-1", "query": "Q1",
                    "search_query": "Q1"}),
        ("sources", {"provider": "local", "relevant": True, "sources": [
            {"number": 1, "title": "Bronze", "url": "https://en.wikipedia.org/wiki/Bronze",
             "site": "en.wikipedia.org", "snippet": "Bronze is an alloy of copper.",
             "date": None}]}),
        ("delta", {"text": "Bronze is an alloy of copper and tin.[citation:1] "}),
        ("delta", {"text": "It was invented on the moon by cats."}),
        ("related", {"questions": ["What is brass made of?", "Who made the first bronze?"]}),
        ("support", {"threshold": 0.55, "supported_ratio": 0.5, "sentences": [
            {"sentence": "Bronze is an alloy of copper and tin.[citation:1]", "cited": [1],
             "supported": True, "score": 0.8, "best_source": 1},
            {"sentence": "It was invented on the moon by cats.", "cited": [],
             "supported": False, "score": 0.1, "best_source": None}]}),
        ("timings", {"search_ms": 5, "read_ms": 0, "rank_ms": 3, "ttft_ms": 900,
                     "total_ms": 1500, "fallbacks": ["read"]}),
        ("done", {"finish_reason": "stop", "usage": {"prompt_tokens": 9,
                                                    "completion_tokens": 9}}),
    ]
    stream = "".join(f"event: {n}\r\ndata: {json.dumps(d)}\r\n\r\n" for n, d in events)
    bodies: list[dict[str, Any]] = []

    def reply(route: Any) -> None:
        bodies.append(json.loads(route.request.post_data))
        route.fulfill(status=200, content_type="text/event-stream", body=stream)

    page.goto(app_server.url + "/")
    page.route("**/api/search", reply)
    try:
        page.fill("#q", "Q1")
        page.keyboard.press("Enter")
        turn = wait_done(page, 0)
        mark = turn.locator(".answer .unsupported")
        assert mark.count() == 1 and "moon by cats" in mark.inner_text()
        assert mark.get_attribute("title") == "Not supported by the cited source"
        assert "fell back: read" in turn.locator(".timings").inner_text()
        related = turn.locator(".related button")
        assert related.all_inner_texts() == ["What is brass made of?",
                                             "Who made the first bronze?"]
        shot(page, "related", full=False)
        related.first.click()
        wait_done(page, 1)
        assert bodies[0] == {"query": "Q1"}
        assert bodies[1] == {"query": "What is brass made of?", "thread_id": "thread-1"}
    finally:
        page.unroute("**/api/search")


def test_withheld_sentences_are_counted_and_revealed_on_request(
        page: Any, app_server: ServerProcess) -> None:
    """Strict grounding: a withheld sentence is not in the answer; the turn says how many
    were withheld, and a control reveals them, marked as unsupported."""
    moon = "It was invented on the moon by cats."
    events = [
        ("search", {"search_id": "s2", "thread_id": "thread-2", "query": "Q2",
                    "search_query": "Q2"}),
        ("sources", {"provider": "local", "relevant": True, "sources": [
            {"number": 1, "title": "Bronze", "url": "https://en.wikipedia.org/wiki/Bronze",
             "site": "en.wikipedia.org", "snippet": "Bronze is an alloy of copper.",
             "date": None}]}),
        ("delta", {"text": "Bronze is an alloy of copper and tin.[citation:1] "}),
        ("related", {"questions": []}),
        ("support", {"threshold": 0.55, "supported_ratio": 0.5, "policy": "strict",
                     "withheld": 1, "sentences": [
                         {"sentence": "Bronze is an alloy of copper and tin.", "cited": [1],
                          "supported": True, "score": 0.8, "best_source": 1},
                         {"sentence": moon, "cited": [], "supported": False, "score": 0.1,
                          "best_source": None, "withheld": True}]}),
        ("timings", {"search_ms": 5, "read_ms": 0, "rank_ms": 3, "ttft_ms": 900,
                     "total_ms": 1500, "fallbacks": []}),
        ("done", {"finish_reason": "stop", "withheld": 1,
                  "usage": {"prompt_tokens": 9, "completion_tokens": 9}}),
    ]
    stream = "".join(f"event: {n}\r\ndata: {json.dumps(d)}\r\n\r\n" for n, d in events)
    page.goto(app_server.url + "/")
    page.route("**/api/search", lambda route: route.fulfill(
        status=200, content_type="text/event-stream", body=stream))
    try:
        page.fill("#q", "Q2")
        page.keyboard.press("Enter")
        turn = wait_done(page, 0)
        assert "moon" not in turn.locator(".answer").inner_text()
        box = turn.locator(".withheld")
        assert box.is_visible()
        assert box.locator(".withheld-count").inner_text() == "1 unsupported sentence withheld."
        assert not box.locator(".withheld-list").is_visible()
        button = box.locator("button")
        assert button.get_attribute("aria-expanded") == "false"
        button.click()
        items = box.locator(".withheld-list li")
        assert items.count() == 1 and moon in items.first.inner_text()
        assert "not supported by the sources" in items.first.inner_text()
        assert button.get_attribute("aria-expanded") == "true"
        shot(page, "withheld", full=False)
        button.click()
        assert not box.locator(".withheld-list").is_visible()
    finally:
        page.unroute("**/api/search")


def test_xss_from_pages_snippets_and_answers_executes_nothing(
        browser: Any, app_server: ServerProcess, hostile: HostileWeb,
        store_path: Path) -> None:
    # bypass_csp: the sanitizer alone must hold (the CSP is the second wall, checked in
    # the first test); a violation report would also mean markup got through.
    ctx = browser.new_context(bypass_csp=True)
    try:
        page = ctx.new_page()
        watch = Watch(page)
        page.goto(app_server.url + "/")
        page.select_option("#provider", "searxng")
        page.fill("#q", "Riverton flood defences report")
        page.keyboard.press("Enter")
        turn = wait_done(page, 0)
        assert turn.locator(".error").is_hidden(), turn.locator(".error").inner_text()
        # The reader replaces result titles by the page's own; the snippets keep the
        # payloads (unescaped by the provider): shown as text, in the card's tooltip and
        # in the citation popover. SmolLM2 often copies them into the answer too.
        cards = turn.locator(".cards a.card")
        snippets = [cards.nth(i).get_attribute("title") for i in range(cards.count())]
        assert any("<script>" in s and "onerror=" in s for s in snippets), snippets
        chips = turn.locator(".answer a.cite")
        if chips.count():
            chips.first.hover()
            assert "<script>" in page.locator("#pop .pop-snippet").inner_text()
        shot(page, "xss-search")
        _assert_inert(page, watch, hostile)

        # An answer that carries every payload, stored as if a model had written it.
        base = hostile.base_url
        p = payloads(base)
        answer = (f"Flood notes {p['script']} and {p['img']}.[citation:1]\n\n"
                  f"See {p['js_link']} or <a href=\"javascript:window.__xss='a'\">here</a> "
                  f"and the map {p['remote_img']}.[citation:2]")
        search_id = uuid.uuid4().hex
        events = [
            {"event": "search", "data": {"search_id": search_id, "thread_id": search_id,
                                         "query": "xss", "search_query": "xss"}},
            {"event": "sources", "data": {"provider": "searxng", "relevant": True, "sources": [
                {"number": 1, "title": p["img"], "url": f"{base}/page/hostile", "site":
                 "127.0.0.1", "snippet": p["script"], "date": None},
                {"number": 2, "title": "js", "url": "javascript:window.__xss='src'",
                 "site": "<b>x</b>", "snippet": p["js_link"], "date": None}]}},
            {"event": "delta", "data": {"text": answer}},
            {"event": "done", "data": {"finish_reason": "stop",
                                       "usage": {"prompt_tokens": 1, "completion_tokens": 1}}},
        ]
        store = Store(store_path)
        try:
            store.save_answer(AnswerRecord(id=search_id, thread_id=search_id, client_id=None,
                                           query="xss", search_query="xss", answer=answer,
                                           events=events))
        finally:
            store.close()
        page.goto(f"{app_server.url}/s/{search_id}")
        turn = wait_done(page, 0)
        text = turn.locator(".answer").inner_text()
        assert "<script>" in text and "onerror=" in text  # literal text, inert
        assert "[image: flood map]" in text  # the remote image is not loaded
        for a in turn.locator(".answer a").all():
            href = a.get_attribute("href")
            assert href is None or href.startswith("http"), href
        assert turn.locator(".cards span.card").count() == 1  # javascript: source: no link
        for chip in turn.locator(".answer .cite").all():
            chip.hover()
            chip.click()
        shot(page, "xss-stored")
        _assert_inert(page, watch, hostile)
    finally:
        ctx.close()


def _fulfil(reply: dict[str, Any]) -> Any:
    return lambda route: route.fulfill(**reply)


def _assert_inert(page: Any, watch: Watch, hostile: HostileWeb) -> None:
    page.wait_for_timeout(500)  # give an onerror handler time to fire
    assert page.evaluate("window.__xss") is None
    assert not watch.dialogs, watch.dialogs
    assert not hostile.beacons, hostile.beacons
    assert not [r.url for r in watch.requests if "/beacon/" in r.url]
    assert not [c for c in watch.console if "Content Security Policy" in c], watch.console
    assert not watch.errors, watch.errors
    found = page.evaluate("""() => [...document.querySelectorAll(
        '.turn script, .turn img, .turn iframe, .turn [onerror], .turn [style], #pop *[onerror]')]
        .map(e => e.outerHTML)""")
    assert found == []
