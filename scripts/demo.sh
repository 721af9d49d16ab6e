#!/usr/bin/env bash
# Set up if needed, then run the demo on the embedded default (tiny model, synthetic long videos).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/longvid demo "$@"
