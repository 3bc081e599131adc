"""The metrics, per question and aggregated. Pure functions: each one's unit test pins
exact values, and the definitions in docs/evals.md are these functions.

- retrieval: recall@k and MRR of gold URLs, at page level and ``url#anchor`` level;
- answer: SQuAD normalized exact match and token F1 (short answers), the share of gold
  answer strings found (FanOutQA's loose accuracy, multi-part answers), token recall of
  the gold passage (long answers), SimpleQA grades and F-score (LLM judge, optional);
- citations: ALCE citation recall and precision given a support check;
- abstention: the share of unanswerable questions answered "not found";
- latency: p50/p95 per stage, tokens per second.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from urllib.parse import unquote, urlsplit

__all__ = [
    "RETRIEVAL_KS",
    "alce_citations",
    "answer_contains",
    "answer_recall",
    "exact_match",
    "f1_score",
    "mrr",
    "normalize_answer",
    "normalize_url",
    "percentile",
    "recall_at_k",
    "simpleqa_scores",
    "token_recall",
]

# k up to what the app can return: it answers with at most 8 sources by default
# (SEARCH_APP_ANSWER_SOURCES), so a recall@10 could never exceed recall@8.
RETRIEVAL_KS = (1, 3, 5, 8)

# --- URLs -----------------------------------------------------------------------------


def normalize_url(url: str, *, anchor: bool) -> str:
    """Scheme-less, lower-case host, no ``www.``, no trailing slash or ``.html``,
    percent-encoding undone (``Pok%C3%A9mon`` = ``Pokémon``: Wikipedia URLs are written
    either way); the fragment kept only when ``anchor`` (``~N`` suffixes of split
    sections dropped)."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower().removeprefix("www.")
    path = unquote(parts.path).rstrip("/").removesuffix(".html")
    out = f"{host}{path}"
    fragment = unquote(parts.fragment).split("~", 1)[0]
    return f"{out}#{fragment}" if anchor and fragment else out


def _ranked(urls: Sequence[str], anchor: bool) -> list[str]:
    """Retrieved URLs normalized, duplicates removed, rank order kept."""
    return list(dict.fromkeys(normalize_url(u, anchor=anchor) for u in urls))


def recall_at_k(retrieved: Sequence[str], gold: Sequence[str], k: int, *,
                anchor: bool = False) -> float | None:
    """Share of gold URLs among the first ``k`` distinct retrieved ones (None: no gold).

    At page level a gold ``url#anchor`` counts as its page. Gold anchors that are only a
    page (no fragment) match at the anchor level by page."""
    if not gold:
        return None
    top = _ranked(retrieved, anchor)[:k]
    pages = {normalize_url(u, anchor=False) for u in top}
    wanted = set(_gold(gold, anchor))
    hits = sum(g in top or ("#" not in g and g in pages) for g in wanted)
    return hits / len(wanted)


def mrr(retrieved: Sequence[str], gold: Sequence[str], *, anchor: bool = False
        ) -> float | None:
    """1 / rank of the first retrieved URL that is gold; 0 when none is (None: no gold)."""
    if not gold:
        return None
    wanted = set(_gold(gold, anchor))
    for rank, url in enumerate(_ranked(retrieved, anchor), 1):
        if url in wanted or normalize_url(url, anchor=False) in wanted:
            return 1.0 / rank
    return 0.0


def _gold(gold: Sequence[str], anchor: bool) -> list[str]:
    return list(dict.fromkeys(normalize_url(g, anchor=anchor) for g in gold))


# --- answers (SQuAD v1.1 evaluation script, same normalization) ----------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation) | {"\u2018", "\u2019", "\u201c", "\u201d"}
_CITATIONS = re.compile(r"\[+citation:\s*\d+\]+", re.IGNORECASE)


def normalize_answer(text: str) -> str:
    """Lower case, citations, punctuation and articles removed, whitespace collapsed."""
    text = _CITATIONS.sub(" ", text).lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, answers: Sequence[str]) -> float | None:
    if not answers:
        return None
    norm = normalize_answer(prediction)
    return float(any(norm == normalize_answer(a) for a in answers))


def _f1(prediction: str, truth: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = Counter(pred) & Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, answers: Sequence[str]) -> float | None:
    """SQuAD token F1, best over the gold answers."""
    if not answers:
        return None
    return max(_f1(prediction, a) for a in answers)


def answer_contains(prediction: str, answers: Sequence[str]) -> float | None:
    """1 when a normalized gold answer occurs in the normalized prediction: the fair
    short-answer score for a generated paragraph, where exact match is ~0 by design."""
    if not answers:
        return None
    norm = f" {normalize_answer(prediction)} "
    return float(any(f" {normalize_answer(a)} " in norm for a in answers
                     if normalize_answer(a)))


def answer_recall(prediction: str, answers: Sequence[str]) -> float | None:
    """FanOutQA's loose accuracy: the share of the gold answer strings (with repeats:
    each is a part of a multi-part answer) that occur, normalized, as whole tokens in the
    normalized prediction. For one gold string it equals :func:`answer_contains`.
    FanOutQA also lemmatizes with spaCy; this does not (closer to strict matching)."""
    parts = [f" {normalize_answer(a)} " for a in answers if normalize_answer(a)]
    if not parts:
        return None
    norm = f" {normalize_answer(prediction)} "
    return sum(part in norm for part in parts) / len(parts)


def token_recall(prediction: str, passage: str | None) -> float | None:
    """Share of the gold passage's normalized tokens (with multiplicity) found in the
    prediction: how much of a long gold answer the generated answer covers."""
    if not passage:
        return None
    gold = Counter(normalize_answer(passage).split())
    if not gold:
        return None
    found = Counter(normalize_answer(prediction).split()) & gold
    return sum(found.values()) / sum(gold.values())


# --- SimpleQA grades -----------------------------------------------------------------


def simpleqa_scores(grades: Sequence[str]) -> dict[str, float | None]:
    """SimpleQA's aggregate: shares of CORRECT / INCORRECT / NOT_ATTEMPTED, accuracy
    given attempted, and the F-score (harmonic mean of correct and correct-given-
    attempted), as in OpenAI's simple-evals."""
    n = len(grades)
    if n == 0:
        return {"correct": None, "incorrect": None, "not_attempted": None,
                "correct_given_attempted": None, "f_score": None}
    correct = grades.count("CORRECT") / n
    incorrect = grades.count("INCORRECT") / n
    attempted = correct + incorrect
    given = correct / attempted if attempted else 0.0
    f = 2 * given * correct / (given + correct) if (given + correct) else 0.0
    return {"correct": correct, "incorrect": incorrect, "not_attempted": 1 - attempted,
            "correct_given_attempted": given, "f_score": f}


# --- citations (ALCE) ----------------------------------------------------------------

Supports = Callable[[Sequence[str], str], bool]


def alce_citations(sentences: Sequence[tuple[str, Sequence[int]]],
                   passages: dict[int, str], supports: Supports,
                   verdicts: list[dict[str, object]] | None = None
                   ) -> dict[str, float | int | None]:
    """ALCE citation recall and precision (Gao et al. 2023, their ``compute_autoais``).

    ``sentences``: (sentence, cited source numbers); ``passages``: number -> text;
    ``supports(evidence, sentence)``: the support check (entailment in ALCE).

    - recall: share of sentences whose cited passages, joined, support them (a sentence
      without citations scores 0);
    - sentences_supported (ours, not ALCE's): share of sentences supported by their
      cited passages, or by all passages when they cite none;
    - precision: share of citations that are relevant: in a supported sentence, a
      citation is irrelevant when it alone does not support the sentence *and* the other
      citations still do without it; every citation of an unsupported sentence is
      irrelevant.

    ``verdicts``, when given, receives one entry per sentence (its text, citations, and
    whether it was supported by its citations and at all), so a run keeps what the
    check said of each sentence, not only the means.
    """
    supported_sentences = relevant = total = backed = 0
    for sentence, cited in sentences:
        refs = [n for n in dict.fromkeys(cited) if n in passages]
        total += len(list(dict.fromkeys(cited)))
        joint = bool(refs) and supports([passages[n] for n in refs], sentence)
        supported_sentences += joint
        # Supported at all (by its citations, or by any passage when it cites none):
        # the reader's question "is this true to the sources?", citations aside.
        backed_here = joint or (not refs and bool(passages)
                                and supports(list(passages.values()), sentence))
        backed += backed_here
        if verdicts is not None:
            verdicts.append({"sentence": sentence, "cited": list(refs),
                             "cited_support": joint, "supported": backed_here})
        if joint and len(refs) > 1:
            for n in refs:
                if supports([passages[n]], sentence):
                    relevant += 1
                    continue
                rest = [passages[m] for m in refs if m != n]
                relevant += not supports(rest, sentence)
        elif joint:
            relevant += len(refs)
    return {
        "citation_recall": supported_sentences / len(sentences) if sentences else None,
        "citation_precision": relevant / total if total else None,
        "sentences_supported": backed / len(sentences) if sentences else None,
        "sentences": len(sentences), "citations": total,
    }


# --- latency -------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), ``q`` in [0, 100]."""
    data = sorted(v for v in values if v is not None and not math.isnan(v))
    if not data:
        return None
    pos = (len(data) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return data[low] + (data[high] - data[low]) * (pos - low)
