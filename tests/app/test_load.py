"""Correctness under load, in short: the load benchmark (bench/load_bench.py) run for a
few seconds with 30 concurrent streams. Every stream must end with done or a clean
error, with no protocol error, no stream left open upstream, and bounded memory. The
numbers (200 streams for 60 s) are in bench/results/load.md, not asserted here."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.load_bench import measure
from tests.support.server import ROOT

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (ROOT / "data/index/snapshot/snapshot.json").is_file(),
                                 reason="the default local index is not built")]


def test_concurrent_streams_all_end_cleanly(artifacts_dir: Path) -> None:
    result = measure(30, 8.0, log_dir=artifacts_dir)
    assert result["streams"] >= 30
    assert result["protocol_errors"] == 0, result["problems"]
    assert result["clean"] == result["streams"], result["endings"]
    assert result["endings"].get("done", 0) >= 30
    assert result["upstream_streams_left_open"] == 0
    assert result["rss_mb"]["after_rest"] < result["rss_mb"]["before"] + 300
