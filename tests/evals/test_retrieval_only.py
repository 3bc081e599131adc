"""``eval run --retrieval-only``: the index's own ranking scored with no app and no
model, over the same docs-corpus slice as the smoke evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.evals.test_smoke_eval import SLICE
from tests.support.server import ROOT


def test_retrieval_only_run_scores_the_index_without_a_model() -> None:
    cache = Path(os.environ.get("SEARCH_APP_EVAL_CACHE", "/tmp/search-app-test-cache/evals"))
    run_id = f"retrieval-{time.strftime('%Y%m%d-%H%M%S')}"
    done = subprocess.run(
        [sys.executable, "-m", "search_app.cli", "eval", "run", "--dataset", "dev",
         "--corpus", "git", "--pages", SLICE, "--retrieval-only", "--run-id", run_id,
         "--no-progress", "--root", str(cache)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = cache / "runs" / run_id
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["questions"] == summary["answered"] == 26
    metrics = summary["metrics"]
    assert metrics["index_recall@5_page"]["n"] > 15
    assert metrics["index_recall@5_page"]["mean"] >= 0.85  # as the smoke run measures
    assert metrics["f1"]["n"] == 0 and metrics["recall@5_page"]["n"] == 0  # no answers
    # The relevance gate, calibrated on this index as the app does it at start-up:
    assert metrics["false_abstention"]["n"] == 23 and metrics["abstention"]["n"] == 3
    assert metrics["false_abstention"]["mean"] <= 0.05
    assert metrics["abstention"]["mean"] == 1.0
    assert not (run_dir / "app.log").exists()  # no app was started
    assert json.loads((run_dir / "run.json").read_text())["retrieval_only"] is True
