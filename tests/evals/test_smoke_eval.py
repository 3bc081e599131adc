"""The CI smoke evaluation: the real harness, end to end, on a slice of git-doc.

``search-app eval run`` downloads git-doc (``apt-get download``, cached), indexes a slice
of it, starts the app with the embedded default (llama.cpp + SmolLM2, MiniLM), asks 20
dev questions through the API and writes the report. The test then checks that every
metric was computed and is within its range, and that retrieval recall@5 stays above a
floor measured on this slice (retrieval does not depend on the tiny model).

Cache: ``SEARCH_APP_EVAL_CACHE`` (default ``/tmp/search-app-test-cache/evals``) keeps the
.deb and the index, so a rerun only answers the questions. Without a Debian mirror the
test fails with apt's message: a missing corpus must not pass silently.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import needs_llama_cpp

pytestmark = [needs_llama_cpp, pytest.mark.llamacpp, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
# The gold pages of the dev set plus related pages as distractors (~30 pages).
SLICE = (r"^(gitfaq|gitignore|gitcredentials|githooks|gitattributes|gitglossary|"
         r"git-(gc|reflog|bisect|stash|worktree|config|commit|push|pull|fetch|merge|"
         r"rebase|credential|credential-store|credential-cache|log|diff|reset|checkout|"
         r"branch|clone|revert|rerere|prune|repack|tag|remote))\.html$")
# Measured on this slice (docs/evals.md): recall@5 1.00 at page and at anchor level over
# the 17 answerable questions of the first 20 (recall@1: 0.88 / 0.82). The floors allow
# two misses (one miss is 0.94).
RECALL5_PAGE_FLOOR = 0.85
RECALL5_ANCHOR_FLOOR = 0.80


def test_smoke_eval_on_the_dev_set(artifacts_dir: Path) -> None:
    cache = Path(os.environ.get("SEARCH_APP_EVAL_CACHE", "/tmp/search-app-test-cache/evals"))
    run_id = f"smoke-{time.strftime('%Y%m%d-%H%M%S')}"
    command = [sys.executable, "-m", "search_app.cli", "eval", "run", "--dataset", "dev",
               "--limit", "20", "--concurrency", "4", "--corpus", "git", "--pages", SLICE,
               "--serve-arg=--context-length=2048", "--serve-arg=--answer-max-tokens=128",
               "--run-id", run_id, "--no-progress", "--related",
               "--root", str(cache)]
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    (artifacts_dir / "eval_smoke.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, f"eval run failed:\n{done.stderr[-3000:]}"
    run_dir = cache / "runs" / run_id
    summary = json.loads((run_dir / "summary.json").read_text())
    print(f"smoke eval took {time.monotonic() - started:.0f} s\n{done.stdout}")

    assert summary["questions"] == 20 and summary["answered"] == 20, summary["errors"]
    metrics = summary["metrics"]
    for name, value in metrics.items():
        if name in ("tokens_per_s", "lead_hit", "quoted"):  # the lead's metrics need
            continue  # gold sentences: the labelled set (tests/evals/test_labelled.py)
        assert value["n"] > 0, f"{name} was not computed"
        if name not in ("withheld_sentences", "dangling_shown"):  # counts per answer
            assert 0.0 <= value["mean"] <= 1.0, (name, value)
    assert metrics["related_ge2"]["mean"] >= 0.9, metrics["related_ge2"]
    assert metrics["recall@5_page"]["mean"] >= RECALL5_PAGE_FLOOR, metrics["recall@5_page"]
    assert metrics["recall@5_anchor"]["mean"] >= RECALL5_ANCHOR_FLOOR, \
        metrics["recall@5_anchor"]
    assert metrics["recall@1_anchor"]["mean"] <= metrics["recall@5_anchor"]["mean"] <= \
        metrics["recall@5_page"]["mean"]
    assert metrics["abstention"]["n"] == 3 and metrics["citation_recall"]["n"] > 5
    latency = summary["latency"]
    for stage in ("search_ms", "rank_ms", "ttft_ms", "total_ms", "wall_ms"):
        assert latency[stage]["p50"] > 0 and latency[stage]["p95"] >= latency[stage]["p50"]
    assert latency["total_ms"]["p95"] < 120_000
    assert 1 < latency["tokens_per_s"]["p50"] < 1000
    for name in ("report.md", "report.html", "metrics.png", "latency.png"):
        assert (run_dir / name).stat().st_size > 1000, name
