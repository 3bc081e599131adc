"""The answer pipeline: one question in, a stream of events out.

Read :meth:`AnswerPipeline.answer` top to bottom; it is the whole flow, in order::

    rewrite follow-up -> search (provider chain; and uploaded collections, when asked:
    search_app/collections.py) -> read pages (budgeted; web results only) -> rank
    -> relevance gate -> pack into the model's context window
    -> write the answer (:meth:`AnswerPipeline._write`): each sentence checked and
       cited as it ends; the grounding policy decides what reaches the reader (strict:
       supported sentences only) (related questions generated alongside from the first
       sentence on, JSON-schema constrained)
    -> related, support, timings, done (:meth:`AnswerPipeline.run` stores the answer's
       stored events just before done)

Every stage has a time budget and a fallback and reports its duration: a slow search
hands over to the next provider (the chain), slow pages fall back to their snippets, a
slow ranking falls back to the provider's order, slow or failed related questions fall
back to questions about the sources,
and an answer that runs past its budget stops with ``finish_reason="timeout"``. The main
path fails loudly: no search results from any provider, or a model that is down or fails
mid-answer, end the stream with an ``error`` event and nothing is stored. Closing the
event iterator (the client went away) cancels whatever stage is running: page reads are
cancelled and the engine's iterator is closed, which aborts the generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal
from urllib.parse import urlsplit

from retrieval.filters import NO_FILTERS, SearchFilters
from retrieval.providers import ChainResult, FallbackSearch, ProviderError
from retrieval.ranking import Ranker
from retrieval.reader import PageReader
from retrieval.types import Document, Passage, SearchResult
from search_app import prompts
from search_app.answer_errors import engine_error_code
from search_app.events import (
    AnswerEvent,
    DeltaEvent,
    DoneEvent,
    ErrorEvent,
    QuoteEvent,
    RelatedEvent,
    SearchEvent,
    SentenceSupport,
    Source,
    SourcesEvent,
    StageEvent,
    SupportEvent,
    TimingsEvent,
    Usage,
)
from search_app.grounding import (
    CitedStream,
    Grounder,
    Sources,
    clean_citations,
    is_claim,
    is_decline,
    leans_on_previous,
    repeats,
    strip_citations,
)
from search_app.lead import LeadChooser, Quote
from search_app.metrics import AnswerMetrics
from search_app.related import parse_candidates, pick_related
from search_app.store import AnswerRecord, Store
from serving.engines.base import Engine, GenerationChunk, GenerationRequest, SamplingOptions
from serving.errors import ServingError

__all__ = ["AnswerPipeline", "AnswerRequest", "GroundingPolicy", "PipelineOptions",
           "rewrite_query"]

log = logging.getLogger(__name__)


GroundingPolicy = Literal["strict", "mark", "off"]
# (collection ids, query, k) -> the best sections of those uploaded collections
CollectionSearch = Callable[[Sequence[str], str, int], Awaitable[list[SearchResult]]]
FinishReason = Literal["stop", "length", "timeout"]
# How an answer whose passages were relevant can still have no sentence of the model's:
# none passed the check (the quote is the answer), or the model said the sources lack it.
Outcome = Literal["unverified", "declined"]


@dataclass(frozen=True)
class PipelineOptions:
    """Tunables (the app's Settings fills them; defaults suit SmolLM2 on 2 CPU cores)."""

    sources: int = 8                  # search results asked for (REFERENCE_COUNT upstream)
    passages: int = 12                # ranked passages offered to the packer
    answer_max_tokens: int = 384      # room kept for the answer (capped at 1/4 context)
    context_tokens: int | None = None  # most source tokens packed (None: the window's rest)
    template_overhead: int = 64       # chat-template tokens not counted piecewise
    history_turns: int = 3            # earlier turns of a thread given to the model
    history_answer_chars: int = 600   # each earlier answer cut to this
    snippet_chars: int = 300          # source snippet shown to the user
    rank_timeout_s: float = 10.0
    first_token_timeout_s: float = 30.0
    answer_timeout_s: float = 90.0
    related_timeout_s: float = 20.0
    related_max_tokens: int = 240    # five short candidates (RELATED_SCHEMA)
    temperature: float = 0.2          # low: grounded answers, little invention
    repetition_penalty: float = 1.1   # tiny models loop without it
    # strict: only sentences that pass the support check reach the reader; mark: all are
    # sent and the support event marks them; off: no check.
    grounding: GroundingPolicy = "strict"
    max_unsupported_run: int = 2      # strict: stop generating after this many in a row
    # the answer opens with the sources' own words (search_app/lead.py); off: the model's
    # answer alone (a quote is still shown when none of its sentences can be verified)
    lead: bool = True
    # research mode (search_app/research.py): plan, search each step, one report
    research_steps: int = 4           # most sub-questions in the plan
    research_pages: int = 12          # most pages read over all steps
    research_timeout_s: float = 600.0  # the whole report
    research_section_tokens: int = 192  # per section


@dataclass
class AnswerRequest:
    query: str
    history: Sequence[tuple[str, str]] = ()   # earlier (question, answer) of the thread
    thread_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    search_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    client_id: str | None = None
    provider: str | None = None
    sources: int | None = None
    read_pages: bool = True
    related: bool = True
    grounding: GroundingPolicy | None = None  # None: the pipeline's setting
    filters: SearchFilters = NO_FILTERS       # sites and dates (retrieval/filters.py)
    mode: Literal["quick", "research"] = "quick"  # research: search_app/research.py
    collections: Sequence[str] = ()  # ids of uploaded collections to search too
    web: bool = True                 # False: only the collections, not the provider chain
    lead: bool | None = None         # None: the pipeline's setting


class AnswerPipeline:
    def __init__(self, *, engine: Callable[[], Engine], chains: Mapping[str, FallbackSearch],
                 default_provider: str, ranker: Ranker, grounder: Grounder,
                 reader: PageReader | None = None, store: Store | None = None,
                 options: PipelineOptions | None = None,
                 metrics: AnswerMetrics | None = None,
                 collections: CollectionSearch | None = None,
                 lead: LeadChooser | None = None) -> None:
        self.engine = engine  # a callable: the registry raises until the model is ready
        self.chains = chains
        self.default_provider = default_provider
        self.ranker = ranker
        self.grounder = grounder
        self.reader = reader
        self.store = store
        self.options = options or PipelineOptions()
        self.metrics = metrics
        self.collections = collections  # uploaded documents (search_app/collections.py)
        self.lead = lead or LeadChooser(grounder.model)  # the quote an answer opens with

    async def run(self, req: AnswerRequest) -> AsyncIterator[AnswerEvent]:
        """The events of one answer; the last is ``done`` or ``error``. The answer is
        stored (its events whose type is ``stored``) before ``done`` goes out. Closing
        this iterator closes :meth:`answer` at once (engine abort, reads cancelled)."""
        recorded: list[AnswerEvent] = []
        if req.mode == "research":
            from search_app.research import research  # the other flow; it uses this one's parts
            flow = research(self, req)
        else:
            flow = self.answer(req)
        async with contextlib.aclosing(flow) as events:
            async for event in events:
                if isinstance(event, DoneEvent) and self.store is not None:
                    try:
                        await self.store.asave_answer(_record(req, [*recorded, event]))
                    except Exception as exc:  # complete, but say why it is not saved
                        log.exception("storing answer %s failed", req.search_id)
                        event = ErrorEvent(code="store_failed", message=_store_failure(exc))
                if event.stored:
                    recorded.append(event)
                if self.metrics is not None:
                    self.metrics.record(event)
                yield event

    async def answer(self, req: AnswerRequest) -> AsyncIterator[AnswerEvent]:
        """The whole flow, in order (see the module docstring)."""
        opts, started, fallbacks = self.options, time.perf_counter(), []
        search_query = rewrite_query(req.query, req.history)
        filters = req.filters
        yield SearchEvent(search_id=req.search_id, thread_id=req.thread_id,
                          query=req.query, search_query=search_query,
                          filters=filters.describe() or None)
        # 1. Search: the chain has a timeout per provider and falls back to the next;
        #    every result is checked against the filters, whatever the provider did.
        #    Uploaded collections, when asked for, are searched too (or alone: web off).
        t0 = time.perf_counter()
        try:
            own = await self._search_collections(req, search_query)
        except Exception as exc:  # the user asked for them: say so rather than ignore it
            yield _collections_failed(exc)
            return
        chain = self.chains[req.provider or self.default_provider]
        try:
            found = await chain.search(search_query, req.sources or opts.sources, filters) \
                if req.web else ChainResult([], None)
        except ProviderError as exc:
            if not own:
                yield ErrorEvent(code="search_failed", message=exc.message)
                return
            found = ChainResult([], None)  # the collections answer alone
            fallbacks.append(f"search: {exc.message}; only the collections were used")
        search_ms = _ms(t0)
        fallbacks += [f"search: {a.provider} {a.status}: {a.reason}"  # why it handed over
                      for a in found.attempts if a.status not in ("ok", "empty")]
        provider = found.provider or (COLLECTIONS if own else None)
        # 2. Read pages, per document: web results are read; the local index's and the
        #    collections' results already carry their text.
        t0 = time.perf_counter()
        web = found.results if req.read_pages and self.reader is not None and \
            found.provider != "local" else []
        read: dict[int, Document] = {}
        if web:
            yield StageEvent(stage="read", detail=f"{len(web)} pages")
            read = {id(r): d for r, d in zip(web, await self.reader.read(web), strict=True)}
            slow = sum(d.status != "ok" for d in read.values())
            if slow:
                fallbacks.append(f"read: {slow} of {len(read)} pages used their snippet")
        docs = [read.get(id(r)) or _as_document(r) for r in [*found.results, *own]]
        if filters.dated:  # a page's own date, found on reading, is checked as well
            dated = [d for d in docs if filters.admits_date(d.published, trust_undated=True)]
            if len(dated) < len(docs):
                fallbacks.append(f"filters: {len(docs) - len(dated)} pages dated outside "
                                 "the range were dropped after reading")
            docs = dated
        read_ms = _ms(t0)
        # 3. Rank passages (fallback: the provider's order, one passage per result).
        yield StageEvent(stage="rank", detail=f"{len(docs)} documents")
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(opts.rank_timeout_s):
                passages = await self.ranker.rank(search_query, docs, opts.passages)
        except TimeoutError:
            fallbacks.append(f"rank: over {opts.rank_timeout_s:g} s, provider order used")
            passages = [Passage(text=d.text[:1500], url=d.url, title=d.title, source_id=i,
                                position=0) for i, d in enumerate(docs, 1)]
        rank_ms = _ms(t0)
        # 4. Relevance gate: nothing close enough -> abstain without asking the model.
        relevant = self.grounder.relevant(passages, provider)
        # 5. Pack the best passages into the model's real context window.
        try:
            engine = self.engine()
            packed, answer_tokens, history, origin = (
                await _pack(engine, req, passages, opts) if relevant else ([], 0, [], {}))
        except ServingError as exc:
            yield ErrorEvent(code=engine_error_code(exc), message=exc.message)
            return
        if packed and (busy := _busy(engine)):  # refuse at once, before any output
            yield ErrorEvent(code="model_busy", message=busy)
            return
        sources = _sources(origin, docs, opts.snippet_chars, packed)
        yield SourcesEvent(sources=sources, provider=provider, relevant=relevant)
        context = prompts.format_context([(p.source_id, p.title, p.text) for p in packed])

        # 6. Write the answer: streamed as generated, each sentence support-checked as
        #    it ends (strict: only supported sentences reach the reader); related
        #    questions are generated alongside, started once the first sentence is out
        #    so that their prompt does not compete with the answer's first token.
        related_task: asyncio.Task[list[str]] | None = None

        def start_related() -> None:
            nonlocal related_task
            if related_task is None and req.related and packed:
                related_task = asyncio.create_task(
                    self._related(engine, req.query, context))
        policy = req.grounding or opts.grounding
        written = _Written(policy=policy, lead=opts.lead if req.lead is None else req.lead)
        try:
            if packed:
                request = GenerationRequest(
                    request_id=f"answer-{req.search_id}",
                    messages=prompts.answer_messages(req.query, context, history),
                    sampling=SamplingOptions(max_tokens=answer_tokens,
                                             temperature=opts.temperature,
                                             repetition_penalty=opts.repetition_penalty))
                async with contextlib.aclosing(self.write(  # the quote, then the model
                        engine, request, packed, req.query, len(sources), written,
                        start_related)) as deltas:  # a disconnect closes it: engine abort
                    async for delta in deltas:
                        yield delta
                fallbacks += written.fallbacks
            else:  # gated, or nothing within the filters: the model was not asked
                written.text = prompts.ABSTAIN_TEXT if docs or not filters.active else \
                    prompts.NO_RESULTS_TEXT.format(filters=filters.describe())
                yield DeltaEvent(text=written.text)
            start_related()
            candidates = await _settle(related_task, opts.related_timeout_s, fallbacks)
            related = pick_related(candidates, req.query, context,
                                   [s.title for s in sources]) if req.related else []
        except (_FirstTokenTimeout, ServingError) as exc:
            yield _model_error(exc, opts)
            return
        finally:
            _discard(related_task)

        # 7. The extras, the timings, then done (run() stores the answer before it).
        yield RelatedEvent(questions=related)
        support = written.support
        ratio = (sum(s.supported for s in support) / len(support)) if support else None
        yield SupportEvent(sentences=support, threshold=self.grounder.support_threshold,
                           supported_ratio=ratio, policy=policy,
                           withheld=sum(s.withheld for s in support))
        yield TimingsEvent(search_ms=search_ms, read_ms=read_ms, rank_ms=rank_ms,
                           ttft_ms=written.ttft_ms, total_ms=_ms(started),
                           fallbacks=fallbacks)
        unpacked = "no_relevant_sources" if docs or not filters.active else "no_results"
        yield DoneEvent(finish_reason=(written.outcome or written.finish) if packed
                        else unpacked,
                        usage=written.usage, withheld=sum(s.withheld for s in support),
                        stopped_unsupported=written.stopped)

    async def write(self, engine: Engine, request: GenerationRequest,
                    packed: list[Passage], question: str, n_sources: Sources,
                    out: _Written, on_sentence: Callable[[], None]
                    ) -> AsyncIterator[QuoteEvent | DeltaEvent | StageEvent]:
        """One answer (or research section) from its packed passages: the lead quote
        (when on), the model's checked sentences (:meth:`_write`), and, when none of
        them reached the reader, an outcome that says so truthfully: ``unverified`` (the
        best quote is the answer; the model's words could not be checked against the
        sources) or ``declined`` (the model said the sources lack the answer). Never
        "the sources do not cover this": they passed the relevance gate."""
        if out.lead:
            async for event in self._quote(question, packed, out):
                yield event
        async with contextlib.aclosing(self._write(
                engine, request, packed, question, n_sources, out, on_sentence)) as deltas:
            async for delta in deltas:
                yield delta
        if out.text.strip() or out.finish == "timeout" or out.repeated:
            return  # the model's words were shown, cut off, or agreed with the quote
        out.outcome = "declined" if out.declined else "unverified"
        if out.quote is None:  # lead off: the best quote is shown now
            async for event in self._quote(question, packed, out):
                yield event
        note = prompts.DECLINED_TEXT if out.declined else prompts.UNVERIFIED_TEXT
        note = note[out.quote is None]
        out.notes += note
        yield DeltaEvent(text=note)

    async def _quote(self, question: str, packed: Sequence[Passage], out: _Written
                     ) -> AsyncIterator[QuoteEvent | DeltaEvent]:
        quote = await self.lead.choose(question, packed)
        if quote is None:
            return
        out.quote, out.lead_text = quote, prompts.quote_markdown(quote.text, quote.source)
        yield QuoteEvent(text=quote.text, source=quote.source, score=quote.score)
        yield DeltaEvent(text=out.lead_text)

    async def _write(self, engine: Engine, request: GenerationRequest,
                     packed: list[Passage], question: str, n_sources: Sources,
                     out: _Written, on_sentence: Callable[[], None]
                     ) -> AsyncIterator[DeltaEvent | StageEvent]:
        """Generate the answer and send what the grounding policy lets through.

        ``mark``: text goes out as the model writes it; only what a sentence's check may
        still change (an unfinished citation marker, its trailing whitespace) waits for
        the sentence to end. ``strict``: a sentence goes out only once its check passed;
        a rejected one is withheld (listed in the support event) and after
        ``max_unsupported_run`` rejections in a row generation stops. ``off``: no check.
        Fills ``out`` (text sent, support records, usage, finish reason, TTFT).
        """
        opts, strict = self.options, out.policy == "strict"
        cited, t_gen, run = CitedStream(n_sources), time.perf_counter(), 0
        held = ""  # strict: a list number or bullet, waiting for the claim it introduces
        leaning_on_withheld = False  # the last claim was withheld: a pronoun after it dangles

        async def settle(sentence: str) -> str:
            """The sentence's text to send now ("" when withheld, dropped or held)."""
            nonlocal run, held, leaning_on_withheld
            if out.policy == "off" or not is_claim(strip_citations(sentence)):
                rest = cited.complete(clean_citations(sentence, n_sources))
                if strict:  # goes out with the next claim, or is dropped with it
                    held += rest
                    return ""
                return rest
            text, checked = await self.grounder.check(sentence, packed, question, n_sources)
            rest = cited.complete(text)
            plain = checked.sentence
            if is_decline(plain):  # "the sources do not say": not the app's to assert
                out.declined += 1
                reason: str | None = "declined"
            elif strict and not checked.supported:
                reason = "unsupported"
            elif strict and leaning_on_withheld and leans_on_previous(plain):
                reason = "leans_on_withheld"  # "He became...", after the name was withheld
            else:
                reason = None
            if reason is not None and strict:
                out.support.append(checked.model_copy(update={
                    "withheld": True, "reason": reason,
                    "supported": checked.supported and reason == "leans_on_withheld"}))
                # a sentence withheld only for its pronoun is not the model going astray:
                # it does not count toward the stop
                run += reason != "leans_on_withheld"
                held, leaning_on_withheld = "", True
                return ""
            if reason == "declined":  # mark: sent as written (it streamed), marked
                checked = checked.model_copy(update={"supported": False,
                                                     "reason": "declined"})
            if strict and out.quote is not None and repeats(plain, out.quote.text):
                out.repeated += 1  # the lead already says it (mark has streamed it)
                out.support.append(checked.model_copy(update={"repeats_quote": True}))
                run, held, leaning_on_withheld = 0, "", False
                return ""
            out.support.append(checked)
            run, rest, held, leaning_on_withheld = 0, held + rest, "", False
            return rest

        async with contextlib.aclosing(engine.generate(request)) as stream:
            first: asyncio.Future[GenerationChunk | None] | None = asyncio.ensure_future(
                anext(stream, None))
            try:  # the first token: a queued request hears its place, not a timeout
                async for stage in _await_first(engine, request.request_id, first, opts):
                    yield stage
            finally:
                if not first.done():  # timed out or closed: stop the engine's stream
                    first.cancel()
                    with contextlib.suppress(BaseException):
                        await first
            while True:
                try:
                    if first is not None:
                        chunk, first = first.result(), None
                    else:
                        chunk = await _next(stream, t_gen, out.ttft_ms, opts)
                except TimeoutError:  # past the answer budget: keep what we have
                    out.finish = "timeout"
                    out.fallbacks.append(f"answer: stopped at {opts.answer_timeout_s:g} s")
                    break
                if chunk is None:
                    break
                out.ttft_ms = out.ttft_ms if out.ttft_ms is not None else _ms(t_gen)
                out.usage = Usage(prompt_tokens=chunk.prompt_tokens,
                                  completion_tokens=chunk.completion_tokens)
                out.finish = chunk.finish_reason or out.finish
                for sentence in cited.feed(chunk.text):
                    if text := await settle(sentence):
                        out.text += text
                        yield DeltaEvent(text=text)
                    on_sentence()
                if strict and run >= opts.max_unsupported_run:
                    out.stopped = True
                    out.fallbacks.append(f"grounding: stopped after {run} unsupported "
                                         "sentences in a row")
                    return  # closing the stream aborts the generation
                if not strict and (text := cited.progress()):
                    out.text += text
                    yield DeltaEvent(text=text)
        last = cited.flush()  # the answer's last sentence, if it did not end
        text = await settle(last) if last.strip() else ""
        if strict and run == 0 and (out.text + text).strip():  # closes an emitted claim
            text, held = text + held, ""
        if text:
            out.text += text
            yield DeltaEvent(text=text)

    async def _search_collections(self, req: AnswerRequest, query: str
                                  ) -> list[SearchResult]:
        """The best sections of the request's collections (none asked: none)."""
        if not req.collections or self.collections is None:
            return []
        return await self.collections(req.collections, query, req.sources or
                                      self.options.sources)

    async def best_dense_score(self, question: str, provider: str = "local"
                               ) -> float | None:
        """What the relevance gate reads for ``question``: the best passage's dense
        score after this pipeline's own search and rank (no model; None: nothing
        found). The gate's calibration (search_app/calibration.py) runs on it."""
        try:
            found = await self.chains[provider].search(question, self.options.sources)
        except ProviderError:
            return None
        docs = [_as_document(r) for r in found.results]
        passages = await self.ranker.rank(question, docs, self.options.passages)
        return max((p.scores["dense"] for p in passages if "dense" in p.scores),
                   default=None)

    async def _related(self, engine: Engine, question: str, context: str) -> list[str]:
        """Candidate follow-up questions via JSON-schema constrained decoding (filtered
        and completed by :func:`~search_app.related.pick_related`)."""
        request = GenerationRequest(
            request_id=f"related-{uuid.uuid4().hex}",
            messages=prompts.related_messages(question, context[:1500]),
            sampling=SamplingOptions(max_tokens=self.options.related_max_tokens,
                                     temperature=0.7, json_schema=prompts.RELATED_SCHEMA))
        text = ""
        async with contextlib.aclosing(engine.generate(request)) as stream:
            async for chunk in stream:
                text += chunk.text
        return parse_candidates(text)


# --- helpers ------------------------------------------------------------------------

@dataclass
class _Written:
    """What :meth:`AnswerPipeline._write` produced, for the events after the answer."""

    policy: GroundingPolicy
    lead: bool = True                 # open with the quote (search_app/lead.py)
    text: str = ""                    # the model's words that reached the reader
    quote: Quote | None = None        # the quote sent (the lead, or the unverified fallback)
    lead_text: str = ""               # its Markdown block quote, as sent
    notes: str = ""                   # what the app said when no model sentence was shown
    outcome: Outcome | None = None    # unverified / declined: no model sentence shown
    repeated: int = 0                 # model sentences left out as repeats of the quote
    declined: int = 0                 # model sentences that said the sources lack it
    support: list[SentenceSupport] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    finish: FinishReason = "stop"
    ttft_ms: float | None = None
    stopped: bool = False             # strict: too many unsupported sentences in a row
    fallbacks: list[str] = field(default_factory=list)


def _record(req: AnswerRequest, events: list[AnswerEvent]) -> AnswerRecord:
    """The stored form of a finished answer: its stored events, and the fields that
    listings need (derived from those events)."""
    search = next(e for e in events if isinstance(e, SearchEvent))
    return AnswerRecord(
        id=req.search_id, thread_id=req.thread_id, client_id=req.client_id,
        query=req.query, search_query=search.search_query,
        answer="".join(e.text for e in events if isinstance(e, DeltaEvent)),
        events=[e.record() for e in events], created=time.time())


def _store_failure(exc: Exception) -> str:
    """What a user can act on, without paths or SQL: the database's own short reason
    for the failures an operator can fix (locked, full, read-only), else the type."""
    reason = str(exc).split(":")[0].strip() if isinstance(exc, sqlite3.Error) else ""
    known = ("database is locked", "database or disk is full",
             "attempt to write a readonly database", "disk I/O error")
    detail = reason if reason in known else type(exc).__name__
    return f"The answer was complete but could not be stored ({detail}); it is not saved."


class _FirstTokenTimeout(Exception):
    """The model did not start answering within its budget."""


def _model_error(exc: _FirstTokenTimeout | ServingError, opts: PipelineOptions) -> ErrorEvent:
    """The error event that ends an answer whose model failed or never started."""
    if isinstance(exc, ServingError):
        return ErrorEvent(code=engine_error_code(exc), message=exc.message)
    return ErrorEvent(code="model_timeout", message=f"The model sent nothing within "
                      f"{opts.first_token_timeout_s:g} s; try again later.")


def _collections_failed(exc: Exception) -> ErrorEvent:
    """The error that ends an answer whose named collections could not be searched."""
    log.exception("searching collections failed")
    return ErrorEvent(code="search_failed", message="Searching your documents failed "
                      f"({type(exc).__name__}: {str(exc)[:200]}).")


def _busy(engine: Engine) -> str | None:
    """Why the engine cannot take one more request now (its queue is full), else None.
    Checked before the sources go out, so that every face can still answer 429; the
    engine's own check at submission remains the authority (a race ends the same way,
    as a model_busy error event)."""
    limit, load = engine.info.max_sequences, engine.load
    if limit is None or load.running + load.waiting < limit:
        return None
    return (f"The model is busy ({load.running} running, {load.waiting} waiting); retry "
            "in a few seconds.")


QUEUE_POLL_S = 0.5  # how often a request waiting for its first token checks its place


async def _await_first(engine: Engine, request_id: str,
                       first: asyncio.Future[GenerationChunk | None],
                       opts: PipelineOptions) -> AsyncIterator[StageEvent]:
    """Wait for the first chunk. While the engine holds the request in its queue, the
    client is told its place ("queued", N ahead) and the first-token budget does not
    run: it starts when the request leaves the queue, so a request that only waited its
    turn never ends in ``model_timeout``. (The queue is bounded, ``--max-queue``; past
    it the engine refuses at once, ``model_busy``.)"""
    budget_from, told = time.perf_counter(), None
    while True:
        done, _ = await asyncio.wait({first}, timeout=QUEUE_POLL_S)
        if done:
            return
        position = engine.queue_position(request_id)
        if position is not None:
            budget_from = time.perf_counter()
            if position != told:
                told = position
                yield StageEvent(stage="queued", detail=f"{position} ahead")
        elif time.perf_counter() - budget_from > opts.first_token_timeout_s:
            raise _FirstTokenTimeout


def rewrite_query(question: str, history: Sequence[tuple[str, str]]) -> str:
    """A standalone search query for a follow-up. Deterministic on purpose: a 135M model
    rewrites badly, while "previous question + new question" keeps the topic words a
    follow-up like "when was it built?" lacks. Only the last turn is used."""
    if not history:
        return question
    return f"{history[-1][0]} {question}"[-1000:]


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 1)


COLLECTIONS = "collections"  # the sources event's provider when only collections answered


def _as_document(result: SearchResult) -> Document:
    return Document(result=result, text=result.snippet, title=result.title, status="ok",
                    published=result.published)


async def _next(stream: AsyncIterator[GenerationChunk], t_gen: float, ttft_ms: float | None,
                opts: PipelineOptions) -> GenerationChunk | None:
    """The next chunk within the first-token or the whole-answer budget; None at end."""
    limit = opts.first_token_timeout_s if ttft_ms is None else opts.answer_timeout_s
    remaining = limit - (time.perf_counter() - t_gen)
    try:
        async with asyncio.timeout(max(remaining, 0.001)):
            return await anext(stream, None)
    except TimeoutError:
        if ttft_ms is None:
            raise _FirstTokenTimeout from None
        raise


async def _settle(task: asyncio.Task[list[str]] | None, timeout_s: float,
                  fallbacks: list[str]) -> list[str]:
    """Related questions are an extra: any failure or delay gives ``[]``."""
    if task is None:
        return []
    try:
        async with asyncio.timeout(timeout_s):
            return await task
    except TimeoutError:
        fallbacks.append(f"related: over {timeout_s:g} s")
    except Exception as exc:
        log.info("related questions failed: %s", type(exc).__name__)
    return []


def _discard(task: asyncio.Task[list[str]] | None) -> None:
    """Cancel an unfinished extra, or retrieve a finished one's exception, so that
    leaving early (an error, a disconnect) logs no "exception was never retrieved"."""
    if task is None:
        return
    if not task.done():
        task.cancel()
    elif not task.cancelled():
        task.exception()


async def _pack(engine: Engine, req: AnswerRequest, passages: list[Passage],
                opts: PipelineOptions
                ) -> tuple[list[Passage], int, list[tuple[str, str]], dict[int, int]]:
    """Passages (renumbered 1..n by first appearance) that fit the context window, the
    answer's token budget, the history turns that fit, and source number -> document
    number."""
    window = engine.info.context_length
    answer_tokens = max(32, min(opts.answer_max_tokens, window // 4))
    history = [(q, a[:opts.history_answer_chars]) for q, a in
               list(req.history)[-opts.history_turns:]]
    fixed_text = prompts.ANSWER_SYSTEM.format(context="") + req.query
    budget = window - answer_tokens - opts.template_overhead
    budget -= await engine.count_tokens(fixed_text)
    while history:  # the oldest turns go first when the window is tight
        used = sum([await engine.count_tokens(q + a) for q, a in history])
        if used <= budget // 2:
            budget -= used
            break
        history.pop(0)
    if opts.context_tokens is not None:  # fewer source tokens: a shorter prefill
        budget = min(budget, opts.context_tokens)
    packed: list[Passage] = []
    numbers: dict[int, int] = {}  # document number (1-based, in docs) -> source number
    for p in passages:
        number = numbers.get(p.source_id, len(numbers) + 1)
        cost = await engine.count_tokens(prompts.format_context([(number, p.title, p.text)]))
        if cost + 2 > budget:
            continue
        budget -= cost + 2
        numbers[p.source_id] = number
        packed.append(replace(p, source_id=number))
    return packed, answer_tokens, history, {n: d for d, n in numbers.items()}


def _sources(origin: dict[int, int], docs: list[Document], snippet_chars: int,
             packed: Sequence[Passage] = ()) -> list[Source]:
    """One source per number, in number order, from the documents they came from; each
    carries the passages the model saw under that number (what its citations mean)."""
    out: dict[int, Source] = {}
    seen: dict[int, list[str]] = {}
    for p in packed:
        seen.setdefault(p.source_id, []).append(p.text)
    for number, document in sorted(origin.items()):
        doc = docs[document - 1]
        site = (urlsplit(doc.url).hostname or "").removeprefix("www.") or (
            "your documents" if doc.result.provider == "collection" else "")
        snippet = " ".join((doc.result.snippet or doc.text).split())
        out[number] = Source(number=number, title=doc.title or doc.result.title,
                             url=doc.url, site=site, snippet=snippet[:snippet_chars],
                             date=doc.published or doc.result.published,
                             passage="\n\n".join(seen[number]) if number in seen else None)
    return list(out.values())
