#!/usr/bin/env bash
# One NVIDIA GPU, under 10 minutes: the serving benchmark next to `vllm serve`, then one
# question end to end through the vLLM engine, CUDA embeddings and the FAISS GPU index.
# Prints the figures and writes bench/results/gpu_check_<card>.md.
#
#   bash bench/gpu_check.sh                 # the tiny Llama built locally (no download)
#   GPU_CHECK_MODEL=/models/Qwen2.5-0.5B-Instruct bash bench/gpu_check.sh
#
# Needs the GPU extra (pip install -e ".[gpu,dev]", or the gpu image) and nvidia-smi.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

card=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)
slug=$(echo "$card" | cut -d, -f1 | tr -cs 'A-Za-z0-9' '_' | sed 's/_$//')
echo "GPU: $card"
"$PY" - <<'PY'
import torch, faiss, vllm
assert torch.cuda.is_available(), "torch sees no CUDA device"
print("torch", torch.__version__, "cuda", torch.version.cuda, "| vllm", vllm.__version__,
      "| faiss GPUs:", faiss.get_num_gpus())
assert faiss.get_num_gpus() >= 1, "faiss has no GPU (install faiss-gpu-cu12)"
import numpy as np
from retrieval.ranking import DenseIndex, gpu_resources
index = DenseIndex(np.eye(4, dtype="float32"), gpu=gpu_resources())
assert index.on_gpu, "the ranker's FAISS index did not go to the GPU"
print("ranker FAISS index on the GPU: ok")
PY

model=${GPU_CHECK_MODEL:-$("$PY" -c "from tests.support.tiny_llama import tiny_llama_path; print(tiny_llama_path())")}
echo "model: $model"

# 1. Serving: ours (vLLM engine) vs `vllm serve`, same model and prompts (~4 min).
timeout 420 "$PY" -m bench.serving_bench vllm --model "$model" --dtype auto \
    --requests 32 --max-tokens 64 --concurrency 1 8 32

# 2. One answer end to end on the GPU: vLLM engine, MiniLM on CUDA, FAISS GPU index.
timeout 240 "$PY" - "$model" "$slug" <<'PY'
import json, sys, tempfile, time
from pathlib import Path
import httpx
from bench.procs import free_port, serve_process

model, slug = sys.argv[1], sys.argv[2]
port = free_port()
with tempfile.TemporaryDirectory() as tmp, serve_process(
        [sys.executable, "-m", "search_app.cli", "serve", "--host", "127.0.0.1",
         "--port", str(port), "--engine", "vllm", "--model", model, "--device", "cuda",
         "--gpu-memory-utilization", "0.6", "--store-path", f"{tmp}/store.sqlite"],
        port=port, log_path=Path("bench/results/logs/gpu_check_app.log"),
        ready_timeout=200) as app:
    for _ in range(400):
        if httpx.get(f"{app.url}/api/info").json()["state"] == "ready":
            break
        time.sleep(0.25)
    log = app.log()  # read after ready: model and device lines are in it
    started = time.perf_counter()
    r = httpx.post(f"{app.url}/api/search", timeout=120,
                   json={"query": "Who designed the Eiffel Tower?", "related": False})
    total = (time.perf_counter() - started) * 1000
    events = [b for b in r.text.split("\n\n") if b.strip()]
    names = [b.split("\n")[0].removeprefix("event: ") for b in events]
    timings = next(json.loads(b.split("data: ", 1)[1]) for b in events
                   if b.startswith("event: timings"))
    ok = r.status_code == 200 and names[-1] == "done"
    cuda = "cuda" in log.lower()  # the embedding model's device, as the app logs it
    line = (f"| {slug} | {'ok' if ok else 'FAILED: ' + names[-1]} | {timings['rank_ms']:.0f} "
            f"| {timings['ttft_ms']:.0f} | {total:.0f} | {cuda} |")
    table = ("| card | end-to-end answer | rank ms | TTFT ms | total ms | cuda in app log |\n"
             "|---|---|---|---|---|---|\n" + line + "\n")
    print(table)
    Path(f"bench/results/gpu_check_{slug}.md").write_text(table)
    sys.exit(0 if ok else 1)
PY
echo "serving figures: bench/results/serving_vllm.md; end to end: bench/results/gpu_check_${slug}.md"
