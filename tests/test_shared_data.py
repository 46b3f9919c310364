"""The shared-data fixtures: a missing ../shared/data is reported loudly, and is an error under CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = '''
def test_needs_glue(glue_dir):
    assert glue_dir.exists()
'''


@pytest.mark.parametrize("ci", ["", "true"])
def test_missing_shared_data_is_loud_and_fails_under_ci(ci: str, tmp_path: Path) -> None:
    (tmp_path / "test_probe_shared.py").write_text(PROBE)
    (tmp_path / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    env = {**os.environ, "LAYERWISE_SHARED_DATA": str(tmp_path / "nowhere"), "CI": ci}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    out = proc.stdout + proc.stderr
    if ci:
        assert proc.returncode == 1 and "1 error" in out and "CI needs the shared data" in out, out
    else:
        assert proc.returncode == 0 and "1 skipped" in out, out
        assert "shared data missing" in out and f"not found: {tmp_path / 'nowhere' / 'glue'}" in out, out
