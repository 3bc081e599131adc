"""Settings come from one place: defaults < environment < CLI flags; bad values fail
with one clear line and a non-zero exit; --help documents every setting."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from search_app.cli import _load_settings, cli
from search_app.config import Settings


def test_environment_then_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEARCH_APP_PORT", "9001")
    monkeypatch.setenv("SEARCH_APP_API_KEYS", "sk-aaa1,sk-bbb2")
    monkeypatch.setenv("SEARCH_APP_SPECULATIVE_CONFIG", '{"method": "ngram"}')
    monkeypatch.setenv("SEARCH_APP_EMBEDDING_MODEL", "")
    s = Settings()
    assert s.port == 9001
    assert [k.get_secret_value() for k in s.api_keys] == ["sk-aaa1", "sk-bbb2"]
    assert "sk-aaa1" not in repr(s)  # secrets do not print
    assert s.speculative_config == {"method": "ngram"}
    assert s.embedding_model is None
    s = _load_settings({"port": "9002", "api_keys": ("c",), "enforce_eager": None})
    assert s.port == 9002 and [k.get_secret_value() for k in s.api_keys] == ["c"]


def test_options_reach_the_engines() -> None:
    s = Settings(engine="llamacpp", model="/models/x.gguf", context_length=1024, parallel=2,
                 prompt_lookup_tokens=4, served_model_name="m")
    opts = s.server_options()
    assert opts.engines.llamacpp.model_path is not None
    assert str(opts.engines.llamacpp.model_path) == "/models/x.gguf"
    assert (opts.engines.llamacpp.context_length, opts.engines.llamacpp.parallel) == (1024, 2)
    assert opts.engines.llamacpp.prompt_lookup_tokens == 4
    v = Settings(engine="vllm", model="org/model", dtype="bfloat16",
                 speculative_config={"method": "ngram", "num_speculative_tokens": 3})
    assert v.engine_options().vllm is not None
    assert v.engine_options().vllm.speculative_config["num_speculative_tokens"] == 3
    assert Settings(upstream_url="http://h/v1").engine_options().upstream is not None


def test_help_lists_every_setting() -> None:
    text = CliRunner().invoke(cli, ["serve", "--help"], terminal_width=200).output
    for name in Settings.model_fields:
        assert f"SEARCH_APP_{name.upper()}" in text, name


@pytest.mark.parametrize("args", [["--port", "70000"], ["--engine", "tensorrt"],
                                  ["--speculative-config", "{not json"]])
def test_bad_flags_fail_in_one_line(args: list[str]) -> None:
    run = subprocess.run([sys.executable, "-m", "search_app.cli", "serve-model", *args],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "Error: invalid setting" in run.stderr or "Error: invalid JSON" in run.stderr
    assert "Traceback" not in run.stderr


def test_ask_cannot_reach_the_app_is_one_line_and_exit_1() -> None:
    import subprocess
    import sys

    from bench.procs import free_port

    result = subprocess.run([sys.executable, "-m", "search_app.cli", "ask", "hello",
                             "--base-url", f"http://127.0.0.1:{free_port()}"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot reach the app at http://127.0.0.1:")
    assert result.stderr.count("\n") == 1
