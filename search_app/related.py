"""Related questions: the model's candidates, filtered, completed from the sources.

Why a filter and a fallback: grammar-constrained decoding guarantees the shape of the
model's output, not its sense. A 135M model often repeats the user's question, writes
the same question twice, copies the prompt's example, or asks about nothing in the
sources ("How do I find it?"). Those are dropped; when fewer than ``MIN_RELATED``
remain (or the model failed or ran late), questions about the other sources the answer
was built from fill the list, so a reader is always offered a next step that the
retrieved material can answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence

from search_app.prompts import RELATED_EXAMPLE_WORDS

__all__ = ["MAX_RELATED", "MIN_RELATED", "parse_candidates", "pick_related"]

MAX_RELATED = 3
MIN_RELATED = 2
# Two questions whose word sets overlap this much (Jaccard) are the same question.
SAME_QUESTION = 0.6
_WORD = re.compile(r"\w+")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
_STOP = frozenset("""what who when where why how which is are was were does did do can
the a an of in on at to for and or with about from by its it his her their this that
these those you your there be been has have had will would could should made make
known""".split())


def parse_candidates(text: str) -> list[str]:
    """The strings of the model's ``{"questions": [...]}``; from a cut-off output (token
    budget), the complete strings it holds."""
    try:
        data = json.loads(text)
        items = data.get("questions", []) if isinstance(data, dict) else []
    except ValueError:
        items = [q for q in map(_json_string, _STRING.findall(text)) if q is not None]
    return [q for q in items if isinstance(q, str)]


def _json_string(body: str) -> str | None:
    """A JSON string literal's value; None for one that is not valid JSON (a raw
    control character, a broken escape), which is skipped, not an error."""
    try:
        return json.loads(f'"{body}"')
    except ValueError:
        return None


def pick_related(candidates: Iterable[str], question: str, evidence: str,
                 titles: Sequence[str]) -> list[str]:
    """Up to ``MAX_RELATED`` distinct questions: the good candidates first, then
    "What is known about <title>?" for the sources' titles until ``MAX_RELATED``."""
    known = _words(evidence) | _words(question)
    picked: list[str] = []

    def add(q: str) -> None:
        words = _words(q)
        if (len(picked) < MAX_RELATED and len(q.split()) >= 3 and q.endswith("?")
                and _jaccard(words, _words(question)) < SAME_QUESTION
                and all(_jaccard(words, _words(p)) < SAME_QUESTION for p in picked)):
            picked.append(q)

    for q in (c.strip() for c in candidates):
        content = _words(q)
        if content & RELATED_EXAMPLE_WORDS or not content & known:
            continue  # copied from the prompt's example, or about nothing in the sources
        add(" ".join(q.split()))
    for title in dict.fromkeys(t.strip() for t in titles if t.strip()):
        add(f"What is known about {title}?")
    return picked


def _words(text: str) -> set[str]:
    """Content words: what two questions must share to be the same question."""
    return {w for w in _WORD.findall(text.lower()) if len(w) > 2 and w not in _STOP}


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / max(1, len(a | b))
