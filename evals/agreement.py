"""The app's own support check against the run's independent one, sentence by sentence.

Strict grounding emits a sentence only when the app's check (MiniLM cosine plus the
novel-term rule) passes it. Whether that makes the emitted text true to the sources is a
question for an independent check: a run with ``--support judge`` keeps the judge's
verdict on every sentence it read (``judged``) next to the app's (``app_support``). On a
``mark`` run every generated sentence reaches the answer, so both verdicts exist for all
of them, and this module answers "of what strict would emit, how much does the judge
support?" and "would a higher cosine threshold get there, and at what cost?".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel

__all__ = ["Agreement", "agreement", "agreement_markdown", "pooled"]

# Cosine thresholds tried on top of the app's check (its own is the first row).
THRESHOLDS = (0.60, 0.65, 0.70, 0.75, 0.80)


class ThresholdRow(BaseModel):
    threshold: float
    kept: int               # sentences the app would emit at this threshold
    judge_supported: int    # of those, supported by the judge


class Agreement(BaseModel):
    sentences: int          # app-checked sentences with a judge verdict
    withheld: int           # app sentences strict withheld: the judge never read them
    unmatched: int          # emitted app sentences the harness split differently
    app_yes_judge_yes: int
    app_yes_judge_no: int
    app_no_judge_yes: int
    app_no_judge_no: int
    app_threshold: float | None
    sweep: list[ThresholdRow]


def _key(sentence: str) -> str:
    plain = re.sub(r"\[citation:\d+\]", "", sentence)
    return re.sub(r"\W+", " ", plain).strip().lower()


def agreement(results: Iterable[Any], app_threshold: float | None = None) -> Agreement:
    """Cross the app's verdicts with the judge's over ``results`` (QuestionResult)."""
    pairs: list[tuple[bool, float, bool]] = []  # (app supported, app score, judge)
    withheld = unmatched = 0
    for result in results:
        # in order, per text: a looping model repeats a sentence with other citations
        judged: dict[str, list[bool]] = {}
        for j in result.judged:
            judged.setdefault(_key(j["sentence"]), []).append(bool(j["supported"]))
        if not judged:
            continue
        for s in result.app_support:
            queue = judged.get(_key(s["sentence"]))
            verdict = queue.pop(0) if queue else None
            if verdict is None:  # a fragment the harness does not count as a sentence
                withheld += bool(s.get("withheld"))
                unmatched += not s.get("withheld")
                continue
            pairs.append((bool(s["supported"]), float(s["score"]), verdict))
    count = {(a, j): sum(1 for x, _, y in pairs if (x, y) == (a, j))
             for a in (True, False) for j in (True, False)}
    sweep = [ThresholdRow(threshold=t,
                          kept=sum(1 for a, score, _ in pairs if a and score >= t),
                          judge_supported=sum(1 for a, score, j in pairs
                                              if a and score >= t and j))
             for t in THRESHOLDS if app_threshold is None or t > app_threshold]
    return Agreement(sentences=len(pairs), withheld=withheld, unmatched=unmatched,
                     app_yes_judge_yes=count[True, True], app_yes_judge_no=count[True, False],
                     app_no_judge_yes=count[False, True], app_no_judge_no=count[False, False],
                     app_threshold=app_threshold, sweep=sweep)


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.2f}" if whole else "–"


def agreement_markdown(name: str, a: Agreement, judge: str | None = None) -> str:
    total_yes = a.app_yes_judge_yes + a.app_yes_judge_no
    total_no = a.app_no_judge_yes + a.app_no_judge_no
    lines: list[str] = [
        f"# App check vs {judge or 'the run support check'}: `{name}`", "",
        f"{a.sentences} sentences with both verdicts"
        + "".join(f"; {n} {why}" for n, why in (
            (a.withheld, "withheld by strict, which the judge never read"),
            (a.unmatched, "that the harness does not count as claims (e.g. list "
                          "numbers the app checked before e2f951b), left out")) if n) + ".", "",
        "| app check | judge: supported | judge: not | judge-supported share |",
        "|---|---|---|---|",
        f"| passed (strict emits) | {a.app_yes_judge_yes} | {a.app_yes_judge_no} | "
        f"{_share(a.app_yes_judge_yes, total_yes)} |",
        f"| rejected (strict withholds) | {a.app_no_judge_yes} | {a.app_no_judge_no} | "
        f"{_share(a.app_no_judge_yes, total_no)} |",
    ]
    if a.sweep:
        lines += ["", "A higher cosine threshold on top of the app's check:", "",
                  "| threshold | sentences kept | share of all | judge-supported share |",
                  "|---|---|---|---|"]
        for row in a.sweep:
            lines.append(f"| {row.threshold:.2f} | {row.kept} | "
                         f"{_share(row.kept, a.sentences)} | "
                         f"{_share(row.judge_supported, row.kept)} |")
    return "\n".join(lines) + "\n"


def pooled(groups: Sequence[Agreement]) -> Agreement:
    """Several runs' agreements added up (e.g. one model over dev and a FAQ set)."""
    rows: dict[float, ThresholdRow] = {}
    for g in groups:
        for r in g.sweep:
            old = rows.get(r.threshold, ThresholdRow(threshold=r.threshold, kept=0,
                                                     judge_supported=0))
            rows[r.threshold] = ThresholdRow(threshold=r.threshold, kept=old.kept + r.kept,
                                             judge_supported=old.judge_supported
                                             + r.judge_supported)
    return Agreement(
        sentences=sum(g.sentences for g in groups),
        withheld=sum(g.withheld for g in groups),
        unmatched=sum(g.unmatched for g in groups),
        app_yes_judge_yes=sum(g.app_yes_judge_yes for g in groups),
        app_yes_judge_no=sum(g.app_yes_judge_no for g in groups),
        app_no_judge_yes=sum(g.app_no_judge_yes for g in groups),
        app_no_judge_no=sum(g.app_no_judge_no for g in groups),
        app_threshold=groups[0].app_threshold if groups else None,
        sweep=sorted(rows.values(), key=lambda r: r.threshold))
