"""Grounding from the pipeline, not the prompt: a relevance gate and a support check.

Why: a 135M model ignores "cite every sentence" and answers confidently when the sources
lack the answer (measured, see shared notes). So the pipeline (1) refuses to ask the model
when no passage is relevant enough, and (2) checks every answer sentence against the
passages it cites (all passages when it cites none), marks it supported or not, and cites
supported sentences that the model left uncited.

Both checks use all-MiniLM-L6-v2 cosine similarity (unit vectors, so cosine = dot).

Relevance gate, ``RELEVANCE_THRESHOLD = 0.52`` on the best passage's dense score (for
web providers; the local index gets its own threshold, calibrated on it at start-up by
``search_app/calibration.py``, which keeps 0.52 for this Wikipedia index)
(query vs ``title: passage``, as the ranker scores it). Measured on the default local
index (10,033 Wikipedia summaries), top-5 passages, best dense score per question:
  - 22 on-corpus questions ("Who designed the Eiffel Tower?", "What is bronze made
    of?", ...): min 0.552, median 0.730, max 0.869;
  - 20 off-corpus questions (npm errors, "What is my WiFi password?", a made-up city's
    mayor, tomorrow's weather, ...): min 0.225, median 0.344, max 0.645.
  At 0.52 all 22 on-corpus questions pass and 18 of 20 off-corpus ones are gated; the
  two that pass ("What did I eat for breakfast yesterday?" 0.571, "Who won the 2031
  Eurovision song contest?" 0.645) have an on-topic article, and the support check is
  the second line for those.

Support check, ``SUPPORT_THRESHOLD = 0.8`` (0.55 until 2026-12-08: see below) on the
best cosine between the sentence and
any *unit* of the checked passages (each passage whole and each of its sentences: a
short answer sentence matches one source sentence better than a whole paragraph).
Measured on 8 topics from the same index (16 sentences that restate a passage, 16
same-topic false claims, 64 off-topic sentences):
  - supported: min 0.595, median 0.767;  off-topic: max 0.325, median 0.072;
  - same-topic false claims ("The Eiffel Tower was designed by Leonardo da Vinci"):
    min 0.485, median 0.635 - cosine alone cannot catch these.
  So a lexical rule backs the threshold: a sentence that names a number or a
  capitalised name (the first word too, unless a common opener like "The") found neither
  in the checked passages nor in the question is not
  supported ("Leonardo", "1650", "Brazil", "Mozart"). With both rules: 16 of 16
  supported sentences pass, 11 of 16 same-topic false claims and all off-topic ones are
  flagged. This is a cheap screen, not an entailment model: a false claim built only
  from words in the sources ("Bronze is made of iron and carbon") still passes.

Measured again against careful readers (2026-12-08; docs/evals.md "The check against
the labels": 309 answer sentences, SmolLM2's and Qwen2.5-Coder-1.5B's, labelled
supported / partly / not by reading the passages): at 0.55, 72% of the sentences the
check passed had a wrong or unsupported detail (SmolLM2's 78%, Qwen's 15%). The
threshold is what separates them: at 0.8 (a close restatement of one source sentence)
29% do (SmolLM2's 41%, Qwen's 7%), and only 9% are wholly unsupported (from 47%); the
price is recall (0.94 -> 0.62 of the supported sentences), which the lead quote
(search_app/lead.py) makes up for: the answer opens with the sources' own words either
way. Looking names and numbers up in the one passage that supports the sentence best
rather than in every checked passage, and a content-word coverage rule, changed little
on these labels; the first is kept (it is the stricter reading of "cited").
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Sequence, Set
from dataclasses import dataclass
from typing import Literal

import numpy as np

from retrieval.embeddings import EmbeddingModel
from retrieval.types import Passage
from search_app.events import SentenceSupport

__all__ = [
    "RELEVANCE_THRESHOLD",
    "SUPPORT_THRESHOLD",
    "CitedStream",
    "Grounder",
    "SentenceSplitter",
    "citations",
    "clean_citations",
    "coverage",
    "is_claim",
    "is_decline",
    "leans_on_previous",
    "repeats",
    "normalize_citations",
    "strip_citations",
]

RELEVANCE_THRESHOLD = 0.52
SUPPORT_THRESHOLD = 0.8

# Any run of brackets: a model writes "[[citation:1]]", "[citation: 1]" and now and
# then "[[[citation:1]"; each is one marker (a stray bracket left behind would show).
_CITATION = re.compile(r"\[+citation:\s*(\d+)\]+", re.IGNORECASE)
_SENTENCES = re.compile(r"(?<=[.!?])\s+(?=\S)")
# A sentence ends at . ! ? (plus citations and closing quotes/brackets right after it)
# followed by whitespace and a new non-citation start, or at a line break; not at an
# initial ("John F. Kennedy" was cut into "...was John F." and "Kennedy...") or a common
# abbreviation (Mr., Dr., St., No., vs., c.): each lookbehind is fixed-width, as re needs.
_NOT_AN_END = "".join(rf"(?<!\b{a})" for a in (
    "Mr", "Ms", "Mrs", "Dr", "St", "No", "vs", "Jr", "Sr", "Prof", "Gen", "c", "ca"))
_BOUNDARY = re.compile(r"(?:(?<!\s[A-Z])(?<!^[A-Z])" + _NOT_AN_END
                       + r"[.!?][\"')\]]*(?:\s*\[citation:\d+\])*|\n)\s+(?=[^\s\[])")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_NAME = re.compile(r"(?<=\s)[A-Z][a-z]{2,}")
_FIRST_WORD = re.compile(r"^\W*([A-Z][a-z]{2,})\b")
# Common sentence openers: capitalised only because they start the sentence.
_OPENERS = frozenset("""the this that these those its his her their there then thus
however also and but yet for nor not with without when while where which who what why how
after before although though because since some many most one all both each every here
you your our yes overall finally first second third another such other more less""".split())


def normalize_citations(text: str) -> str:
    """``[[citation:3]]`` and ``[citation: 3]`` become ``[citation:3]``."""
    return _CITATION.sub(lambda m: f"[citation:{m.group(1)}]", text)


def citations(text: str) -> list[int]:
    return [int(n) for n in _CITATION.findall(text)]


def strip_citations(text: str) -> str:
    return " ".join(_CITATION.sub("", text).split())


class SentenceSplitter:
    """Cuts a token stream into whole sentences, so each can be checked and cited."""

    def __init__(self) -> None:
        self._buffer = ""

    @property
    def pending(self) -> str:
        """The sentence being written (not ended yet)."""
        return self._buffer

    def feed(self, text: str) -> list[str]:
        self._buffer += text
        out = []
        while (match := _BOUNDARY.search(self._buffer)) is not None:
            out.append(self._buffer[:match.end()])
            self._buffer = self._buffer[match.end():]
        return out

    def flush(self) -> str:
        rest, self._buffer = self._buffer, ""
        return rest


# A list item's number or bullet, or a code block's bracket, on its own: the splitter
# cuts "1. Run git gc." into "1." and "Run git gc.", and "10." must not be checked as a
# claim (a number the sources lack) and withheld, nor count toward strict's stop.
_NOT_A_CLAIM = re.compile(r"\s*(?:\d{1,3}[.)]|[a-zA-Z][.)]|[-*+\u2022])?[\W_]*")


def is_claim(plain: str) -> bool:
    """Whether a sentence (citations stripped) says anything that can be checked."""
    return len(plain.strip()) >= 3 and not _NOT_A_CLAIM.fullmatch(plain)


# The model saying the sources lack the answer: "The sources do not mention...", "I
# don't know", "There is no information about...". Not a claim the app can check, and
# not one it may assert: a sentence chosen from those very sources may answer it.
_DECLINE = re.compile(
    r"\b(?:(?:do|does|did)\s+not|don't|doesn't|didn't|cannot|can't|could\s+not|"
    r"couldn't|unable\s+to|no)\s+(?:\w+\s+){0,3}?(?:contain|mention|provide|include|"
    r"say|state|specify|cover|answer|know|find|information|details?|data|sources?)\b|"
    r"\b(?:not|never)\s+(?:mentioned|stated|provided|specified|given|covered|"
    r"included|found)\s+in\b|\bI\s+(?:do\s+not|don't)\s+know\b", re.IGNORECASE)
_ABOUT_SOURCES = re.compile(r"\b(?:sources?|passages?|context|text|information|"
                            r"provided|I)\b", re.IGNORECASE)


def is_decline(plain: str) -> bool:
    """Whether a sentence says the sources (or the model) do not have the answer."""
    return bool(_DECLINE.search(plain)) and bool(_ABOUT_SOURCES.search(plain))


# A sentence that opens with a pronoun leans on the sentence before it for its
# referent: "He became the first American..." means nothing once the sentence that
# named him was withheld.
_LEANING = re.compile(r"^\W*(?:he|she|it|they|this|these|those|his|her|its|their|him|"
                      r"them|there)\b", re.IGNORECASE)


def leans_on_previous(plain: str) -> bool:
    return bool(_LEANING.match(plain))


_CONTENT = re.compile(r"[a-z0-9]+")
_FUNCTION_WORDS = frozenset("""the a an of in on at to by for with from and or is are was
were be been being it its this that these those as into about than then there their they
he she his her has have had also which who whom whose what when where""".split())


def repeats(sentence: str, quote: str, share: float = 0.8) -> bool:
    """Whether ``sentence`` says little beyond ``quote``: at least ``share`` of its
    content words are in the quote (so it adds no claim of its own)."""
    words = [w for w in _CONTENT.findall(strip_citations(sentence).lower())
             if w not in _FUNCTION_WORDS]
    if not words:
        return False
    known = set(_CONTENT.findall(quote.lower()))
    return sum(w in known for w in words) / len(words) >= share


# A citation marker still being written at the end of the text: "[", "[[cita",
# "[citation: 1", "[citation:12]" (a second "]" may follow).
_PARTIAL_CITATION = re.compile(
    r"\[+(?:c(?:i(?:t(?:a(?:t(?:i(?:o(?:n(?::\s*\d*\]?)?)?)?)?)?)?)?)?)?$", re.IGNORECASE)


def _partial_citation_start(text: str) -> int:
    """Where an unfinished citation marker starts at the end of ``text`` (or its length)."""
    i = text.rfind("[")
    if i < 0:
        return len(text)
    while i > 0 and text[i - 1] == "[":
        i -= 1
    return i if _PARTIAL_CITATION.match(text, i) else len(text)


class CitedStream:
    """Streams the answer as it is generated while each sentence is still checked and
    cited: text goes out at once, except what the sentence's check may still change,
    which is held back - an unfinished citation marker (invalid ones are dropped) and a
    sentence's trailing whitespace (a supported but uncited sentence gets its citation
    there). :meth:`feed` returns the sentences that just ended; the caller checks each
    and passes the result to :meth:`complete`, then sends :meth:`progress`."""

    def __init__(self, n_sources: Sources) -> None:
        self._splitter = SentenceSplitter()
        self._n_sources = n_sources
        self._sent = ""  # what has gone out of the sentence being written

    def feed(self, text: str) -> list[str]:
        return self._splitter.feed(text)

    def flush(self) -> str:
        """The last, unterminated sentence (check it and :meth:`complete` it too)."""
        return self._splitter.flush()

    def complete(self, checked: str) -> str:
        """The rest of a finished sentence, given its checked text."""
        sent, self._sent = self._sent, ""
        # ``checked`` starts with ``sent`` (tested); the common prefix never repeats text
        return checked[len(os.path.commonprefix([checked, sent])):]

    def progress(self) -> str:
        """New text of the sentence being written that its check can no longer change."""
        raw = self._splitter.pending
        safe = raw[:min(_partial_citation_start(raw), len(raw.rstrip()))]
        # Strip again after cleaning: a dropped marker can leave whitespace at the end.
        text = clean_citations(safe, self._n_sources).rstrip()
        new, self._sent = text[len(self._sent):], text
        return new


# The sources a text may cite: 1..n, or exactly these numbers (a research report's
# section was given some of the report's sources, not 1..n).
Sources = int | Set[int]


def clean_citations(text: str, n_sources: Sources) -> str:
    """Normalized markers; those naming no listed source are removed."""
    allowed = range(1, n_sources + 1) if isinstance(n_sources, int) else n_sources
    return _CITATION.sub(lambda m: f"[citation:{m.group(1)}]"
                         if int(m.group(1)) in allowed else "", text)


@dataclass
class Grounder:
    model: EmbeddingModel
    relevance_threshold: float = RELEVANCE_THRESHOLD
    support_threshold: float = SUPPORT_THRESHOLD
    # The local index's own threshold (search_app/calibration.py); web providers keep
    # ``relevance_threshold``.
    local_threshold: float | None = None
    # Where a sentence's names and numbers must be found: in every passage it was
    # checked against ("checked"), or in the one passage that supports it best ("best":
    # "Everest, also known as K2" cites the Everest passage, and K2 is only in another).
    detail_scope: Literal["checked", "best"] = "best"
    # Least share of the sentence's content words found in that evidence (0: no rule).
    min_coverage: float = 0.0

    def threshold(self, provider: str | None = None) -> float:
        if provider == "local" and self.local_threshold is not None:
            return self.local_threshold
        return self.relevance_threshold

    def relevant(self, passages: Sequence[Passage], provider: str | None = None) -> bool:
        """The gate: some passage's dense score reaches the threshold (the local
        index's calibrated one for its results). Passages without a dense score
        (ranking fell back to the provider's order) are trusted."""
        if not passages:
            return False
        scores = [p.scores.get("dense") for p in passages]
        if any(s is None for s in scores):
            return True
        return max(s for s in scores if s is not None) >= self.threshold(provider)

    async def check(self, sentence: str, passages: Sequence[Passage], question: str,
                    n_sources: Sources) -> tuple[str, SentenceSupport]:
        """Check one answer sentence; return it with invalid citations removed and a
        citation added when it is supported but cited nothing, and its support record."""
        text = clean_citations(sentence, n_sources)
        valid = list(dict.fromkeys(citations(text)))
        plain = strip_citations(text)
        if not is_claim(plain):
            return text, SentenceSupport(sentence=plain, cited=valid, supported=True,
                                         score=1.0, best_source=None)
        checked = [p for p in passages if p.source_id in valid] or list(passages)
        score, best = await asyncio.to_thread(self._similarity, plain, checked)
        supported = score >= self.support_threshold and self.details_hold(
            plain, checked, best, question)
        if supported and not valid and best is not None:
            body = text.rstrip()
            text = f"{body}[citation:{best}]{text[len(body):]}"
            valid = [best]
        return text, SentenceSupport(sentence=plain, cited=valid, supported=supported,
                                     score=round(score, 4), best_source=best)

    def details_hold(self, plain: str, checked: Sequence[Passage], best: int | None,
                     question: str) -> bool:
        """The lexical half of the check: the sentence's numbers and names (and, with
        ``min_coverage``, its content words) are in the evidence or the question."""
        evidence = [p for p in checked if p.source_id == best] \
            if self.detail_scope == "best" and best is not None else list(checked)
        text = " ".join(p.text + " " + p.title for p in evidence)
        if _novel_terms(plain, text, question):
            return False
        return self.min_coverage <= 0 or coverage(plain, f"{text} {question}") >= \
            self.min_coverage

    def _similarity(self, sentence: str, passages: Sequence[Passage]
                    ) -> tuple[float, int | None]:
        units: list[str] = []
        owners: list[int] = []
        for p in passages:
            for unit in [p.text, *_SENTENCES.split(p.text)]:
                if unit.strip():
                    units.append(unit)
                    owners.append(p.source_id)
        if not units:
            return 0.0, None
        vectors = self.model.embed_multi([sentence, *units])
        sims = vectors[1:] @ vectors[0]
        best = int(np.argmax(sims))
        return float(sims[best]), owners[best]


_STEM = 5  # a content word matches a word of the evidence sharing its first 5 letters


def coverage(sentence: str, evidence: str) -> float:
    """The share of ``sentence``'s content words (4+ letters, not function words) that
    the evidence has, compared by their first letters (painted ~ painting)."""
    words = [w for w in _CONTENT.findall(sentence.lower())
             if len(w) > 3 and w not in _FUNCTION_WORDS]
    if not words:
        return 1.0
    known = {w[:_STEM] for w in _CONTENT.findall(evidence.lower())}
    return sum(w[:_STEM] in known for w in words) / len(words)


def _novel_terms(sentence: str, evidence: str, question: str) -> list[str]:
    """Numbers and capitalised names in ``sentence`` that the evidence never mentions."""
    known = f"{evidence} {question}".lower()
    known_numbers = {n.replace(",", "") for n in _NUMBER.findall(known)}
    novel = [n for n in _NUMBER.findall(sentence) if n.replace(",", "") not in known_numbers]
    names = _NAME.findall(sentence)
    first = _FIRST_WORD.match(sentence)
    if first and first.group(1).lower() not in _OPENERS:
        names.append(first.group(1))
    novel += [w for w in names if w.lower() not in known]
    return novel
