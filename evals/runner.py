"""Run a dataset through the public answer API and score every answer.

Why through the API (:class:`search_app.client.AsyncSearchClient`), not the pipeline
in-process: the numbers then describe what a user of the HTTP API gets, including
streaming and the server's own timings, and the harness works against any deployment
(``--base-url``) as well as against an app it starts itself on loopback.

Resumable: every finished question is appended to ``results.jsonl`` of the run at once
(one JSON object a line, flushed), and a rerun with the same ``--run-id`` skips the ids
already there. Metrics are computed as each answer arrives and stored in its line, so
``report`` only aggregates.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

import httpx
from pydantic import BaseModel, Field

from evals import metrics as m
from evals.datasets import Question

__all__ = ["QuestionResult", "RunConfig", "Scorer", "answer_questions", "started_app"]


class SupportCheck(Protocol):
    name: str

    def supports(self, evidence: Sequence[str], sentence: str, question: str = "") -> bool:
        ...


class RunConfig(BaseModel):
    """``run.json``: what was run, against what."""

    run_id: str
    dataset: str
    questions: int
    base_url: str | None = None
    started_app: bool = False
    corpus: list[str] = Field(default_factory=list)
    corpus_variant: str = "full"
    serve_args: list[str] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list)
    provider: str | None = None
    sources: int | None = None
    related: bool = False
    mode: str = "quick"  # the app's answer mode: quick, or research (planned report)
    lead: bool | None = None  # the lead quote asked on/off (None: the app's setting)
    index_recall: bool = False
    retrieval_only: bool = False
    concurrency: int = 1
    support_check: str = ""
    judge: str | None = None
    created: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


class QuestionResult(BaseModel):
    """One line of ``results.jsonl``."""

    id: str
    question: str
    tags: list[str] = Field(default_factory=list)
    answer: str = ""
    finish_reason: str | None = None
    search_query: str | None = None
    sources: list[dict[str, Any]] = Field(default_factory=list)
    index_urls: list[str] | None = None  # /searxng/search top 10, when measured
    timings: dict[str, Any] = Field(default_factory=dict)
    usage: dict[str, int] = Field(default_factory=dict)
    wall_ms: float | None = None
    error: dict[str, str] | None = None
    grade: str | None = None
    related: list[str] = Field(default_factory=list)
    withheld: int = 0  # sentences the strict grounding policy left out
    quotes: list[dict[str, Any]] = Field(default_factory=list)  # the lead: text, source
    first_text_ms: float | None = None  # from asking to the first answer text (strict:
    #                                     the first supported sentence, quote or model's)
    # The app's own check of each sentence (its support event: sentence, supported,
    # score, withheld) and the run's support check of each emitted sentence (judged),
    # kept so the two can be compared sentence by sentence (``eval agreement``).
    app_support: list[dict[str, Any]] = Field(default_factory=list)
    app_support_threshold: float | None = None
    judged: list[dict[str, Any]] = Field(default_factory=list)
    mode: str | None = None  # the mode the app answered in (quick, research)
    plan: list[str] = Field(default_factory=list)  # research mode: the sub-questions
    retrieval_only: bool = False  # no answer was asked for: only index_* metrics
    gate_score: float | None = None  # retrieval only: what the relevance gate reads
    gate_threshold: float | None = None
    metrics: dict[str, float | None] = Field(default_factory=dict)


# --- scoring one answer ---------------------------------------------------------------

_REFUSAL = re.compile(r"\b(do(es)? not (contain|cover|mention|say|provide)|cannot answer|"
                      r"can't answer|no information|not (found|mentioned) in)\b", re.I)


_HEADING = re.compile(r"^#{2,3} .*$", re.M)


_QUOTE_LINE = re.compile(r"^>.*$", re.M)


def abstained(answer: str, finish_reason: str | None) -> bool:
    """The app's abstention (the relevance gate fired, or its fixed text; or no model
    sentence could be verified and no quote was shown either), or a model reply that
    says the sources lack the answer. An answer that shows a quote of the sources did
    not abstain: the quote is its answer. A research report (``## `` sections)
    abstained only when every section did: one unanswered part is not a refusal."""
    from search_app.prompts import ABSTAIN_TEXT, RESEARCH_GAP_TEXT

    if finish_reason in ("no_relevant_sources", "no_results") or ABSTAIN_TEXT[:40] in answer:
        return True
    quoted = bool(_QUOTE_LINE.search(answer))
    if finish_reason in ("unverified", "declined"):
        return not quoted
    answer = _QUOTE_LINE.sub("", answer)  # a quoted page may say "does not contain"
    sections = [s.strip() for s in _HEADING.split(answer) if s.strip()]
    if len(sections) > 1 or (sections and _HEADING.search(answer)):
        return all(RESEARCH_GAP_TEXT in s or _REFUSAL.search(s) for s in sections)
    return bool(_REFUSAL.search(answer))


def answer_sentences(answer: str) -> list[tuple[str, list[int]]]:
    """(sentence without citations, cited numbers), split the way the app splits. A
    research report's headings, its "not covered" lines and the notes of an answer whose
    model words could not be verified are the app's own words, not claims about the
    sources: they are left out (the quote before them is a claim, and is kept)."""
    from search_app.grounding import SentenceSplitter, citations, is_claim, strip_citations
    from search_app.prompts import DECLINED_TEXT, RESEARCH_GAP_TEXT, UNVERIFIED_TEXT

    answer = _HEADING.sub("", answer)
    for note in (RESEARCH_GAP_TEXT, *UNVERIFIED_TEXT, *DECLINED_TEXT):  # the app's words
        answer = answer.replace(note, "")
    splitter = SentenceSplitter()
    parts = [*splitter.feed(answer), splitter.flush()]
    out = []
    for part in parts:
        plain = strip_citations(part).removeprefix("> ")  # the quote's block quote mark
        if is_claim(plain):  # the app's own rule: list numbers are not claims
            out.append((plain, citations(part)))
    return out


class Scorer:
    """Computes a result's metrics (blocking: the support check runs a model)."""

    def __init__(self, support: SupportCheck | None, judge: Any | None = None, *,
                 related: bool = False) -> None:
        self.support = support
        self.judge = judge
        self.related = related

    def score(self, q: Question, r: QuestionResult) -> None:
        out: dict[str, float | None] = {}
        if r.retrieval_only:  # the index's own ranking, nothing else was asked
            for anchor, level in ((False, "page"), (True, "anchor")):
                for k in (5, 10):
                    out[f"index_recall@{k}_{level}"] = m.recall_at_k(
                        r.index_urls or [], q.gold_urls, k, anchor=anchor)
                out[f"index_mrr_{level}"] = m.mrr(r.index_urls or [], q.gold_urls,
                                                  anchor=anchor)
            if r.gate_threshold is not None:  # would the relevance gate abstain?
                gated = float(r.gate_score is None or r.gate_score < r.gate_threshold)
                out["abstention" if q.unanswerable else "false_abstention"] = gated
            r.metrics = out
            return
        urls = [s["url"] for s in sorted(r.sources, key=lambda s: s["number"])]
        for anchor, level in ((False, "page"), (True, "anchor")):
            for k in m.RETRIEVAL_KS:
                out[f"recall@{k}_{level}"] = m.recall_at_k(urls, q.gold_urls, k, anchor=anchor)
            out[f"mrr_{level}"] = m.mrr(urls, q.gold_urls, anchor=anchor)
            if not anchor:  # every source returned (research mode returns up to 12)
                out["recall@all_page"] = m.recall_at_k(urls, q.gold_urls, len(urls) or 1)
            if r.index_urls is not None:  # the index alone: no relevance gate, no packing
                for k in (5, 10):
                    out[f"index_recall@{k}_{level}"] = m.recall_at_k(
                        r.index_urls, q.gold_urls, k, anchor=anchor)
                out[f"index_mrr_{level}"] = m.mrr(r.index_urls, q.gold_urls, anchor=anchor)
        failed = r.error is not None
        did_abstain = not failed and abstained(r.answer, r.finish_reason)
        cut_off = not failed and r.finish_reason == "timeout"
        out["abstained"] = None if failed else float(did_abstain)
        out["cut_off"] = None if failed else float(cut_off)
        # Answer and citation metrics score generated answers only: a refusal (the fixed
        # abstain text shares words with many gold passages) is counted by the
        # abstention metrics, and an answer cut off by the time budget is counted apart.
        generated = not failed and not did_abstain and not cut_off
        if q.unanswerable:
            out["abstention"] = None if failed else float(did_abstain)
        else:
            out["false_abstention"] = None if failed else float(did_abstain)
            if generated:
                out["exact_match"] = m.exact_match(r.answer, q.answers)
                out["f1"] = m.f1_score(r.answer, q.answers)
                out["answer_contains"] = m.answer_contains(r.answer, q.answers)
                out["answer_recall"] = m.answer_recall(r.answer, q.answers)
                out["passage_recall"] = m.token_recall(r.answer, q.gold_passage)
        if q.gold_sentences and not failed:  # the lead: did it quote the answer?
            out["lead_hit"] = lead_hit(r.quotes, q.gold_sentences, q.answers)
            out["quoted"] = float(bool(r.quotes))
        if not failed and not did_abstain:
            out["withheld_sentences"] = float(r.withheld)
            out["dangling_shown"] = float(dangling_shown(r.app_support))
            if self.related:  # the run asked for them: did at least two appear?
                out["related_ge2"] = float(len(r.related) >= 2)
        if generated and self.support is not None and r.answer.strip():
            passages = {s["number"]: s.get("passage") or s.get("snippet") or ""
                        for s in r.sources}
            support = self.support

            def check(evidence: Sequence[str], sentence: str) -> bool:
                return support.supports(evidence, sentence, q.question)

            r.judged = []
            cites = m.alce_citations(answer_sentences(r.answer), passages, check,
                                     verdicts=r.judged)
            out["citation_recall"] = cites["citation_recall"]  # type: ignore[assignment]
            out["citation_precision"] = cites["citation_precision"]  # type: ignore[assignment]
            out["sentences_supported"] = cites["sentences_supported"]  # type: ignore[assignment]
        if self.judge is not None and q.answers and not failed:
            r.grade = self.judge.grade(q.question, q.answers[0], r.answer)
        t = r.timings
        if t and r.usage.get("completion_tokens") and t.get("ttft_ms") is not None:
            gen_ms = (t["total_ms"] - t["search_ms"] - t["read_ms"] - t["rank_ms"]
                      - t["ttft_ms"])
            tokens = r.usage["completion_tokens"] - 1
            out["tokens_per_s"] = tokens / (gen_ms / 1000) if gen_ms > 50 and tokens > 0 \
                else None
        r.metrics = out


def dangling_shown(support: Sequence[dict[str, Any]]) -> int:
    """Shown sentences that open with a pronoun right after a withheld sentence: what a
    strict answer must not have (it would read as if "He" were the quote's subject)."""
    from search_app.grounding import leans_on_previous

    count, previous_withheld = 0, False
    for s in support:
        shown = not s.get("withheld") and not s.get("repeats_quote")
        if shown and previous_withheld and leans_on_previous(str(s.get("sentence", ""))):
            count += 1
        previous_withheld = bool(s.get("withheld"))
    return count


def _norm(text: str) -> str:
    return " ".join(text.replace("\u00a0", " ").split()).lower()


def lead_hit(quotes: Sequence[dict[str, Any]], gold_sentences: Sequence[str],
             answers: Sequence[str]) -> float:
    """1.0 when the first quote holds a gold answering sentence, or is part of one and
    holds a gold answer (a splitter may cut a long sentence at a semicolon)."""
    if not quotes:
        return 0.0
    quote = _norm(str(quotes[0].get("text", "")))
    # a gold sentence kept only for its referent ("Angel Falls is a waterfall..." before
    # "It is the world's tallest...") is not the answer: the ones with an answer count
    golds = [g for g in map(_norm, gold_sentences) if any(_norm(a) in g for a in answers)]
    for gold in golds or list(map(_norm, gold_sentences)):
        if gold in quote or (quote in gold and any(_norm(a) in quote for a in answers)):
            return 1.0
    return 0.0


# --- asking ---------------------------------------------------------------------------

async def index_urls(http: httpx.AsyncClient, question: str) -> list[str] | None:
    """The local index's top 10 for the question (``GET /searxng/search``): retrieval
    measured without the relevance gate and context packing; None when unavailable."""
    try:
        response = await http.get("/searxng/search", params={"q": question,
                                                             "format": "json"})
        response.raise_for_status()
        return [str(x["url"]) for x in response.json()["results"]]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


async def ask_one(client: Any, q: Question, *, provider: str | None, sources: int | None,
                  related: bool, mode: str = "quick", lead: bool | None = None
                  ) -> QuestionResult:
    """One question through the streaming API; an error becomes the result's error.
    ``mode="research"`` asks for the planned, sectioned report; quick (the app's
    default) sends no mode, so apps without research mode are measured too."""
    from search_app.client import Answer, SearchAPIError
    from search_app.events import DeltaEvent

    result = QuestionResult(id=q.id, question=q.question, tags=q.tags)
    started = time.perf_counter()
    try:
        events = []
        async for e in client.stream(q.question, provider=provider, sources=sources,
                                     related=related, mode=None if mode == "quick" else mode,
                                     lead=lead):
            if isinstance(e, DeltaEvent) and result.first_text_ms is None and e.text.strip():
                result.first_text_ms = round((time.perf_counter() - started) * 1000, 1)
            events.append(e)
        answer = Answer.from_events(events)
    except SearchAPIError as exc:
        result.error = {"code": exc.code, "message": exc.message[:500]}
    except (httpx.HTTPError, OSError) as exc:
        result.error = {"code": "transport", "message": f"{type(exc).__name__}: {exc}"[:500]}
    else:
        result.answer = answer.answer
        result.finish_reason = answer.finish_reason
        result.search_query = answer.search_query
        result.sources = [s.model_dump(exclude_none=True) for s in answer.sources]
        result.timings = answer.timings.model_dump() if answer.timings else {}
        result.usage = answer.usage.model_dump()
        result.related = answer.related
        result.withheld = answer.support.withheld if answer.support else 0
        result.app_support = [
            s.model_dump(include={"sentence", "cited", "supported", "score", "withheld",
                                  "reason", "repeats_quote"})
            for s in (answer.support.sentences if answer.support else [])]
        result.quotes = [{"text": x.text, "source": x.source, "score": x.score}
                         for x in answer.quotes]
        result.app_support_threshold = answer.support.threshold if answer.support else None
        result.mode = answer.mode
        result.plan = list(answer.plan)
    result.wall_ms = round((time.perf_counter() - started) * 1000, 1)
    return result


async def answer_questions(base_url: str, questions: Sequence[Question], results: Path,
                           scorer: Scorer, *, concurrency: int = 1,
                           api_key: str | None = None, provider: str | None = None,
                           sources: int | None = None, related: bool = False,
                           mode: str = "quick", lead: bool | None = None,
                           index_recall: bool = False,
                           on_done: Callable[[QuestionResult], None] | None = None
                           ) -> int:
    """Ask every question (``concurrency`` at a time), score it, append it to
    ``results``; returns how many were answered with an error. ``index_recall``: also
    ask the app's local index directly (``/searxng/search``) for gate-free recall."""
    from search_app.client import AsyncSearchClient

    errors = 0
    gate = asyncio.Semaphore(concurrency)
    lock = asyncio.Lock()
    timeout = httpx.Timeout(300.0, connect=10.0)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with AsyncSearchClient(base_url, api_key=api_key, client_id="search-app-eval",
                                 timeout=timeout) as client, \
            httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout) as http:
        async def one(q: Question) -> None:
            nonlocal errors
            async with gate:
                result = await ask_one(client, q, provider=provider, sources=sources,
                                       related=related, mode=mode, lead=lead)
                if index_recall and q.gold_urls:
                    result.index_urls = await index_urls(http, q.question)
            await asyncio.to_thread(scorer.score, q, result)
            async with lock:
                with results.open("a", encoding="utf-8") as out:
                    out.write(result.model_dump_json() + "\n")
                errors += result.error is not None
                if on_done is not None:
                    on_done(result)

        await asyncio.gather(*(one(q) for q in questions))
    return errors


def retrieve_questions(search: Callable[[str], list[str]], questions: Sequence[Question],
                       results: Path, scorer: Scorer, *,
                       gate: Callable[[str], float | None] | None = None,
                       gate_threshold: float | None = None,
                       on_done: Callable[[QuestionResult], None] | None = None) -> None:
    """Retrieval only (no model): the index's top 10 URLs per question, scored and
    appended to ``results`` like answers are; for question sets too large to answer.
    With ``gate`` (the app's search + rank, returning the best dense score) and its
    threshold, the relevance gate's abstentions are scored too."""
    results.parent.mkdir(parents=True, exist_ok=True)
    for q in questions:
        started = time.perf_counter()
        result = QuestionResult(id=q.id, question=q.question, tags=q.tags,
                                retrieval_only=True, index_urls=search(q.question))
        if gate is not None:
            result.gate_score = gate(q.question)
            result.gate_threshold = gate_threshold
        result.wall_ms = round((time.perf_counter() - started) * 1000, 1)
        scorer.score(q, result)
        with results.open("a", encoding="utf-8") as out:
            out.write(result.model_dump_json() + "\n")
        if on_done is not None:
            on_done(result)


def read_results(path: Path) -> list[QuestionResult]:
    """The results of a run; a torn last line (a killed run) is ignored."""
    out: dict[str, QuestionResult] = {}
    if not path.is_file():
        return []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            result = QuestionResult.model_validate_json(line)
        except ValueError:
            continue
        out[result.id] = result
    return list(out.values())


def served_models(base_url: str, api_key: str | None = None) -> list[str]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        data = httpx.get(f"{base_url}/v1/models", headers=headers, timeout=10).json()
        return [str(x["id"]) for x in data.get("data", [])]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return []


# --- an app of our own ------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AppStartError(RuntimeError):
    """The app the harness started did not become ready."""


@contextmanager
def started_app(data_dir: Path, *, serve_args: Sequence[str] = (), log_path: Path,
                ready_timeout: float = 600.0) -> Iterator[str]:
    """``search-app serve`` on a free loopback port over ``data_dir``'s index, with a
    store kept in the run's folder (next to ``log_path``) and no rate limit; yields its
    base URL once the answer engine is ready (``/searxng/search`` answers 200), stops it
    after. The search timeout is raised to 30 s, the first-token timeout to 120 s and
    the whole-answer budget to 600 s (the app's 5, 30 and 90 s fail or cut answers on a
    CPU shared with the model under concurrent questions; a cut answer would be scored
    as a short one); ``serve_args`` come last and override."""
    port = _free_port()
    store = log_path.parent / "store.sqlite"  # under the run: --root holds everything
    command = [sys.executable, "-m", "search_app.cli", "serve", "--host", "127.0.0.1",
               "--port", str(port), "--data-dir", str(data_dir), "--store-path", str(store),
               "--rate-limit-per-minute", "0", "--provider", "local",
               # A loaded eval machine must not turn a slow search or a slow first token
               # into a failed answer: quality is measured, not the machine's load.
               "--search-timeout-s", "30", "--first-token-timeout-s", "120",
               "--answer-timeout-s", "600", *serve_args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log, owned_process(command, log=log, env=env) as process:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + ready_timeout
        while True:
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-1:]
                raise AppStartError(f"the app exited with {process.returncode} "
                                    f"({tail[0] if tail else 'no output'}); log: "
                                    f"{log_path}")
            try:
                probe = httpx.get(f"{url}/searxng/search",
                                  params={"q": "ready", "format": "json"}, timeout=5)
                if probe.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AppStartError(f"the app was not ready in {ready_timeout:g} s; "
                                    f"log: {log_path}")
            time.sleep(0.5)
        yield url


@contextmanager
def owned_process(command: Sequence[str], *, log: IO[bytes], env: dict[str, str]
                  ) -> Iterator[subprocess.Popen[bytes]]:
    """A child process that ends with this block, also when this process is told to
    stop (SIGTERM, SIGHUP: Python's default would exit without running ``finally``, and
    the child, in its own session so that Ctrl-C reaches only the harness, would be left
    serving)."""
    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                               start_new_session=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def write_config(run_dir: Path, config: RunConfig) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps(config.model_dump(), indent=2) + "\n")


def read_config(run_dir: Path) -> RunConfig:
    return RunConfig.model_validate_json((run_dir / "run.json").read_text())
