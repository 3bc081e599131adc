"""Research mode: a planned, sectioned report instead of a short answer.

Read :func:`research` top to bottom; it is the whole flow, in order::

    plan sub-questions (JSON-schema constrained: even a 135M model gives a valid plan)
    -> search the question and every sub-question in parallel (the provider chain, the
       request's filters) -> read the pages (one page budget over all steps)
    -> rank everything read against each sub-question -> pack each section's passages
       (numbered once for the whole report) -> sources
    -> write one section per sub-question (its heading is the sub-question), then a
       conclusion that answers the question itself from the findings; every sentence
       goes through the same support check and grounding policy as a quick answer
       (AnswerPipeline._write) -> related, support, timings, done

Why sections are written one at a time, each from its own passages: a small model
given twelve sources and "write a structured report" loses the structure and cites at
random; given one sub-question and the three passages ranked for it, it writes what a
quick answer would. The app writes the headings itself, so they are never "unsupported".

Budgets (Settings): the plan's length (``research_max_steps``), the pages read over all
steps (``research_max_pages``), and one deadline for the whole report
(``research_timeout_s``): sections not started by then are left out, said in
``timings.fallbacks``, and the report ends with ``finish_reason="timeout"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace

from retrieval.providers import ChainResult, ProviderError
from retrieval.types import Document, Passage, SearchResult
from search_app import prompts
from search_app.answer_errors import engine_error_code
from search_app.collections import COLLECTION_PROVIDER
from search_app.events import (
    AnswerEvent,
    DeltaEvent,
    DoneEvent,
    ErrorEvent,
    PlanEvent,
    RelatedEvent,
    SearchEvent,
    SentenceSupport,
    SourcesEvent,
    StageEvent,
    SupportEvent,
    TimingsEvent,
    Usage,
)
from search_app.grounding import strip_citations
from search_app.pipeline import (  # the quick flow's parts, shared
    COLLECTIONS,
    AnswerPipeline,
    AnswerRequest,
    PipelineOptions,
    _as_document,
    _busy,
    _collections_failed,
    _FirstTokenTimeout,
    _model_error,
    _ms,
    _pack,
    _settle,
    _sources,
    _Written,
    rewrite_query,
)
from search_app.related import pick_related
from serving.engines.base import Engine, GenerationRequest, SamplingOptions
from serving.errors import ServingError

__all__ = ["parse_plan", "plan_schema", "research", "split_question"]

FINDING_CHARS = 400   # of one section's text, told to the conclusion
FINDING_TOKENS = 110  # what one finding may cost in the conclusion's prompt

log = logging.getLogger(__name__)

# Measured on SmolLM2-135M (2026-12-01): asked plainly, it repeats the question as every
# sub-question; with two examples it splits questions, but sometimes copies an example's
# topic ("Who conquered Rome in 476?"), which parse_plan drops (no word of the question).
PLAN_SYSTEM = (
    "You plan web research. Split the user's question into {n} simpler search questions, "
    "each about ONE thing the question mentions. Never repeat the question itself.\n\n"
    "Example: \"Which is older, the Eiffel Tower or the Statue of Liberty?\" -> "
    "{{\"sub_questions\": [\"When was the Eiffel Tower built?\", \"When was the Statue of "
    "Liberty built?\"]}}\n"
    "Example: \"How did the Roman Empire fall?\" -> {{\"sub_questions\": [\"What weakened "
    "the Roman Empire?\", \"Who conquered Rome in 476?\"]}}"
)
_STOP = frozenset("what which when where who whom whose why how is are was were did does do the "
                  "and for with from that this into about than then they them their there "
                  "have has had been being a an of in on at to by or as it its".split())
_CLAUSE = re.compile(r"(?:,\s*|\s+)and\s+(?=(?:who|what|when|where|why|how|which|is|are|"
                     r"was|were|did|does)\b)", re.IGNORECASE)
_QUESTION_PATTERN = (r'^(What|Who|When|Where|Why|How|Which|Is|Are|Did|Does|Was|Were) '
                     r'[^"\\]{6,140}[?]$')


def plan_schema(steps: int) -> dict[str, object]:
    """The plan's JSON schema: 1..steps question strings (the grammar the engine
    constrains decoding with, so the reply always parses)."""
    return {
        "type": "object",
        "properties": {"sub_questions": {
            "type": "array", "items": {"type": "string", "pattern": _QUESTION_PATTERN},
            "minItems": 1, "maxItems": steps}},
        "required": ["sub_questions"],
        "additionalProperties": False,
    }


def parse_plan(text: str, question: str, steps: int) -> list[str]:
    """The sub-questions of a plan reply: unique, not the question itself, about the
    question (sharing one of its content words: a copied example is not), at most
    ``steps``; [] when the reply is not a plan."""
    try:
        items = json.loads(text).get("sub_questions", [])
    except (ValueError, AttributeError):
        return []
    seen, words = {_key(question)}, _words(question)
    out: list[str] = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, str) or not item.strip():
            continue
        key = _key(item)
        if key in seen or not (_words(item) & words):
            continue
        seen.add(key)
        out.append(" ".join(item.split())[:200])
    return out[:steps]


def split_question(question: str, steps: int) -> list[str]:
    """The plan when the model gave none: a question that asks two things joined by
    "and" ("Who designed X, and where is Y?") is two questions; else []."""
    parts = [p.strip(" ,?") for p in _CLAUSE.split(question) if p.strip(" ,?")]
    if len(parts) < 2:
        return []
    return [f"{p[0].upper()}{p[1:]}?" for p in parts][:steps]


def _merge(first: list[str], more: list[str], limit: int) -> list[str]:
    """``first``, then each of ``more`` that is not mostly the same words as a step
    already there (Jaccard over content words at most 0.6), at most ``limit``."""
    out = list(first)
    for item in more:
        words = _words(item)
        if all(len(words & _words(o)) / max(1, len(words | _words(o))) <= 0.6 for o in out):
            out.append(item)
    return out[:limit]


def _words(text: str) -> set[str]:
    return {w for w in _key(text).split() if len(w) > 2 and w not in _STOP}


def _key(text: str) -> str:
    return " ".join("".join(c for c in text.lower() if c.isalnum() or c.isspace()).split())


@dataclass
class _Section:
    heading: str              # the sub-question (or "Conclusion")
    question: str             # what the section answers
    passages: list[Passage]   # ranked for it; source_id: the report's source number


async def research(pipeline: AnswerPipeline, req: AnswerRequest
                   ) -> AsyncIterator[AnswerEvent]:
    """The events of one research report; same contract as ``AnswerPipeline.answer``
    (the last is ``done`` or ``error``; closing it aborts whatever runs)."""
    opts, started, fallbacks = pipeline.options, time.perf_counter(), []
    deadline = started + opts.research_timeout_s
    search_query = rewrite_query(req.query, req.history)
    filters = req.filters
    yield SearchEvent(search_id=req.search_id, thread_id=req.thread_id, query=req.query,
                      search_query=search_query, filters=filters.describe() or None,
                      mode="research")
    try:
        engine = pipeline.engine()
    except ServingError as exc:
        yield ErrorEvent(code=engine_error_code(exc), message=exc.message)
        return

    # 1. Plan: JSON-schema constrained, so the reply parses; a failed plan is one step.
    yield StageEvent(stage="plan", detail=f"up to {opts.research_steps} sub-questions")
    steps: list[str] = []
    try:
        async with asyncio.timeout(min(opts.first_token_timeout_s * 2,
                                       max(1.0, deadline - time.perf_counter()))):
            steps = await _plan(engine, search_query, opts.research_steps)
    except (TimeoutError, ServingError) as exc:
        fallbacks.append(f"plan: {type(exc).__name__}, the question is the only step")
    planned = bool(steps)
    # A question that asks two things ("..., and where is ...?") is split as written:
    # those parts come first, the model's own steps add what they do not cover.
    steps = _merge(split_question(search_query, opts.research_steps), steps,
                   opts.research_steps) or [search_query]
    yield PlanEvent(sub_questions=steps, planned=planned)

    # 2. Search the question and each step at once; one page budget over all of them.
    t0 = time.perf_counter()
    chain = pipeline.chains[req.provider or pipeline.default_provider]
    queries = [search_query, *[s for s in steps if _key(s) != _key(search_query)]]
    per_query = max(2, -(-opts.research_pages // len(queries)))  # ceil
    for n, step in enumerate(steps, 1):
        yield StageEvent(stage="step", detail=f"{n} of {len(steps)}: {step}")
    async def search(query: str) -> ChainResult:
        return await chain.search(query, per_query, filters) if req.web \
            else ChainResult([], None)
    found = await asyncio.gather(*(search(q) for q in queries), return_exceptions=True)
    try:  # uploaded collections the request names (search_app/collections.py), per query
        own = await asyncio.gather(*(pipeline._search_collections(req, q) for q in queries))
    except Exception as exc:  # the user asked for them: say so rather than ignore it
        yield _collections_failed(exc)
        return
    chains = [f for f in found if isinstance(f, ChainResult)]
    for query, f in zip(queries, found, strict=True):
        if isinstance(f, ProviderError):
            fallbacks.append(f"search: {query[:60]!r} failed: {f.message}")
        elif isinstance(f, BaseException):
            raise f
        else:
            fallbacks += [f"search: {a.provider} {a.status}: {a.reason}"
                          for a in f.attempts if a.status not in ("ok", "empty")]
    if not chains and not any(own):
        yield ErrorEvent(code="search_failed", message=next(
            f.message for f in found if isinstance(f, ProviderError)))
        return
    results = _interleave([*(f.results for f in chains), *own], opts.research_pages)
    provider = next((f.provider for f in chains if f.results),
                    COLLECTIONS if any(own) else chains[0].provider if chains else None)
    search_ms = _ms(t0)

    # 3. Read the pages (web results; the local index and collections have the text).
    t0 = time.perf_counter()
    web = [r for r in results if r.provider not in ("local", COLLECTION_PROVIDER)]
    docs: list[Document] = [_as_document(r) for r in results]
    if web and req.read_pages and pipeline.reader is not None:
        yield StageEvent(stage="read", detail=f"{len(web)} pages")
        read = {d.url: d for d in await pipeline.reader.read(
            web, max_pages=opts.research_pages)}
        docs = [read.get(r.url) or _as_document(r) for r in results]
        slow = sum(read[u].status != "ok" for u in read)
        if slow:
            fallbacks.append(f"read: {slow} of {len(read)} pages used their snippet")
    if filters.dated:
        docs = [d for d in docs if filters.admits_date(d.published, trust_undated=True)]
    read_ms = _ms(t0)

    # 4. Rank everything read against each step, and against the question itself.
    yield StageEvent(stage="rank", detail=f"{len(docs)} documents")
    t0 = time.perf_counter()
    per_section = max(2, opts.passages // (len(steps) + 1))
    ranked: list[list[Passage]] = []
    try:
        async with asyncio.timeout(opts.rank_timeout_s):
            for q in [*steps, search_query]:
                ranked.append(await pipeline.ranker.rank(q, docs, per_section) if docs
                              else [])
    except TimeoutError:
        fallbacks.append(f"rank: over {opts.rank_timeout_s:g} s, provider order used")
        ranked = [[Passage(text=d.text[:1500], url=d.url, title=d.title, source_id=i,
                           position=0) for i, d in enumerate(docs, 1)][:per_section]
                  for _ in [*steps, search_query]]
    rank_ms = _ms(t0)
    relevant = pipeline.grounder.relevant([p for r in ranked for p in r], provider)

    # 5. Pack each section within the window, numbering sources once for the report.
    sections: list[_Section] = []
    numbers: dict[int, int] = {}  # document number (1-based in docs) -> source number
    section_opts = replace(opts, answer_max_tokens=opts.research_section_tokens)
    # the conclusion's prompt also carries the findings (at most FINDING_CHARS each)
    conclusion_opts = replace(section_opts, template_overhead=opts.template_overhead
                              + FINDING_TOKENS * len(steps) + 16)
    try:
        for heading, question, passages in zip(
                [*steps, "Conclusion"], [*steps, req.query], ranked, strict=True):
            packed: list[Passage] = []
            if relevant and passages:
                sub = AnswerRequest(query=question, thread_id=req.thread_id)
                local, _, _, origin = await _pack(
                    engine, sub, passages,
                    conclusion_opts if heading == "Conclusion" else section_opts)
                for p in local:
                    document = origin[p.source_id]
                    number = numbers.setdefault(document, len(numbers) + 1)
                    packed.append(replace(p, source_id=number))
            sections.append(_Section(heading, question, packed))
    except ServingError as exc:
        yield ErrorEvent(code=engine_error_code(exc), message=exc.message)
        return
    if numbers and (busy := _busy(engine)):
        yield ErrorEvent(code="model_busy", message=busy)
        return
    origin_of = {n: d for d, n in numbers.items()}
    sources = _sources(origin_of, docs, opts.snippet_chars,
                       [p for s in sections for p in s.passages])
    yield SourcesEvent(sources=sources, provider=provider, relevant=relevant)

    # 6. Write: a section per step, then the conclusion from the findings.
    policy = req.grounding or opts.grounding
    support: list[SentenceSupport] = []
    usage, finish, ttft_ms, stopped = Usage(), "stop", None, False
    report, findings, related = "", [], []
    outcomes: list[str | None] = []  # per written section: unverified, declined or None
    try:
        if not numbers:  # nothing relevant (or nothing in the filters): say so, once
            report = prompts.NO_RESULTS_TEXT.format(filters=filters.describe()) \
                if filters.active and not docs else prompts.ABSTAIN_TEXT
            yield DeltaEvent(text=report)
        for n, section in enumerate(sections if numbers else [], 1):
            if time.perf_counter() > deadline:
                fallbacks.append(f"research: over {opts.research_timeout_s:g} s, "
                                 f"{len(sections) - n + 1} sections left out")
                finish = "timeout"
                break
            heading = ("\n\n" if report else "") + f"## {section.heading}\n\n"
            report += heading
            yield DeltaEvent(text=heading)
            yield StageEvent(stage="write", detail=f"{n} of {len(sections)}")
            written = _Written(policy=policy,
                               lead=opts.lead if req.lead is None else req.lead)
            if section.passages:
                notes = "\n".join(f"- {f}" for f in findings) if n == len(sections) else ""
                request = _section_request(req, section, notes, opts, n)
                own = {p.source_id for p in section.passages}  # cite only what it saw
                async with contextlib.aclosing(pipeline.write(  # quote, then the model
                        engine, request, section.passages, section.question, own,
                        written, lambda: None)) as deltas:
                    async for delta in deltas:
                        yield delta
                fallbacks += written.fallbacks
                usage = Usage(prompt_tokens=usage.prompt_tokens + written.usage.prompt_tokens,
                              completion_tokens=usage.completion_tokens
                              + written.usage.completion_tokens)
                ttft_ms = ttft_ms if ttft_ms is not None else written.ttft_ms
                finish = written.finish if written.finish != "stop" else finish
                stopped = stopped or written.stopped
                support += written.support
                outcomes.append(written.outcome)
            shown = written.lead_text + written.text  # the quote and the model's words
            if shown.strip():
                findings.append(f"{section.heading} {_plain(shown)}"[:FINDING_CHARS])
            elif not written.notes:  # no passage for this part at all
                written.notes = prompts.RESEARCH_GAP_TEXT
                yield DeltaEvent(text=written.notes)
            report += shown + written.notes
        if req.related and numbers:
            context = prompts.format_context(
                [(p.source_id, p.title, p.text) for p in sections[-1].passages])
            candidates = await _settle(asyncio.ensure_future(
                pipeline._related(engine, req.query, context)), opts.related_timeout_s,
                fallbacks)
            related = pick_related(candidates, req.query, context, [s.title for s in sources])
    except (_FirstTokenTimeout, ServingError) as exc:
        yield _model_error(exc, opts)
        return

    # 7. The extras, the timings, then done (run() stores the report before it).
    yield RelatedEvent(questions=related)
    ratio = (sum(s.supported for s in support) / len(support)) if support else None
    withheld = sum(s.withheld for s in support)
    yield SupportEvent(sentences=support, threshold=pipeline.grounder.support_threshold,
                       supported_ratio=ratio, policy=policy, withheld=withheld)
    yield TimingsEvent(search_ms=search_ms, read_ms=read_ms, rank_ms=rank_ms,
                       ttft_ms=ttft_ms, total_ms=_ms(started), fallbacks=fallbacks)
    if not numbers:
        yield DoneEvent(finish_reason="no_results" if filters.active and not docs
                        else "no_relevant_sources", usage=usage)
        return
    if finish == "stop" and outcomes and all(outcomes):  # no section had model words
        finish = "declined" if set(outcomes) == {"declined"} else "unverified"
    yield DoneEvent(finish_reason=finish, usage=usage, withheld=withheld,
                    stopped_unsupported=stopped)


# --- helpers ------------------------------------------------------------------------

async def _plan(engine: Engine, question: str, steps: int) -> list[str]:
    request = GenerationRequest(
        request_id=f"plan-{uuid.uuid4().hex}",
        messages=prompts.plan_messages(question, PLAN_SYSTEM.format(n=f"2 to {steps}")),
        sampling=SamplingOptions(max_tokens=60 * steps, temperature=0.2,
                                 json_schema=plan_schema(steps)))
    text = ""
    async with contextlib.aclosing(engine.generate(request)) as stream:
        async for chunk in stream:
            text += chunk.text
    return parse_plan(text, question, steps)


def _section_request(req: AnswerRequest, section: _Section, notes: str,
                     opts: PipelineOptions, n: int) -> GenerationRequest:
    context = prompts.format_context([(p.source_id, p.title, p.text)
                                      for p in section.passages])
    question = section.question if not notes else (
        f"Findings so far:\n{notes}\n\nUsing the findings and the sources, answer: "
        f"{section.question}")
    return GenerationRequest(
        request_id=f"research-{req.search_id}-{n}",
        messages=prompts.answer_messages(question, context, []),
        sampling=SamplingOptions(max_tokens=opts.research_section_tokens,
                                 temperature=opts.temperature,
                                 repetition_penalty=opts.repetition_penalty))


def _interleave(lists: Sequence[list[SearchResult]], limit: int) -> list[SearchResult]:
    """Round-robin over each query's results, first URL wins, at most ``limit``: every
    step gets its best pages read before any step gets its third."""
    out: list[SearchResult] = []
    seen: set[str] = set()
    for rank in range(max((len(x) for x in lists), default=0)):
        for results in lists:
            if rank < len(results) and results[rank].url not in seen:
                seen.add(results[rank].url)
                out.append(results[rank])
                if len(out) == limit:
                    return out
    return out


def _plain(text: str) -> str:
    """A finding for the conclusion's notes: citations and line breaks removed."""
    return " ".join(strip_citations(text).split())
