"""The relevance gate's per-index calibration (search_app/calibration.py)."""

from __future__ import annotations

import pytest

from retrieval.types import Passage
from search_app.calibration import (
    CALIBRATION_MARGIN,
    CALIBRATION_QUESTIONS,
    RELEVANCE_FLOOR,
    calibrate_relevance,
)
from search_app.grounding import RELEVANCE_THRESHOLD, Grounder
from tests.support.retrieval_fixtures import CountingModel


def _scores(values: list[float | None]):  # type: ignore[no-untyped-def]
    it = iter(values * (len(CALIBRATION_QUESTIONS) // len(values) + 1))

    async def best(question: str) -> float | None:
        return next(it)
    return best


@pytest.mark.parametrize(("values", "expected"), [
    ([0.20, 0.25, 0.27], 0.27 + CALIBRATION_MARGIN),   # a narrow index: well below 0.52
    ([0.60, 0.70, 0.78], RELEVANCE_THRESHOLD),          # a broad one keeps the default
    ([0.05, 0.08, 0.10], RELEVANCE_FLOOR),              # never below the floor
    ([None], RELEVANCE_THRESHOLD),                      # nothing found: the default
])
async def test_threshold_sits_above_unrelated_questions(values: list[float | None],
                                                        expected: float) -> None:
    threshold, _ = await calibrate_relevance(_scores(values))
    assert threshold == pytest.approx(expected, abs=0.005)


def test_the_local_threshold_applies_to_local_results_only() -> None:
    grounder = Grounder(CountingModel(), relevance_threshold=0.52, local_threshold=0.35)
    passages = [Passage(text="t", url="u", title="x", source_id=1, position=0,
                        scores={"dense": 0.40})]
    assert grounder.relevant(passages, "local")
    assert not grounder.relevant(passages, "searxng")
    assert not Grounder(CountingModel()).relevant(passages, "local")  # not calibrated


def test_auto_is_the_default_setting(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from search_app.config import Settings

    assert Settings(data_dir=tmp_path).relevance_threshold is None
    assert Settings(data_dir=tmp_path, relevance_threshold="auto").relevance_threshold is None
    assert Settings(data_dir=tmp_path, relevance_threshold=0.4).relevance_threshold == 0.4
