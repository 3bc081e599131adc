"""The AMX crash guard (llama.cpp issue 20824): build flags, the installed build, and the
engine's run-time decision. These run on any x86 machine, AMX or not: the build check
compiles for a Sapphire Rapids target, and the engine check loads the real model with
the guard acting as it would on an AMX CPU with an AMX build."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from serving.engines.cpu_features import NO_AMX_FLAGS, cpu_flags, parse_system_info, report
from tests.conftest import needs_llama_cpp
from tests.support.server import ROOT

SYSTEM_INFO = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | "
               "AVX512 = 1 | AVX512_VNNI = 1 | AMX_INT8 = 1 | REPACK = 1 | OPENMP = 1 | ")


def test_system_info_is_parsed() -> None:
    info = parse_system_info(SYSTEM_INFO)
    assert info["AVX2"] == "1" and info["AMX_INT8"] == "1" and info["REPACK"] == "1"
    assert parse_system_info("") == {}


@pytest.mark.parametrize(("build_amx", "cpu_amx", "allow", "extra_bufts", "rebuild"), [
    (False, False, False, True, False),   # AMD, or Intel without AMX
    (False, True, False, True, False),    # AMX CPU, our build: safe, fast paths on
    (True, True, False, False, True),     # AMX CPU, AMX build: guard acts, rebuild asked
    (True, True, True, True, False),      # the explicit opt-in
    (True, False, False, True, True),     # AMX build on a CPU without it: unused
])
def test_guard_decision(build_amx: bool, cpu_amx: bool, allow: bool, extra_bufts: bool,
                        rebuild: bool) -> None:
    rep = report(allow, flags=frozenset({"avx2", *(["amx_int8"] if cpu_amx else [])}),
                 build={"AVX2": "1", "REPACK": "1", **({"AMX_INT8": "1"} if build_amx else {})})
    assert rep.use_extra_bufts is extra_bufts
    assert rep.needs_rebuild is rebuild
    assert "AVX2" in rep.summary() and "REPACK" in rep.summary()


def test_cpu_flags_read_from_cpuinfo(tmp_path: Path) -> None:
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_tile amx_int8\n\n"
                    "processor\t: 1\nflags\t\t: fpu avx2 amx_tile amx_int8\n")
    assert {"avx2", "amx_int8"} <= cpu_flags(fake)
    assert cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
def test_setup_flags_remove_amx_but_keep_avx512_on_an_amx_target() -> None:
    """What scripts/setup.sh adds turns AMX off even where -march=native means AMX."""
    flags = subprocess.run([sys.executable, "serving/engines/cpu_features.py",
                            "--cmake-flags"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    assert flags == NO_AMX_FLAGS.split()
    assert "cpu_features.py --cmake-flags" in (ROOT / "scripts/setup.sh").read_text()

    def macros(*extra: str) -> set[str]:
        out = subprocess.run(["gcc", *extra, "-march=sapphirerapids", "-dM", "-E", "-"],
                             input="", capture_output=True, text=True, check=True).stdout
        return set(re.findall(r"#define (__\w+__) 1", out))

    assert "__AMX_INT8__" in macros()  # the target really has AMX...
    guarded = macros(*flags)
    assert not {"__AMX_INT8__", "__AMX_TILE__", "__AMX_BF16__"} & guarded  # ...not after
    assert {"__AVX512F__", "__AVX512VNNI__", "__AVX2__"} <= guarded      # fast paths stay


@needs_llama_cpp
def test_installed_build_has_no_amx_and_keeps_the_repack_path() -> None:
    from serving.engines.cpu_features import llama_build_features

    build = llama_build_features()
    assert build.get("AMX_INT8") != "1", "llama-cpp-python was built with AMX: re-run setup"
    assert build.get("REPACK") == "1"
    check = subprocess.run([sys.executable, "-m", "serving.engines.cpu_features",
                            "--check-build"], cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.startswith("llama.cpp CPU features:")


@needs_llama_cpp
async def test_engine_turns_extra_buffers_off_where_amx_would_crash(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The run-time guard, as on an AMX CPU with an AMX build: the model still loads
    and answers (without llama.cpp's extra buffer types) and the log says why."""
    from serving.engines import GenerationRequest, LlamaCppOptions, SamplingOptions, llamacpp

    seen: list[bool] = []
    real_load = llamacpp.llama_cpp.llama_model_load_from_file

    def load(path: bytes, params: object) -> object:
        seen.append(bool(params.use_extra_bufts))  # type: ignore[attr-defined]
        return real_load(path, params)

    monkeypatch.setattr(llamacpp, "cpu_report", lambda allow: report(
        allow, flags=frozenset({"amx_int8"}), build={"AMX_INT8": "1", "AVX2": "1"}))
    monkeypatch.setattr(llamacpp.llama_cpp, "llama_model_load_from_file", load)
    with caplog.at_level(logging.WARNING, logger="serving.engines.llamacpp"):
        engine = await llamacpp.LlamaCppEngine.create(LlamaCppOptions(context_length=512))
    try:
        assert seen == [False]
        assert "built in but OFF" in caplog.text
        request = GenerationRequest("amx-guard", SamplingOptions(max_tokens=4,
                                                                 ignore_eos=True),
                                    prompt="The Eiffel Tower is in")
        chunks = [c async for c in engine.generate(request)]
        assert chunks[-1].completion_tokens == 4
    finally:
        await engine.aclose()
    # And with the opt-in, or with our own build, the extra buffer types stay on.
    monkeypatch.setattr(llamacpp, "cpu_report", lambda allow: report(
        allow, flags=frozenset({"amx_int8"}), build={"AVX2": "1"}))
    engine = await llamacpp.LlamaCppEngine.create(LlamaCppOptions(context_length=512))
    await engine.aclose()
    assert seen == [False, True]
