"""The lead: the answer opens with the sources' own words.

Why: a careful reading of 30 everyday questions on the default app (issue 19) found the
answer in a retrieved passage for 27 of them, most often in its first sentence, while
the 135M model's own sentences were right for 7. The passage sentence closest to the
question by MiniLM alone was the answering sentence in 22 of the 27. So right after
ranking, before the model writes, the app quotes the sentence (or two) that answers the
question, cited: true by construction (the source's exact words), there in ~0.1 s, and
the model's answer follows it, checked as before.

How a sentence is chosen (:meth:`LeadChooser.choose`), among the sentences of the best
packed passages (cut by pysbd, a rule-based splitter that knows abbreviations such as
"No. 2", "Dr." and "U.S."; the answer check's regex cut "Symphony No. 2" at "No."):

- similarity: MiniLM cosine between the question and "title: sentence" (the same model
  and the same form the ranker uses; its vectors are unit length): the title stands in
  for a subject the sentence names only as "It" or "He";
- the question's answer type: "who" wants a name, "when" a date or year, "how many" a
  number, "where" a place name; a sentence that has the kind of word the question asks
  for gains, one that lacks it loses;
- novelty: a sentence that only restates the question (no word the question lacks) is
  no answer;
- the passage's rank: the ranker's first passage is the likeliest (a bonus for a
  passage's first sentence, its definition, was measured and dropped: it picked the
  sentence that names the subject over the one that answers);
- a superlative kept: "the fourth-brightest star" does not answer "the brightest";
- a sentence that opens with a pronoun ("It was first performed...") is quoted with the
  sentence before it, so the quote names what it is about.

A quote is sent only when its score reaches ``min_score``: below it, no sentence of the
sources is close enough to the question to be offered as its answer (the model still
writes, checked as before). The weights were set on the labelled set's Wikipedia
questions and are measured on all of it (docs/evals.md, "The lead").
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from retrieval.embeddings import EmbeddingModel
from retrieval.types import Passage
from search_app.grounding import leans_on_previous

__all__ = ["LEAD_MIN_SCORE", "LeadChooser", "Quote", "answer_type", "candidate_sentences",
           "split_sentences"]

LEAD_MIN_SCORE = 0.45   # below: no quote (see the module docstring)
LEAD_PASSAGES = 3       # the best packed passages whose sentences are candidates (2-5: same
#                         hit rate on the labelled set; each one costs ~9 ms a sentence)
MIN_CHARS, MAX_CHARS = 20, 600  # shorter is a fragment, longer a list or a table

# Weights (set on the labelled Wikipedia questions; docs/evals.md "The lead").
TYPE_MATCH, TYPE_MISSING = 0.08, -0.12
NOT_NEW = -0.25          # says nothing the question does not
NOT_THE_SUPERLATIVE = -0.15  # "the fourth-brightest star" for "the brightest star"
RANK_STEP = -0.03        # per place below the first passage

_YEAR = re.compile(r"\b(?:1[0-9]{3}|20[0-9]{2}|[0-9]{1,2}(?:st|nd|rd|th) century|"
                   r"(?:January|February|March|April|May|June|July|August|September|"
                   r"October|November|December)\b|BC\b|BCE\b|AD\b)")
_NUMBER = re.compile(r"\b\d[\d,.]*\b|\b(?:one|two|three|four|five|six|seven|eight|nine|"
                     r"ten|eleven|twelve|twenty|thirty|forty|fifty|hundred|thousand|"
                     r"million|billion|dozen)\b", re.IGNORECASE)
_NAME = re.compile(r"\b[A-Z][a-zà-ÿ]+(?:[ -](?:[A-Z][a-zà-ÿ]+|van|von|de|da|del|der|"
                   r"of|the|[A-Z]\.))*")
_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset("""a an the of in on at to by for with from and or is are was were be been
being do does did what which who whom whose when where why how many much long big old
that this these those it its as into about than then there their they he she his her
has have had not no yes can could would should will may might name called known""".split())


@dataclass(frozen=True)
class Quote:
    """The lead: ``text`` is copied exactly from source ``source`` (its number)."""

    text: str
    source: int
    score: float


def answer_type(question: str) -> str | None:
    """What kind of word answers ``question``: name, date, number, place, or None
    (what/which/why/how: any new content)."""
    q = question.strip().lower()
    if re.match(r"(?:who|whom|whose)\b", q) or re.search(r"\b(?:who|whom)\b", q[:40]):
        return "name"
    if re.match(r"(?:when|what year|which year|in what year|in which year|what date|"
                r"what century|which century)\b", q):
        return "date"
    if re.match(r"(?:how many|how much|how long|how old|how big|how tall|how high|"
                r"how far|how deep|how large|how heavy|what is the (?:population|"
                r"height|length|area|size))\b", q):
        return "number"
    if re.match(r"(?:where|in which country|in what country|in which city|what country|"
                r"which country|what city|which city)\b", q):
        return "place"
    return None


@lru_cache(maxsize=4096)
def split_sentences(text: str) -> tuple[str, ...]:
    """``text``'s sentences, each as written but for its whitespace (runs of spaces and
    line breaks are one space). Cached: the local index's passages recur from question
    to question, and pysbd takes ~3-5 ms a passage."""
    import pysbd  # a pure-Python rule set; imported on first use, not at start-up

    out: list[str] = []
    # whitespace joined first: wrapped lines (manual pages, plain text) are not sentences
    for piece in (s.strip() for s in _segmenter(pysbd).segment(" ".join(text.split()))):
        if out and _CIRCA.search(out[-1]) and piece[:1].isdigit():  # "c. 1495" is one
            out[-1] = f"{out[-1]} {piece}"
        elif piece:
            out.append(piece)
    return tuple(out)


# pysbd ends a sentence at "dated to c." before "1495–1498": a date abbreviation
# followed by a number continues the sentence.
_CIRCA = re.compile(r"(?:^|[\s(])(?:c|ca|fl|b|d|r|approx|est)\.$")


@lru_cache(maxsize=1)
def _segmenter(pysbd):  # type: ignore[no-untyped-def]
    return pysbd.Segmenter(language="en", clean=False)


@dataclass(frozen=True)
class Candidate:
    text: str
    title: str      # its passage's title: "It was designed..." is about the title
    source: int
    rank: int       # the passage's place among the candidates' passages (0: best)
    before: str     # the sentence before it ("" for the first)


class LeadChooser:
    """Chooses the quote; one per app (it holds the embedding model)."""

    def __init__(self, model: EmbeddingModel, min_score: float = LEAD_MIN_SCORE,
                 passages: int = LEAD_PASSAGES) -> None:
        self.model = model
        self.min_score = min_score
        self.passages = passages

    async def choose(self, question: str, passages: Sequence[Passage]) -> Quote | None:
        """The best quote from ``passages`` (numbered as the model sees them), or None
        when no sentence is close enough to the question. Runs off the event loop."""
        if not passages:
            return None
        return await asyncio.to_thread(self._choose, question, passages)

    def _choose(self, question: str, passages: Sequence[Passage]) -> Quote | None:
        scored = self.rank(question, passages)
        if not scored or scored[0][1] < self.min_score:
            return None
        best, score = scored[0]
        text = best.text
        if best.before and leans_on_previous(text):  # name what "It" is: the one before
            text = f"{best.before} {text}"
        return Quote(text=text, source=best.source, score=round(score, 4))

    def rank(self, question: str, passages: Sequence[Passage]
             ) -> list[tuple[Candidate, float]]:
        """Every candidate sentence with its score, best first (the evals use it too)."""
        candidates = candidate_sentences(passages[:self.passages])
        if not candidates:
            return []
        # each sentence is embedded with its passage's title, as the ranker embeds
        # passages: a sentence that names its subject only as "It" still matches
        vectors = self.model.embed_multi([question, *[f"{c.title}: {c.text}"
                                                      for c in candidates]])
        cosine = vectors[1:] @ vectors[0]
        kind = answer_type(question)
        asked = set(_WORD.findall(question.lower()))
        scores = [float(cos) + _bonus(c, kind, question, asked)
                  for c, cos in zip(candidates, np.asarray(cosine).tolist(), strict=True)]
        order = sorted(range(len(candidates)), key=lambda i: -scores[i])
        return [(candidates[i], scores[i]) for i in order]


def candidate_sentences(passages: Sequence[Passage]) -> list[Candidate]:
    out: list[Candidate] = []
    ranks: dict[int, int] = {}
    for p in passages:
        rank = ranks.setdefault(p.source_id, len(ranks))
        sentences = split_sentences(p.text)
        for i, sentence in enumerate(sentences):
            if MIN_CHARS <= len(sentence) <= MAX_CHARS and not sentence.endswith(":"):
                out.append(Candidate(sentence, p.title, p.source_id, rank,
                                     sentences[i - 1] if i else ""))
    return out


def _bonus(c: Candidate, kind: str | None, question: str, asked: set[str]) -> float:
    """What the answer type, novelty, rank and superlative add to the cosine."""
    words = set(_WORD.findall(c.text.lower()))
    new = {w for w in words - asked if w not in _STOP and len(w) > 2}
    bonus = (NOT_NEW if not new else 0.0) + RANK_STEP * c.rank
    if any(re.search(rf"\b(?:second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|"
                     rf"\d+(?:st|nd|rd|th))[- ]{w}\b", c.text, re.IGNORECASE)
           for w in asked if w.endswith("est") and len(w) > 4):
        bonus += NOT_THE_SUPERLATIVE
    if kind is not None:
        bonus += TYPE_MATCH if _has_kind(c.text, kind, question) else TYPE_MISSING
    return bonus


def _has_kind(sentence: str, kind: str, question: str) -> bool:
    """Whether ``sentence`` holds a word of the kind the question asks for, other than
    the question's own words."""
    if kind == "date":
        return bool(_YEAR.search(sentence))
    if kind == "number":
        return bool(_NUMBER.search(sentence))
    asked = question.lower()
    names = [m.group(0) for m in _NAME.finditer(sentence) if m.start() > 0
             or len(m.group(0).split()) > 1]
    return any(n.lower() not in asked for n in names)
