"""The events of one answer, as pydantic models: the native SSE API's protocol.

Why one module of plain models: the pipeline yields these, ``POST /api/search`` sends
each as a named SSE event with its JSON, the store keeps the list as it was streamed
(``GET /api/search/{id}`` replays it) and ``POST /query`` translates them into the Lepton
marker format. One definition keeps the four in step. Order of one answer::

    search -> sources -> quote? -> delta* -> related -> support -> timings -> done
    (error may come at any point after search, and is then the last event)
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field

__all__ = [
    "AnswerEvent",
    "DeltaEvent",
    "DoneEvent",
    "ErrorEvent",
    "PlanEvent",
    "QuoteEvent",
    "RelatedEvent",
    "SearchEvent",
    "Source",
    "SourcesEvent",
    "StageEvent",
    "SentenceSupport",
    "SupportEvent",
    "TimingsEvent",
    "Usage",
    "EVENT_NAMES",
    "event_from_dict",
]


class AnswerEvent(BaseModel):
    """Base: ``name`` is the SSE event name; ``payload()`` the JSON data; ``stored``
    whether a stored answer keeps it (``GET /api/search/{id}`` replays those)."""

    name: ClassVar[str]
    stored: ClassVar[bool] = True

    def payload(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def record(self) -> dict[str, Any]:
        """The stored form: ``{"event": name, "data": payload}``."""
        return {"event": self.name, "data": self.payload()}


class SearchEvent(AnswerEvent):
    name: ClassVar[str] = "search"
    search_id: str
    thread_id: str
    query: str
    search_query: str = Field(description="What was sent to the search provider "
                                          "(follow-ups are rewritten with the history).")
    filters: str | None = Field(None, description="The search filters in force, in words "
                                "(\"site:example.com, past week\"); null: none.")
    mode: Literal["quick", "research"] = Field(
        "quick", description="research: a planned, sectioned report (plan event, then "
                             "the usual events; docs/search-api.md#research-mode).")


class StageEvent(AnswerEvent):
    """Progress: the stage that starts now (before the sources arrive, and a place in the
    model's queue after them). Not stored (a replay has nothing to wait for)."""

    name: ClassVar[str] = "stage"
    stored: ClassVar[bool] = False
    stage: Literal["read", "rank", "queued", "plan", "step", "write"] = Field(
        description="read: fetching the result pages; rank: chunking and ranking passages "
                    "(searching is announced by the search event); queued: after the "
                    "sources, the model is busy and this answer waits its turn (sent "
                    "again when its place changes). Research mode also: plan (the model "
                    "plans sub-questions), step (searching one of them: \"2 of 4: ...\"), "
                    "write (writing one section of the report: \"2 of 5\").")
    detail: str | None = Field(None, description="e.g. how many pages or documents; for "
                                                 "queued, \"N ahead\".")


class PlanEvent(AnswerEvent):
    """Research mode: the sub-questions the report will answer, in order (each becomes a
    section, then a conclusion answers the question itself)."""

    name: ClassVar[str] = "plan"
    sub_questions: list[str]
    planned: bool = Field(True, description="False when the model's plan failed and the "
                                            "question itself is the only step.")


class Source(BaseModel):
    number: int = Field(description="The N of [citation:N], 1-based.")
    title: str
    url: str
    site: str
    snippet: str
    date: str | None = Field(None, description="Published date when the page or the "
                                               "search provider gives one.")
    passage: str | None = Field(
        None, description="The text of this source that the model was given (its packed "
                          "passages, joined): what a citation to it can be checked against "
                          "(the evaluation harness's citation metrics use it).")


class SourcesEvent(AnswerEvent):
    name: ClassVar[str] = "sources"
    sources: list[Source]
    provider: str | None = None
    relevant: bool = Field(True, description="False: the relevance gate found no passage "
                                             "close enough; the answer abstains.")


class QuoteEvent(AnswerEvent):
    """The lead (search_app/lead.py): the sentence or two of one source that answer the
    question, in the source's own words, chosen right after ranking. The deltas that
    follow open with the same text as a Markdown block quote with its citation
    (``> text [citation:N]``), so a face that shows only the text shows it as a quote.
    Also sent, after the model's answer, when the model's own sentences could not be
    verified (``done.finish_reason: "unverified"``). In research mode, one per section."""

    name: ClassVar[str] = "quote"
    text: str = Field(description="Copied exactly from the source (whitespace joined).")
    source: int = Field(description="The source's number (the N of [citation:N]).")
    score: float = Field(description="How well it matched the question (the chooser's "
                                     "score: MiniLM cosine plus answer-type terms).")


class DeltaEvent(AnswerEvent):
    name: ClassVar[str] = "delta"
    text: str


class RelatedEvent(AnswerEvent):
    name: ClassVar[str] = "related"
    questions: list[str]


class SentenceSupport(BaseModel):
    sentence: str
    cited: list[int] = Field(description="Sources the sentence cites (after auto-citing).")
    supported: bool
    score: float = Field(description="Best cosine similarity to a checked passage.")
    best_source: int | None
    withheld: bool = Field(False, description="Strict grounding: the sentence failed the "
                                              "check and was left out of the answer text.")
    reason: Literal["unsupported", "leans_on_withheld", "declined"] | None = Field(
        None, description="Why it was withheld: unsupported (failed the check); "
                          "leans_on_withheld (opens with a pronoun whose referent, the "
                          "sentence before, was withheld); declined (the model said the "
                          "sources lack the answer: not the app's to assert).")
    repeats_quote: bool = Field(False, description="Left out because it repeats the "
                                                   "quote the answer opens with.")


class SupportEvent(AnswerEvent):
    name: ClassVar[str] = "support"
    sentences: list[SentenceSupport]
    threshold: float
    supported_ratio: float | None
    policy: Literal["strict", "mark", "off"] = Field(
        "mark", description="strict: unsupported sentences were withheld; mark: sent and "
                            "marked here; off: not checked (no sentences listed).")
    withheld: int = Field(0, description="Sentences left out of the answer (strict).")


class TimingsEvent(AnswerEvent):
    name: ClassVar[str] = "timings"
    search_ms: float
    read_ms: float
    rank_ms: float
    ttft_ms: float | None
    total_ms: float
    fallbacks: list[str] = Field(default_factory=list,
                                 description="Stages that ran out of time and fell back.")


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class DoneEvent(AnswerEvent):
    name: ClassVar[str] = "done"
    finish_reason: Literal["stop", "length", "timeout", "no_relevant_sources",
                           "no_results", "unverified", "declined"] = Field(
        description="stop, length, timeout: the model's answer ended so. The three ways "
                    "an answer abstains: no_relevant_sources (no passage passed the "
                    "relevance gate; the model was not asked), unverified (passages were "
                    "relevant, but no sentence the model wrote passed the support check: "
                    "the best quote is the answer), declined (the model said the sources "
                    "do not answer). no_results: nothing matched the search filters.")
    usage: Usage
    withheld: int = Field(0, description="Unsupported sentences withheld (strict policy).")
    stopped_unsupported: bool = Field(
        False, description="Strict policy: generation was stopped after too many "
                            "unsupported sentences in a row.")


class ErrorEvent(AnswerEvent):
    name: ClassVar[str] = "error"
    stored: ClassVar[bool] = False  # an answer that failed is not stored at all
    code: str
    message: str


_BY_NAME: dict[str, type[AnswerEvent]] = {
    cls.name: cls for cls in (SearchEvent, StageEvent, PlanEvent, SourcesEvent, QuoteEvent,
                              DeltaEvent,
                              RelatedEvent, SupportEvent, TimingsEvent, DoneEvent, ErrorEvent)
}


EVENT_NAMES = frozenset(_BY_NAME)


def event_from_dict(record: dict[str, Any]) -> AnswerEvent:
    """Rebuild an event from its stored ``{"event", "data"}`` form."""
    return _BY_NAME[record["event"]].model_validate(record["data"])
