"""The shipped example team project (examples/acme/) runs as its README says: from its committed
checkpoint (no baseline training), every hook of a team's own pipeline, its recipe's budgets and ledger
and the team's own tests all pass, in a fresh cache."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ACME = Path(__file__).resolve().parents[1] / "examples" / "acme"


def test_the_committed_checkpoint_is_small_and_is_the_one_its_sha256_file_names():
    checkpoint = ACME / "checkpoints" / "digitnet.safetensors"
    assert checkpoint.stat().st_size <= 2 * 1024 * 1024
    digest, name = (ACME / "checkpoints" / "digitnet.sha256").read_text().split()
    assert name == checkpoint.name and hashlib.sha256(checkpoint.read_bytes()).hexdigest() == digest


@pytest.mark.slow
def test_the_example_project_passes_cold_from_its_checkpoint(tmp_path):
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--optcheck", "-p", "no:cacheprovider", "-rA",
         "--optcheck-cache-dir", str(tmp_path / "cache"), "--optcheck-report", str(report)],
        cwd=ACME, capture_output=True, text=True, timeout=900, env={**os.environ})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert "baseline: loaded from ../checkpoints/digitnet.safetensors (sha256 " in out
    for test in ("test_the_shipped_model_is_int8_and_calibrated_as_well_as_the_baseline",
                 "test_the_pruned_subnet_restores_from_its_checkpoint",
                 "test_our_fastnas_search_on_our_model_reaches_its_target"):
        assert f"PASSED tests/test_acme.py::{test}" in out, out[-3000:]
    [recipe] = json.loads(report.read_text())["recipes"]
    assert recipe["stages"]["baseline"]["events"][0]["cache"] == "built"
    assert recipe["stages"]["baseline"]["loaded_from"] == "../checkpoints/digitnet.safetensors"
    checks = recipe["verdicts"]
    assert len(checks) >= 17 and all(v["outcome"] == "passed" for v in checks.values()), checks
    for name in ("metric_drop_under[macro_f1]", "metric_drop_under[ece]", "metric_drop_under[brier]",
                 "ledger[quantized]"):
        assert name in checks
