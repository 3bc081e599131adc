"""Which CPU features llama.cpp uses here, and the guard against its AMX crash.

Why this exists: on Intel Xeons with AMX (Sapphire Rapids and later), llama.cpp's AMX
"extra buffer type" segfaults in ``ggml_backend_amx_mul_mat`` on the first decode
(llama.cpp issue 20824, no upstream fix). The code is compiled in only when the build
targets AMX (``-march=native`` on such a CPU defines ``__AMX_INT8__``), so the fix has
two layers:

1. **Build** (``scripts/setup.sh``): compile with :data:`NO_AMX_FLAGS` appended to the
   C/C++ flags. GCC and Clang let an explicit ``-mno-*`` win over what ``-march=native``
   implies, so everything else the CPU has (AVX2, AVX-512, VNNI, the repacked Q4 fast
   path) stays on; only the AMX buffer type is left out.
2. **Run time** (the llama.cpp engine): if the library that is loaded *was* built with
   AMX (an older install, a hand-made build) and the CPU has AMX, the engine turns off
   llama.cpp's extra buffer types (``use_extra_bufts = False``), which removes AMX and,
   unavoidably, the CPU repack fast path too, and says how to rebuild. Setting
   ``SEARCH_APP_LLAMA_AMX=true`` opts back in, for CPU/llama.cpp combinations where AMX
   works (set-up then builds with AMX as well).

``python -m serving.engines.cpu_features`` prints the one-line summary that set-up and
``serve`` log; ``--check-build`` exits 3 when the installed build needs rebuilding.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["NO_AMX_FLAGS", "CpuReport", "cpu_flags", "llama_build_features", "report"]

# Appended to CMAKE_C_FLAGS / CMAKE_CXX_FLAGS by scripts/setup.sh (it reads them from
# here through ``--cmake-flags``, so there is one definition).
NO_AMX_FLAGS = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
# The build features worth naming in a log line, in this order.
_SHOWN = ("AVX", "AVX2", "F16C", "FMA", "AVX512", "AVX512_VBMI", "AVX512_VNNI",
          "AVX512_BF16", "AVX_VNNI", "AMX_INT8", "REPACK", "OPENMP")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The kernel's flags of the first CPU (empty where /proc/cpuinfo is missing)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return frozenset()
    match = re.search(r"^flags\s*:\s*(.*)$", text, re.MULTILINE)
    return frozenset(match.group(1).split()) if match else frozenset()


def parse_system_info(text: str) -> dict[str, str]:
    """``llama_print_system_info()``'s ``CPU : SSE3 = 1 | AVX = 1 | ...`` as a dict."""
    features: dict[str, str] = {}
    for part in text.replace("\n", "|").split("|"):
        if "=" in part:
            key, _, value = part.partition("=")
            key = key.split(":")[-1].strip()
            if key:
                features[key] = value.strip()
    return features


@functools.lru_cache(maxsize=1)
def llama_build_features() -> dict[str, str]:
    """What the installed llama.cpp library was compiled with (imports llama_cpp)."""
    import llama_cpp

    raw = llama_cpp.llama_print_system_info()
    return parse_system_info(raw.decode("utf-8", "replace") if isinstance(raw, bytes)
                             else str(raw))


@dataclass(frozen=True)
class CpuReport:
    """What the CPU has, what llama.cpp was built with, and what the engine will do."""

    cpu_model: str
    cpu_amx: bool
    build_amx: bool
    allow_amx: bool
    build_features: tuple[str, ...]

    @property
    def use_extra_bufts(self) -> bool:
        """False only where the crash can happen: AMX built in, AMX CPU, no opt-in."""
        return not (self.build_amx and self.cpu_amx and not self.allow_amx)

    @property
    def needs_rebuild(self) -> bool:
        """The installed build has AMX compiled in although nobody asked for it."""
        return self.build_amx and not self.allow_amx

    def summary(self) -> str:
        if self.build_amx and self.cpu_amx:
            amx = ("AMX: on (SEARCH_APP_LLAMA_AMX=true)" if self.allow_amx else
                   "AMX: built in but OFF (llama.cpp AMX crash guard; extra buffer types "
                   "and the repack fast path off too: re-run scripts/setup.sh to rebuild "
                   "without AMX)")
        elif self.cpu_amx:
            amx = "AMX: CPU has it, not built in (llama.cpp AMX crash guard)"
        elif self.build_amx:
            amx = "AMX: built in, not on this CPU (unused)"
        else:
            amx = "AMX: not on this CPU"
        features = " ".join(self.build_features) or "none reported"
        return f"llama.cpp CPU features: {features}; {amx}; CPU: {self.cpu_model}"


def report(allow_amx: bool, *, flags: frozenset[str] | None = None,
           build: dict[str, str] | None = None) -> CpuReport:
    """The report for this machine (``flags``/``build`` override what is read)."""
    flags = cpu_flags() if flags is None else flags
    build = llama_build_features() if build is None else build
    shown = tuple(name for name in _SHOWN if build.get(name) == "1")
    return CpuReport(cpu_model=_cpu_model(), cpu_amx="amx_int8" in flags,
                     build_amx=build.get("AMX_INT8") == "1", allow_amx=allow_amx,
                     build_features=shown)


def _cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return "unknown"
    match = re.search(r"^model name\s*:\s*(.*)$", text, re.MULTILINE)
    return match.group(1).strip() if match else "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.engines.cpu_features",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--allow-amx", action="store_true",
                        help="AMX is wanted (SEARCH_APP_LLAMA_AMX=true).")
    parser.add_argument("--check-build", action="store_true",
                        help="Exit 3 when the installed build has AMX but AMX is not wanted.")
    parser.add_argument("--cmake-flags", action="store_true",
                        help="Print the C/C++ flags set-up adds (nothing when AMX is wanted).")
    args = parser.parse_args(argv)
    if args.cmake_flags:
        print("" if args.allow_amx else NO_AMX_FLAGS)
        return 0
    try:
        rep = report(args.allow_amx)
    except ImportError:
        print("llama-cpp-python is not installed", file=sys.stderr)
        return 2
    print(rep.summary())
    return 3 if args.check_build and rep.needs_rebuild else 0


if __name__ == "__main__":
    sys.exit(main())
