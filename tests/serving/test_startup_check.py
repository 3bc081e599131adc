"""Start-up self-check: ``serve`` and ``serve-model`` fail fast, with one line that
says why, when the engine cannot load or cannot run one token (real processes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.procs import free_port
from tests.conftest import needs_llama_cpp
from tests.support.server import ROOT, ServerProcess

SECRET = "sk-secret-9f3a"


def _run(args: list[str], tmp_path: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "search_app.cli", *args, "--host", "127.0.0.1",
               "--port", str(free_port()), "--embedding-model", ""]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={"PATH": "/usr/bin:/bin",
                                                "HF_HUB_OFFLINE": "1",
                                                "SEARCH_APP_DATA_DIR": str(tmp_path)})


def _assert_one_line_failure(result: subprocess.CompletedProcess, *reason: str) -> str:
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("search-app: error: the model could not start: "), last
    for part in reason:
        assert part in last, last
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    return last


@needs_llama_cpp
@pytest.mark.parametrize("command", ["serve-model", "serve"])
def test_missing_gguf_exits_with_the_reason(command: str, tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    result = _run([command, "--engine", "llamacpp", "--model", str(missing)], tmp_path)
    _assert_one_line_failure(result, "GGUF model not found", str(missing))


@needs_llama_cpp
@pytest.mark.parametrize("isolate", ["--isolate-engine", "--no-isolate-engine"])
def test_corrupt_gguf_exits_with_the_reason(isolate: str, tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 64)
    result = _run(["serve-model", "--engine", "llamacpp", isolate, "--model", str(bad)],
                  tmp_path)
    _assert_one_line_failure(result, "could not load", str(bad))


@needs_llama_cpp
@pytest.mark.parametrize("case", ["wrong_key", "unreachable"])
def test_bad_upstream_exits_with_the_reason(llama_server: ServerProcess, case: str,
                                            tmp_path: Path) -> None:
    url = f"{llama_server.url}/v1" if case == "wrong_key" else \
        f"http://127.0.0.1:{free_port()}/v1"
    result = _run(["serve-model", "--engine", "openai", "--upstream-url", url,
                   "--upstream-api-key", SECRET], tmp_path)
    _assert_one_line_failure(result, "API key" if case == "wrong_key" else "unreachable")
    assert SECRET not in result.stderr + result.stdout  # the key is never logged
