"""Debian's chromium for the browser tests: where it is, how it is started, and the
marks every browser test module carries (it needs llama.cpp, chromium and the default
local index, and it is slow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import needs_llama_cpp
from tests.support.server import ROOT

__all__ = ["ARGS", "BROWSER_MARKS", "CHROMIUM"]

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
BROWSER_MARKS = [
    needs_llama_cpp, pytest.mark.llamacpp, pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium is not installed "
                       "(apt-get install -y chromium; scripts/setup.sh does it)"),
    pytest.mark.skipif(not (ROOT / "data/index/snapshot/snapshot.json").is_file(),
                       reason="the default local index is not built"),
]
