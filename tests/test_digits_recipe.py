"""The shipped recipes end to end, through the README's main-job command under `-n 2`: every budget
and ledger check passes against the committed ledger, each artifact is built once across the
workers, and a warm rerun builds nothing and reports the same numbers."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from test_ci import readme_commands

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "recipes/digits_resnet20_fastnas.toml"


def readme_pytest_args() -> list[str]:
    main, _ = readme_commands()
    words = shlex.split(main.split("&&")[-1])
    assert words[0].endswith("pytest")
    return words[1:]


def run_main_job(tmp: Path, name: str) -> tuple[subprocess.CompletedProcess, dict]:
    report = tmp / f"{name}.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *readme_pytest_args(), "-n", "2", "-v", "-p", "no:cacheprovider",
         "--optcheck-cache-dir", str(tmp / "cache"), "--optcheck-report", str(report),
         "--optcheck-plot", str(tmp / f"{name}.png"), "--basetemp", str(tmp / f"{name}-tmp")],
        cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    return proc, json.loads(report.read_text())


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("main-job")
    cold = run_main_job(tmp, "cold")
    warm = run_main_job(tmp, "warm")
    return cold, warm


def digits(doc: dict) -> dict:
    return next(r for r in doc["recipes"] if r["path"] == RECIPE)


@pytest.mark.slow
def test_every_budget_and_ledger_check_passes(jobs):
    (proc, doc), _ = jobs
    for check in ("flops_below", "params_below", "accuracy_drop_under", "restore_roundtrip",
                  "ledger[baseline]", "ledger[pruned]", "ledger[finetuned]"):
        assert f"PASSED {RECIPE}::{check}" in proc.stdout  # xdist -v: "[gw0] [ 14%] PASSED <node id>"
    assert all(v["outcome"] == "passed" for v in digits(doc)["verdicts"].values())


@pytest.mark.slow
def test_two_workers_build_each_artifact_once(jobs):
    (_, doc), _ = jobs
    assert doc["meta"]["workers"] == 2
    for stage in ("baseline", "pruned", "finetuned"):
        events = [e["cache"] for e in digits(doc)["stages"][stage]["events"]]
        assert events.count("built") == 1, (stage, events)


@pytest.mark.slow
def test_a_warm_rerun_builds_nothing_and_reports_the_same_numbers(jobs):
    (_, cold), (_, warm) = jobs
    for stage in ("baseline", "pruned", "finetuned"):
        events = digits(warm)["stages"][stage]["events"]
        assert all(e["cache"].startswith("hit") for e in events), (stage, events)
        assert digits(warm)["stages"][stage]["metrics"] == digits(cold)["stages"][stage]["metrics"]


@pytest.mark.slow
def test_the_compressed_model_meets_the_recipes_numbers(jobs):
    (_, doc), _ = jobs
    stages = digits(doc)["stages"]
    base, final = stages["baseline"]["metrics"], stages["finetuned"]["metrics"]
    assert base["test_n"] == 360 and base["test_acc"] >= 0.95
    assert final["flops"] <= 0.5 * base["flops"]
    assert final["test_acc"] - base["test_acc"] >= -0.01
