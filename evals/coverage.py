"""How much of a dataset's gold evidence an app's index holds.

For sets whose gold URLs are pages of a web corpus (FanOutQA: Wikipedia articles) and an
index that holds only part of it (the default index: ~10,000 Wikipedia summaries), the
retrieval and answer metrics mean little without this: a gold article that is not
indexed can be neither retrieved nor read. URLs are compared at page level with
:func:`evals.metrics.normalize_url` (percent-encoding undone), as recall@k compares them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from evals.datasets import Question
from evals.metrics import normalize_url

__all__ = ["Coverage", "coverage", "index_urls"]


def index_urls(index_path: Path) -> set[str]:
    """The page-level normalized URLs of a local index (``index.sqlite``, table
    ``sources``; opened read-only)."""
    if index_path.is_dir():
        index_path = index_path / "index.sqlite"
    if not index_path.is_file():
        raise FileNotFoundError(f"no index at {index_path}")
    with sqlite3.connect(f"{index_path.resolve().as_uri()}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT url FROM sources WHERE url IS NOT NULL").fetchall()
    return {normalize_url(str(url), anchor=False) for (url,) in rows}


@dataclass
class Coverage:
    """Per question: (id, gold articles indexed, gold articles); and the totals."""

    per_question: list[tuple[str, int, int]]
    articles: int  # distinct gold articles over the questions
    articles_covered: int

    @property
    def questions_all_covered(self) -> int:
        return sum(1 for _, hit, n in self.per_question if n and hit == n)

    @property
    def questions_any_covered(self) -> int:
        return sum(1 for _, hit, _n in self.per_question if hit)

    def share(self, qid: str) -> float:
        hit, n = next((h, n) for i, h, n in self.per_question if i == qid)
        return hit / n if n else 0.0

    def summary(self) -> str:
        n = len(self.per_question)
        mean = (sum(h / t for _, h, t in self.per_question if t) / n) if n else 0.0
        return (f"{n} questions; gold articles in the index: {self.articles_covered} of "
                f"{self.articles} distinct ({self.articles_covered / max(self.articles, 1):.1%});"
                f" questions with all gold articles indexed: {self.questions_all_covered}, "
                f"with at least one: {self.questions_any_covered}; mean share per "
                f"question: {mean:.3f}")


def coverage(questions: Sequence[Question], indexed: Iterable[str]) -> Coverage:
    """Which gold URLs (page level) of each question are among ``indexed`` (normalized
    URLs, e.g. from :func:`index_urls`)."""
    have = set(indexed)
    per_question, distinct = [], set()
    for q in questions:
        gold = list(dict.fromkeys(normalize_url(u, anchor=False) for u in q.gold_urls))
        distinct.update(gold)
        per_question.append((q.id, sum(g in have for g in gold), len(gold)))
    return Coverage(per_question, len(distinct), sum(g in have for g in distinct))


def most_covered(questions: Sequence[Question], cov: Coverage, *, min_share: float = 0.0
                 ) -> list[Question]:
    """The questions with at least ``min_share`` of their gold articles indexed, the
    best covered first (stable: dataset order among equals)."""
    share = {qid: (hit / n if n else 0.0) for qid, hit, n in cov.per_question}
    kept = [q for q in questions if q.gold_urls and share[q.id] >= min_share]
    return sorted(kept, key=lambda q: -share[q.id])
