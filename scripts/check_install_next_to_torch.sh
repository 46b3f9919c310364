#!/usr/bin/env bash
# CI: `pip install .` into a virtualenv that already has torch (the tested version) keeps that torch.
# Offline: pip reads the machine's local index and wheel folder. 102-108 s here (2026-11-29).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
venv=$(mktemp -d)/venv
trap 'rm -rf "$(dirname "$venv")"' EXIT
"$PY" -m venv "$venv"
torch_pin=$(grep -i '^torch==' constraints.txt)
"$venv/bin/pip" install -q "$torch_pin"
record="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.distribution("torch")._path)')/RECORD"
before=$(stat -c '%i %Y' "$record")
"$venv/bin/pip" install -q --no-build-isolation .
after=$(stat -c '%i %Y' "$record" 2>/dev/null || echo gone)
if [ "$before" != "$after" ]; then
  echo "check_install: pip replaced the torch that was installed first ($torch_pin)" >&2
  exit 1
fi
"$venv/bin/python" -c "import layerwise, layerwise.adapters.export; print('layerwise', layerwise.__version__, 'installed next to', '$torch_pin')"
