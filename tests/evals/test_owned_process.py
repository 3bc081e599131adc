"""The harness's app ends with the harness, also when the harness is terminated: an
``eval run`` stopped with SIGTERM once left its app (and the model in it) running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import os, sys, time
from evals.runner import owned_process
with open(os.devnull, "wb") as log, owned_process(["sleep", "300"], log=log,
                                                 env=dict(os.environ)) as child:
    print(child.pid, flush=True)
    time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its new parent) counts as gone
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_terminated_harness_stops_its_app(sig: signal.Signals) -> None:
    harness = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True)
    assert harness.stdout is not None
    child = int(harness.stdout.readline())
    assert _alive(child)
    harness.send_signal(sig)
    assert harness.wait(timeout=30) == 128 + sig
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "the harness's child outlived it"
