"""Shared fixtures: real servers on 127.0.0.1, started once per test session."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import ServerProcess, run_server

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

API_KEY = "test-key-123"


def _needs(module: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(importlib.util.find_spec(module) is None,
                              reason=f"{module} is not installed")


needs_llama_cpp = _needs("llama_cpp")
needs_vllm = _needs("vllm")


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    path = Path(os.environ.get("SEARCH_APP_TEST_ARTIFACTS", "artifacts/tests"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def llama_server(artifacts_dir: Path) -> Iterator[ServerProcess]:
    """The embedded default: llama.cpp with SmolLM2 and MiniLM embeddings, with an API key."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed")
    with run_server(["serve-model", "--engine", "llamacpp", "--context-length", "2048",
                     "--parallel", "4", "--max-queue", "32", "--api-key", API_KEY],
                    log_path=artifacts_dir / "llama_server.log") as server:
        yield server
