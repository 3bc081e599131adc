"""Support pairs: answer sentences with the passages they were checked against, labelled
by careful reading, and the app's support check scored against those labels.

Why: a check is only as good as what it lets through. The harness's own support metric
is the app's check again (or a judge model too weak to trust: docs/evals.md), so the
reference here is a careful reader (rubric: docs/evals.md "The labelled set"): each pair
is labelled ``yes`` (every claim, names, numbers, dates, relations, is stated or
directly implied by the passages), ``partial`` (the main claim is, a detail is not) or
``no``. The pairs come from real answers (``eval pairs extract RUN``: every sentence the
model wrote in a ``mark`` run, shown or not), so they do not depend on one run's wording
once labelled: any check can be scored on them offline (``eval pairs score``).

Scored: precision of "shown as supported" (the share of sentences the check passes that
the reader labelled ``yes``; 1 - precision is the share shown with a wrong or
unsupported detail), and recall (the share of ``yes`` sentences the check passes).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from evals.runner import read_results

__all__ = ["VARIANTS", "CheckScore", "Evidence", "Pair", "pairs_from_run", "read_pairs",
           "score_check", "score_variants", "shown_quality", "write_pairs"]

Label = Literal["yes", "partial", "no"]

# The support check's variants measured (Grounder settings; docs/evals.md "The check").
VARIANTS: dict[str, dict[str, object]] = {
    "cosine 0.55, names/numbers in the checked passages (before)": {
        "support_threshold": 0.55, "detail_scope": "checked"},
    "cosine 0.55, names/numbers in the best passage": {
        "support_threshold": 0.55, "detail_scope": "best"},
    "... + 60% of content words there": {
        "support_threshold": 0.55, "detail_scope": "best", "min_coverage": 0.6},
    "cosine 0.7, names/numbers in the best passage": {
        "support_threshold": 0.7, "detail_scope": "best"},
    "cosine 0.75, names/numbers in the best passage": {
        "support_threshold": 0.75, "detail_scope": "best"},
    "cosine 0.8, names/numbers in the best passage (now)": {
        "support_threshold": 0.8, "detail_scope": "best"},
    "cosine 0.85, names/numbers in the best passage": {
        "support_threshold": 0.85, "detail_scope": "best"},
}


class Evidence(BaseModel):
    source: int
    title: str
    text: str


class Pair(BaseModel):
    id: str = Field(description="The question's id and the sentence's place: wiki-a-001.2")
    question: str
    sentence: str = Field(description="Citations stripped, as the app checked it.")
    cited: list[int] = Field(default_factory=list)
    evidence: list[Evidence] = Field(description="What the sentence is checked against: "
                                     "its cited sources, or every source when it cites "
                                     "none (the app's rule).")
    app_supported: bool | None = Field(None, description="The app's check in the run.")
    shown: bool | None = Field(None, description="Whether the reader saw it in that run "
                               "(not withheld, not left out as a repeat of the quote).")
    model: str = ""
    run: str = ""
    label: Label | None = None
    note: str | None = Field(None, description="The reader's reason, for partial and no.")


def pairs_from_run(run_dir: Path) -> list[Pair]:
    """Every sentence of every answer of a run (its support event: shown, withheld and
    repeats alike), with the passages of the sources it was checked against."""
    config = json.loads((run_dir / "run.json").read_text())
    model = next((m for m in config.get("models", []) if not m.startswith(
        ("search-app", "all-MiniLM"))), "")
    out: list[Pair] = []
    for r in read_results(run_dir / "results.jsonl"):
        if r.error is not None:
            continue
        sources = {int(s["number"]): Evidence(source=int(s["number"]), title=s["title"],
                                              text=s.get("passage") or s.get("snippet", ""))
                   for s in r.sources}
        for n, s in enumerate(r.app_support, 1):
            cited = [c for c in s.get("cited", []) if c in sources]
            evidence = [sources[c] for c in cited] or list(sources.values())
            if not evidence:
                continue
            out.append(Pair(id=f"{r.id}.{n}", question=r.question, sentence=s["sentence"],
                            cited=cited, evidence=evidence,
                            app_supported=bool(s.get("supported")), model=model,
                            run=run_dir.name, shown=not s.get("withheld")
                            and not s.get("repeats_quote")))
    return out


def read_pairs(path: Path) -> list[Pair]:
    return [Pair.model_validate_json(line) for line in
            path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_pairs(path: Path, pairs: Iterable[Pair]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(p.model_dump_json(exclude_none=True) + "\n" for p in pairs),
                    encoding="utf-8")


class CheckScore(BaseModel):
    """The check against the labels (``yes`` is the positive class)."""

    name: str
    pairs: int
    passed: int                  # the check said supported (what strict shows)
    precision: float | None      # of passed, labelled yes
    recall: float | None         # of yes, passed
    wrong_shown: float | None    # of passed, labelled partial or no (1 - precision)
    lenient_precision: float | None  # of passed, labelled yes or partial


def score_check(name: str, pairs: Sequence[Pair], verdicts: Sequence[bool]) -> CheckScore:
    labelled = [(p.label, v) for p, v in zip(pairs, verdicts, strict=True) if p.label]
    passed = [label for label, v in labelled if v]
    yes = [v for label, v in labelled if label == "yes"]

    def share(part: int, whole: int) -> float | None:
        return round(part / whole, 3) if whole else None

    return CheckScore(
        name=name, pairs=len(labelled), passed=len(passed),
        precision=share(passed.count("yes"), len(passed)),
        recall=share(sum(yes), len(yes)),
        wrong_shown=share(len(passed) - passed.count("yes"), len(passed)),
        lenient_precision=share(len(passed) - passed.count("no"), len(passed)))


async def check_verdicts(pairs: Sequence[Pair], grounder: object) -> list[bool]:
    """The app's support check (a :class:`~search_app.grounding.Grounder`) on each
    pair, offline: the sentence, cited as it was, against its evidence."""
    from retrieval.types import Passage

    out = []
    for p in pairs:
        passages = [Passage(text=e.text, url="", title=e.title, source_id=e.source,
                            position=0) for e in p.evidence]
        sentence = p.sentence + "".join(f"[citation:{c}]" for c in p.cited)
        numbers = {e.source for e in p.evidence}
        _, record = await grounder.check(sentence, passages, p.question,  # type: ignore[attr-defined]
                                         numbers)
        out.append(record.supported)
    return out


def score_variants(pairs: Sequence[Pair], model: object,
                   variants: dict[str, dict[str, object]]) -> list[CheckScore]:
    """Each named variant of the check (Grounder settings) scored on the pairs, and the
    app's own verdicts from the run the pairs came from."""
    from search_app.grounding import Grounder

    scores = [score_check("as run (the app's verdict)", pairs,
                          [bool(p.app_supported) for p in pairs])]
    for name, settings in variants.items():
        grounder = Grounder(model, **settings)  # type: ignore[arg-type]
        scores.append(score_check(name, pairs, asyncio.run(check_verdicts(pairs, grounder))))
    return scores


def shown_quality(pairs: Sequence[Pair], quotes: int = 0) -> dict[str, float | int | None]:
    """What readers saw in a run, by the labels: the share of shown model sentences with
    a wrong or unsupported detail (labelled partial or no), alone and counting the
    run's ``quotes`` (the sources' own words: supported by construction)."""
    shown = [p.label for p in pairs if p.shown and p.label]
    wrong = sum(label != "yes" for label in shown)
    return {"shown_sentences": len(shown), "quotes": quotes,
            "wrong_detail_shown": round(wrong / len(shown), 3) if shown else None,
            "wrong_detail_shown_with_quotes": round(wrong / (len(shown) + quotes), 3)
            if shown or quotes else None}


def markdown(scores: Sequence[CheckScore]) -> str:
    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    lines = ["| check | pairs | passed | precision | recall | wrong detail shown | "
             "precision (partial ok) |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {s.name} | {s.pairs} | {s.passed} | {fmt(s.precision)} | "
              f"{fmt(s.recall)} | {fmt(s.wrong_shown)} | {fmt(s.lenient_precision)} |"
              for s in scores]
    return "\n".join(lines)
