"""The shipped digits recipe end to end, through the same command the README gives for the main
job: FastNAS must remove at least half the FLOPs and fine-tuning must bring test accuracy back to
within 1 percentage point of the baseline."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "recipes/digits_resnet20_fastnas.toml"


@pytest.fixture(scope="module")
def main_job(tmp_path_factory):
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--optcheck", RECIPE, "-p", "no:cacheprovider",
         "--basetemp", str(tmp_path_factory.mktemp("main-job")), "-v"],
        cwd=ROOT, capture_output=True, text=True, timeout=1200)
    return proc


def table_row(output: str, stage: str) -> list[str]:
    line = next(l for l in output.splitlines() if l.startswith(stage + " "))
    return re.split(r"\s{2,}", line.strip())


@pytest.mark.slow
def test_every_budget_passes(main_job):
    assert main_job.returncode == 0, main_job.stdout[-4000:] + main_job.stderr[-2000:]
    for budget in ("flops_below", "params_below", "accuracy_drop_under", "restore_roundtrip"):
        assert f"{RECIPE}::{budget} PASSED" in main_job.stdout


@pytest.mark.slow
def test_results_table_meets_the_recipes_numbers(main_job):
    out = main_job.stdout
    assert "optcheck results: digits_resnet20_fastnas" in out
    stage, test_acc, *_ = table_row(out, "baseline")
    assert test_acc.endswith("(n=360)") and float(test_acc.split("%")[0]) >= 95.0
    stage, test_acc, delta, val_acc, flops, flops_pct, *_ = table_row(out, "fine-tuned")
    assert float(flops_pct.rstrip("%")) <= 50.0
    assert float(delta.split()[0]) >= -1.0
