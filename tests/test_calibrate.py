"""Calibrated ledger tolerances: the variants, spread -> tolerance, writing in place, the fingerprint
in a failure message, and `--optcheck-calibrate` end to end on the tiny recipe."""

from __future__ import annotations

import tomllib

import pytest

from optcheck.ledger.calibrate import (ACC_FLOOR_IMAGES, MARGIN, REL_FLOOR, Variant, calibration_entries, derive, variants)
from optcheck.ledger.entries import judge, load_ledger
from optcheck.ledger.writing import write_updates
from optcheck.recipes.loader import parse_recipe

from conftest import tiny_recipe

FP_A = {"cpu": "Xeon A", "capability": "AVX512", "isa": "avx2+avx512f", "threads": 1, "torch": "2.15.0",
        "modelopt": "0.47.0"}
FP_B = {**FP_A, "cpu": "EPYC B", "capability": "AVX2", "isa": "avx2", "threads": 2}


def test_variants_start_with_the_plain_run_and_cover_kernels_threads_then_seeds():
    vs = variants(7, 8)
    assert vs[0] == Variant(7, "default", 1)  # what a plain run of the recipe builds here
    assert {(v.kernels, v.threads) for v in vs[:4]} == {("default", 1), ("default", 2), ("avx2", 1), ("avx2", 2)}
    assert [v.seed for v in vs] == [7] * 4 + [8] * 4
    assert variants(0, 3, threads=2)[:2] == [Variant(0, "default", 2), Variant(0, "default", 1)]
    assert {v.kernels for v in variants(0, 3, device="cuda")} == {"default"}
    assert Variant(0, "avx2").env({"ATEN_CPU_CAPABILITY": "avx512", "X": "1"}) == {
        "X": "1", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert "ATEN_CPU_CAPABILITY" not in Variant(0).env({"ATEN_CPU_CAPABILITY": "avx512"})
    with pytest.raises(ValueError, match="at least 1"):
        variants(0, 0)


def test_spread_becomes_a_tolerance_with_margin_and_floor():
    # accuracy: absolute; centred on the observed range, margin x half its width, at least two images
    d = derive("test_acc", [0.95, 0.94, 0.97], exact=False, test_n=360)
    assert d.value == pytest.approx(0.955) and d.observed == (0.94, 0.97)
    assert d.tolerance == pytest.approx(MARGIN * 0.015, rel=1e-3)
    floor = derive("test_acc", [0.9, 0.9], exact=False, test_n=360).tolerance
    assert ACC_FLOOR_IMAGES / 360 <= floor == pytest.approx(ACC_FLOOR_IMAGES / 360, rel=1e-3)
    # FLOPs of a searched stage: relative to the reference (the middle of the range, rounded)
    d = derive("flops", [100.0, 104.0, 96.0], exact=False, test_n=360)
    assert d.value == 100 and d.tolerance == pytest.approx(MARGIN * 0.04, rel=1e-3)
    # every observed value passes, with room to spare on both sides
    assert all(abs(v - d.value) <= d.tolerance * d.value / MARGIN + 1e-9 for v in (100.0, 104.0, 96.0))
    assert derive("flops", [100.0, 100.0], exact=False, test_n=360).tolerance == REL_FLOOR
    # the baseline's architecture: exact whatever was seen
    assert derive("flops", [100.0, 100.0], exact=True, test_n=360).tolerance == 0


def _runs(pruned_flops, acc=(0.98, 0.97)):
    return [{"variant": {"seed": 0, "kernels": k, "threads": 1}, "fingerprint": fp, "platform": "cpu",
             "stages": {"baseline": {"test_acc": 0.99, "test_n": 360, "flops": 1000, "params": 100, "ckpt_bytes": 5000},
                        "pruned": {"test_acc": a, "test_n": 360, "flops": f, "params": f // 10, "ckpt_bytes": 2000}}}
            for k, fp, f, a in zip(("default", "avx2"), (FP_A, FP_B), pruned_flops, acc)]


def test_calibration_entries_centre_on_the_range_and_flag_a_moving_architecture():
    cal = calibration_entries("tiny", "cpu", _runs([500, 540]), ["baseline", "pruned"],
                              lambda s: s == "baseline", when="2026-11-21")
    base, pruned = cal.entries["baseline"], cal.entries["pruned"]
    assert base["tolerance"]["flops"] == 0 and base["tolerance"]["params"] == 0
    assert pruned["flops"] == 520 and pruned["observed"]["flops"] == [500, 540]
    assert pruned["tolerance"]["flops"] == pytest.approx(MARGIN * 20 / 520, rel=1e-3)
    assert pruned["tolerance"]["test_acc"] == pytest.approx(MARGIN * 0.005, rel=1e-3)
    assert pruned["written_by"] == FP_A and "2 runs on 2026-11-21" in pruned["calibration"]
    assert "kernels avx2/default" in pruned["calibration"] and cal.problems == []
    moving = _runs([500, 540])
    moving[1]["stages"]["baseline"]["flops"] = 1001
    cal = calibration_entries("tiny", "cpu", moving, ["baseline"], lambda s: s == "baseline")
    assert any("should be exact" in p for p in cal.problems)


def test_a_teams_metrics_are_calibrated_like_accuracy_absolute_with_a_floor():
    """``[[metrics]]`` values (the stages' ``extra``) get entries, absolute tolerances (margin x half the
    range, at least 1% of the value and 1e-4) and observed ranges; a metric some runs lack is left out."""
    runs = _runs([500, 500])
    for run, ece, brier in zip(runs, (0.060, 0.064), (0.02, 0.02)):
        run["stages"]["pruned"]["extra"] = {"ece": ece, "brier": brier}
    runs[0]["stages"]["pruned"]["extra"]["only_once"] = 1.0
    cal = calibration_entries("tiny", "cpu", runs, ["baseline", "pruned"], lambda s: s == "baseline")
    pruned = cal.entries["pruned"]
    assert pruned["ece"] == pytest.approx(0.062) and pruned["observed"]["ece"] == [0.06, 0.064]
    assert pruned["tolerance"]["ece"] == pytest.approx(MARGIN * 0.002, rel=1e-3)
    assert pruned["tolerance"]["brier"] == pytest.approx(0.01 * 0.02, rel=1e-3)  # no spread: the 1% floor
    assert "only_once" not in pruned and "ece" not in cal.entries["baseline"] and cal.problems == []
    # the floors: 1% of the value, and never below 1e-4
    assert derive("ece", [0.5, 0.5], exact=False, test_n=360).tolerance == pytest.approx(0.005)
    assert derive("tiny", [1e-6, 1e-6], exact=False, test_n=360).tolerance == pytest.approx(1e-4)


LEDGER = """\
# our team's ledger: keep this comment
[tiny.cpu.baseline]
test_acc = 0.9  # and this one
flops = 1000
params = 100
ckpt_bytes = 5000
accuracy_tolerance = 0.01
bytes_tolerance = 0.05

[tiny.cpu.pruned]
test_acc = 0.8
flops = 480
params = 48
ckpt_bytes = 2000
known_failure = "GH-7: tracked"
"""


def test_calibration_is_written_in_place_keeping_comments_and_known_failures(tmp_path):
    path = tmp_path / "optcheck-ledger.toml"
    path.write_text(LEDGER)
    cal = calibration_entries("tiny", "cpu", _runs([500, 540]), ["baseline", "pruned"], lambda s: s == "baseline")
    write_updates(path, {("tiny", "cpu", s): e for s, e in cal.entries.items()})
    text = path.read_text()
    assert "# our team's ledger: keep this comment" in text and "# and this one" in text
    assert "accuracy_tolerance" not in text and "bytes_tolerance" not in text  # replaced by the table
    assert 'known_failure = "GH-7: tracked"' in text
    assert "tolerance = {" in text and "observed = {" in text and "written_by = {" in text
    ledger = load_ledger(path, {"tiny"})  # what was written validates
    entry = ledger.entry("tiny", "cpu", "pruned")
    assert entry["flops"] == 520 and entry["observed"]["flops"] == [500, 540]
    assert tomllib.loads(text)["tiny"]["cpu"]["baseline"]["test_acc"] == 0.99
    write_updates(path, {("tiny", "cpu", s): e for s, e in cal.entries.items()})
    assert path.read_text() == text  # idempotent


def test_a_ledger_failure_names_the_spread_and_both_numerics_fingerprints(tmp_path):
    path = tmp_path / "optcheck-ledger.toml"
    cal = calibration_entries("tiny", "cpu", _runs([500, 540]), ["pruned"], lambda s: False)
    write_updates(path, {("tiny", "cpu", "pruned"): cal.entries["pruned"]})
    recipe = parse_recipe(tomllib.loads(tiny_recipe()), tmp_path / "tiny.toml")
    ledger = load_ledger(path, {"tiny"})
    ok = judge(ledger, recipe, "cpu", "pruned", {"test_acc": 0.975, "flops": 530, "params": 53, "ckpt_bytes": 2000},
               None, fingerprint=FP_B)
    assert ok.failure is None  # inside the calibrated spread, on another CPU: no false alarm
    bad = judge(ledger, recipe, "cpu", "pruned", {"test_acc": 0.975, "flops": 350, "params": 35, "ckpt_bytes": 2000},
                None, fingerprint=FP_B)
    msg = bad.failure
    assert "flops: 350 now, 520 in the ledger" in msg and "calibration saw 500..540" in msg
    assert "calibrated: 2 runs on" in msg
    assert "ledger written on: Xeon A | AVX512 (avx2+avx512f) | 1 thread" in msg
    assert "this run:          EPYC B | AVX2 (avx2) | 2 threads" in msg
    assert "numerics differ in: cpu, capability, isa, threads" in msg
    same = judge(ledger, recipe, "cpu", "pruned", {"test_acc": 0.975, "flops": 350, "params": 35, "ckpt_bytes": 2000},
                 None, fingerprint=FP_A).failure
    assert "same numerics as the run that wrote the ledger" in same and "numerics differ" not in same


TEAM_NET = """
from optcheck.build.models import SmallCNN


def make_net(num_classes=4):
    return SmallCNN(num_classes)
"""


def test_calibrate_option_measures_and_writes_the_ledger_then_checks_pass(pytester):
    # the team's model factory imports only from pytest's pythonpath (src/), in the calibration
    # subprocesses too
    (pytester.path / "src").mkdir()
    (pytester.path / "src" / "tinyteam.py").write_text(TEAM_NET)
    pytester.makefile(".toml", tiny=tiny_recipe().replace('name = "small_cnn"', 'name = "tinyteam:make_net"'))
    # a recipe whose data is not on this machine: one variant tells, the others are not run
    pytester.makefile(".toml", cifar=tiny_recipe().replace('dataset = "synthetic"', 'dataset = "cifar10"\nroot = "nowhere"')
                      .replace("options = { samples = 240, classes = 4, image_size = 16 }\n", ""))
    pytester.makeini("[pytest]\noptcheck_recipes = .\npythonpath = src\n")
    result = pytester.runpytest_subprocess("--optcheck", "--optcheck-calibrate", "2", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*calibrating cifar.toml: seed 0, default kernels, 1 thread skipped (CIFAR-10 not found*",
                                 "*calibration of cifar.toml skipped: CIFAR-10 not found*",
                                 "*calibrating tiny.toml: seed 0, default kernels, 1 thread done*",
                                 "*calibrating tiny.toml: seed 0, default kernels, 2 threads done*",
                                 "*calibration of tiny.toml written to optcheck-ledger.toml*"])
    assert "calibrating cifar.toml: seed 0, default kernels, 2 threads" not in result.stdout.str()
    assert result.ret == 0, result.stdout.str()
    ledger = tomllib.loads((pytester.path / "optcheck-ledger.toml").read_text())["tiny"]["cpu"]
    assert set(ledger) == {"baseline", "pruned", "finetuned"}
    assert ledger["baseline"]["tolerance"]["flops"] == 0 and ledger["pruned"]["tolerance"]["flops"] >= REL_FLOOR
    assert "2 runs on" in ledger["pruned"]["calibration"] and "threads 1/2" in ledger["pruned"]["calibration"]
    # the baseline floor + 3 budgets + 3 ledger checks against what was just written; cifar's skipped
    assert result.parseoutcomes()["passed"] == 7 and result.parseoutcomes()["skipped"] >= 4
