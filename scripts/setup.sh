#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with CPU torch first, then longvid (editable).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.longvid-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  # Pin the CPU wheel unless a torch is already there (a GPU image brings its own).
  .venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q "torch==${LONGVID_TORCH_VERSION:-2.13.0}"
  .venv/bin/pip install -q -e ".[dev]"
  touch "$stamp"
fi
