#!/usr/bin/env bash
# Install (idempotent) and start the app on its embedded offline default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/search-app serve "$@"
