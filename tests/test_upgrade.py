"""The upgrade A/B (``optcheck.upgrade``): candidate environments, the comparison's rules, and one whole
run in which a candidate package (a wheel built here, no network) flips a verdict and breaks the
restore of the older side's checkpoints, both named, with exit status 1."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from optcheck.upgrade import diff
from optcheck.upgrade.environment import CandidateError, build, read_requirements, requirement_name


def make_wheel(folder: Path, name: str, version: str, files: dict[str, str]) -> Path:
    """A minimal pure-Python wheel: the files, METADATA, WHEEL and RECORD."""
    dist = f"{name}-{version}.dist-info"
    body = {**files, f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
            f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: optcheck-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for path, text in body.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in body.items():
            z.writestr(path, text)
        z.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")
    return wheel


PLANT = "def width():\n    return {width}\n\n\ndef quality():\n    return {quality}\n"


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    """abplant 1.0 and 2.0: 2.0 widens the team's model (its old checkpoints no longer fit) and lowers
    the team's quality score (a metric budget flips)."""
    folder = tmp_path_factory.mktemp("wheels")
    make_wheel(folder, "abplant", "1.0", {"abplant/__init__.py": PLANT.format(width=8, quality=0.9)})
    make_wheel(folder, "abplant", "2.0", {"abplant/__init__.py": PLANT.format(width=12, quality=0.4)})
    return folder


# -- environments -----------------------------------------------------------------------------------------

def test_a_requirement_that_cannot_be_installed_names_it_and_pips_reason(wheels, tmp_path):
    with pytest.raises(CandidateError) as err:
        build(["abplant==9.9"], tmp_path, pip_args=("--no-index", f"--find-links={wheels}"), log=lambda m: None)
    message = str(err.value)
    assert "the candidate abplant==9.9 cannot be installed beside today's environment" in message
    assert "(from versions: 1.0, 2.0)" in message and "No matching distribution found for abplant==9.9" in message


def test_a_candidate_shadows_todays_package_and_leaves_today_alone(wheels, tmp_path):
    env = build(["abplant==2.0"], tmp_path, pip_args=("--no-index", f"--find-links={wheels}"), log=lambda m: None)
    assert env.changes == {"abplant": [None, "2.0"]} and env.seconds > 0
    got = subprocess.run([env.python, "-c", "import abplant, optcheck, torch; print(abplant.width())"],
                         capture_output=True, text=True, check=True)
    assert got.stdout.strip() == "12"  # the candidate's package, beside today's optcheck and torch
    with pytest.raises(ImportError):
        __import__("abplant")  # today's environment never got it
    again = build(["abplant==2.0"], tmp_path, pip_args=("--no-index", f"--find-links={wheels}"), log=lambda m: None)
    assert again.reused and again.python == env.python


def test_requirements_files_and_bad_requirements(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("# pins\nnvidia-modelopt==0.46.1  # candidate\n--extra-index-url x\n\ntorchprofile==0.0.4\n")
    assert read_requirements(lock) == ["nvidia-modelopt==0.46.1", "torchprofile==0.0.4"]
    assert requirement_name("NVIDIA_ModelOpt==0.46.1") == "nvidia-modelopt"
    with pytest.raises(CandidateError, match="is not a requirement pip understands"):
        requirement_name("nvidia modelopt 0.46")


def test_the_older_side_is_the_one_with_the_lower_versions():
    from optcheck.upgrade.cli import older_side

    today = {"nvidia-modelopt": "0.47.0", "torch": "2.15.0"}
    assert older_side({"today": today, "candidate": {**today, "nvidia-modelopt": "0.43.0"}},
                      ["nvidia-modelopt==0.43.0"]) == "candidate"
    assert older_side({"today": today, "candidate": {**today, "nvidia-modelopt": "0.48.0"}},
                      ["nvidia-modelopt==0.48.0"]) == "today"


# -- the comparison's rules --------------------------------------------------------------------------

def test_a_flip_is_good_on_one_side_and_bad_on_the_other_and_skips_are_not_flips():
    today = {"a": {"outcome": "passed"}, "b": {"outcome": "passed"}, "c": {"outcome": "skipped"},
             "d": {"outcome": "failed"}}
    cand = {"a": {"outcome": "passed"}, "b": {"outcome": "failed", "message": "drop 3.1 pp > 1 pp\nmore"},
            "c": {"outcome": "failed"}, "d": {"outcome": "passed"}}
    flipped, same = diff.flips(today, cand)
    assert [(f["check"], f["today"], f["candidate"]) for f in flipped] == [("b", "passed", "failed"),
                                                                         ("d", "failed", "passed")]
    assert flipped[0]["message"] == "drop 3.1 pp > 1 pp" and same == 1


def test_metrics_are_judged_against_the_ledgers_tolerance_and_shown_without_one():
    tol = {"test_acc": 0.01, "flops": 0.02}
    rows = {r.metric: r for r in diff.metric_rows("pruned", {"test_acc": 0.90, "flops": 1000, "params": 10},
                                                  {"test_acc": 0.885, "flops": 1010, "params": 12}, tol)}
    assert rows["test_acc"].outside and not rows["flops"].outside  # 1.5 pp > 1 pp; 1% < 2%
    assert rows["params"].tolerance is None and not rows["params"].outside  # not in the ledger: shown only
    assert diff.structure_rows("q", {"structure": {"quant_input": 20, "modes": "quantize"}},
                               {"structure": {"quant_input": 0, "modes": "quantize"}}) == [
        {"stage": "q", "fact": "quant_input", "today": 20, "candidate": 0}]


def test_warnings_new_in_the_candidate_are_found_across_stages():
    def report(*warnings):
        return {"recipes": [{"path": "r.toml", "stages": {"s": {"warnings": list(warnings)}}}]}

    old = {"category": "UserWarning", "message": "old", "module": "m", "count": 1}
    new = {"category": "FutureWarning", "message": "x is deprecated", "module": "modelopt.y", "count": 3}
    a, b = diff.warnings_of(report(old)), diff.warnings_of(report(old, new))
    assert [w["message"] for k, w in b.items() if k not in a] == ["x is deprecated"]


def test_cross_version_restores_are_exact_numerics_or_different(tmp_path):
    from safetensors.torch import save_file

    x = torch.randn(8, 3)
    logits = torch.randn(8, 4)
    for name, out in (("w", logits), ("same", logits.clone()), ("ulp", logits * (1 + 1e-7)),
                      ("off", logits + torch.tensor([5.0, 0, 0, 0]))):
        save_file({"inputs": x, "logits": out}, str(tmp_path / f"{name}.safetensors"))
    p = lambda n: tmp_path / f"{n}.safetensors"  # noqa: E731
    assert diff.compare_logits(p("w"), p("same"))[0] == "exact"
    assert diff.compare_logits(p("w"), p("ulp"))[0] == "numerics"
    status, detail = diff.compare_logits(p("w"), p("off"))
    assert status == "differs" and "top-1 agrees on" in detail
    probes = {"today": SimpleNamespace(outputs={"today--r--s": p("w")}, errors={}),
              "candidate": SimpleNamespace(outputs={}, errors={"today--r--s": "RuntimeError: size mismatch"})}
    [old_to_new] = [r for r in diff.restores("r", ["s"], probes, older="today") if r.writer == "today"]
    assert (old_to_new.status, old_to_new.judged) == ("error", True) and "size mismatch" in old_to_new.detail


# -- one whole A/B ---------------------------------------------------------------------------------------

RECIPE = """
seed = 0
[data]
dataset = "synthetic"
batch_size = 32
options = { samples = 240, classes = 4, image_size = 16 }
[model]
name = "abnet:make_net"
[train]
epochs = 2
lr = 0.2
warmup_epochs = 0.5
[[metrics]]
name = "quality"
function = "abnet:quality"
better = "higher"
[[steps]]
kind = "quantize"
calib_batches = 2
[budgets]
size_below = "40%"
metric_at_least = { quality = 0.5 }
restore_roundtrip = true
"""

ABNET = '''
import abplant
import torch.nn as nn


def make_net(num_classes=4):
    w = abplant.width()
    return nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w, num_classes))


def quality(model, loader, device):
    return abplant.quality()
'''


@pytest.mark.slow
def test_a_candidate_that_changes_results_flips_a_verdict_and_breaks_old_checkpoints(wheels, tmp_path):
    project = tmp_path / "project"
    (project / "recipes").mkdir(parents=True)
    (project / "recipes" / "ab.toml").write_text(RECIPE)
    (project / "abnet.py").write_text(ABNET)
    (project / "pytest.ini").write_text("[pytest]\npythonpath = .\noptcheck_recipes = recipes\n")
    out = tmp_path / "ab.json"
    proc = subprocess.run(
        [sys.executable, "-m", "optcheck.upgrade", "abplant==2.0", "--today", "abplant==1.0", "--no-index",
         "--find-links", str(wheels), "--recipes", "recipes", "--work", str(tmp_path / "work"), "-n", "1",
         "--json", str(out), "--markdown", str(tmp_path / "summary.md"), "--", "--optcheck-ledger", "off"],
        cwd=project, capture_output=True, text=True, timeout=900)
    text = proc.stdout
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "optcheck upgrade: today vs candidate (abplant 1.0 -> 2.0)" in text
    assert "FLIPPED metric_at_least[quality]: passed today, failed in the candidate" in text
    assert "checkpoints saved by today (abplant 1.0) restore under candidate (abplant 2.0): 0/2 stages" in text
    assert "size mismatch" in text and "FAIL: " in text
    doc = json.loads(out.read_text())
    assert doc["failed"] and doc["older"] == "today" and doc["candidate"]["changes"] == {"abplant": ["1.0", "2.0"]}
    [recipe] = doc["recipes"]
    params = next(m for m in recipe["metrics"] if m["stage"] == "baseline" and m["metric"] == "params")
    assert params["candidate"] > params["today"]  # the wider model, shown
    assert "### optcheck upgrade: FAIL" in (tmp_path / "summary.md").read_text()
    with pytest.raises(ImportError):
        __import__("abplant")  # neither side touched the test's environment


# -- known failures ---------------------------------------------------------------------------------------

def test_a_known_failure_explains_its_difference_and_goes_stale_when_fixed(tmp_path):
    from optcheck.upgrade.known import KnownError, classify, load

    path = tmp_path / "optcheck-upgrades.toml"
    path.write_text('[[known_failure]]\nticket = "#23: old INT8 checkpoints"\nmatch = "use_sequential"\n'
                    'candidate = "nvidia-modelopt<0.44"\ntoday = "nvidia-modelopt>=0.47"\n')
    known = load(path)
    today, old = {"nvidia-modelopt": "0.47.0"}, {"nvidia-modelopt": "0.43.0"}
    broken = {"where": "r.toml quantized", "text": "saved by candidate does not restore under today (error): "
                                                   "ValidationError: MaxCalibConfig use_sequential Extra inputs"}
    other = {"where": "r.toml::flops_below", "text": "passed -> failed: 12M > 10M"}
    unexplained, explained, stale = classify([broken, other], known, today, old)
    assert unexplained == [other] and explained[0]["ticket"].startswith("#23") and stale == []
    # the day the candidate restores: the entry applies, matches nothing, and fails the comparison
    assert classify([], known, today, old)[2][0].startswith("known failure '#23: old INT8 checkpoints' no longer "
                                                            "shows")
    # another candidate version: the entry does not apply, the difference is unexplained
    assert classify([broken], known, today, {"nvidia-modelopt": "0.46.1"})[0] == [broken]
    path.write_text('[[known_failure]]\nticket = "flaky"\nmatch = "x"\n')
    with pytest.raises(KnownError, match=r"known_failure\[0\]\.ticket: 'flaky' names no ticket"):
        load(path)


def test_the_shipped_known_failures_file_loads():
    from optcheck.upgrade.known import load

    old, newer = load(Path(__file__).resolve().parents[1] / "optcheck-upgrades.toml")
    assert old.ticket.startswith("#23") and old.match.search("MaxCalibConfig use_sequential Extra inputs")
    assert newer.match.search("2 validation errors for MaxCalibConfig layerwise Input should be a valid dictionary")
    today = {"nvidia-modelopt": "0.47.0"}
    assert [k.applies(today, {"nvidia-modelopt": v}) for k in (old, newer) for v in ("0.43.0", "0.45.0", "0.46.1")] == [
        True, False, False, False, True, False]


# -- a whole comparison from two sessions' reports (no environments, no sessions run) ---------------------

ACME = Path(__file__).resolve().parents[1] / "examples" / "acme"


def acme_session(label: str, *, ece: float, flops_below: str = "passed", ratio: float = 0.8):
    """A session report of the example project's recipe as the plugin writes it (the parts the comparison
    reads), judged against the example's committed ledger."""
    from optcheck.upgrade.environment import Environment

    metrics = {"test_acc": 0.991667, "flops": 14306048, "params": 139818, "ckpt_bytes": 575627,
               "extra": {"macro_f1": 0.991659, "brier": 0.023012, "ece": ece},
               "structure": {"quant_input": 0, "modes": ""}}
    report = {"meta": {"ledger": "recipes/optcheck-ledger.toml"},
              "recipes": [{"recipe": "acme_digits", "path": "recipes/acme.toml",
                           "ledger": {"ledger[baseline]": {"platform": "cpu"}},
                           "verdicts": {"flops_below": {"outcome": flops_below, "message": ""},
                                        "restore_roundtrip": {"outcome": "passed"},
                                        "speedup_at_least": {"outcome": "passed", "details": {"ratio": ratio}}},
                           "stages": {"baseline": {"metrics": metrics}}}]}
    env = Environment(label, sys.executable, [], {"nvidia-modelopt": ["0.47.0", "0.48.0"]} if label == "candidate"
                      else {}, 1.0)
    return SimpleNamespace(env=env, report=report, returncode=0, seconds=2.0)


def compare_acme(candidate_ece: float, *, known=(), rootdir: Path = ACME):
    from optcheck.upgrade.cli import _ledger

    today, candidate = acme_session("today", ece=0.068762), acme_session("candidate", ece=candidate_ece, ratio=0.9)
    ledger, error = _ledger(today.report, rootdir)
    return diff.compare(today, candidate, {}, ledger=ledger, older="today", known=list(known), ledger_error=error,
                        versions={"today": {"nvidia-modelopt": "0.47.0"}, "candidate": {"nvidia-modelopt": "0.48.0"}})


def test_a_team_metric_that_leaves_its_ledger_tolerance_fails_the_comparison_with_no_verdict_flipping():
    from optcheck.upgrade import render

    within = compare_acme(0.068762 + 0.0005)  # the example ledger's ece tolerance: 0.000688
    assert not within.failed and within.ledger.endswith("optcheck-ledger.toml")
    moved = compare_acme(0.068762 + 0.002)
    assert moved.failed and moved.recipes[0].flips == []
    assert moved.reasons == ["recipes/acme.toml baseline.ece: 0.068762 -> 0.070762, outside the ledger tolerance"]
    text = render.text(moved)
    assert "baseline   ece" in text and "+-0.000688  OUTSIDE" in text
    assert "the same: passed: flops_below, restore_roundtrip, speedup_at_least" in text
    assert "latency ratio speedup_at_least: 0.800 today, 0.900 in the candidate" in text
    md = render.markdown(moved)
    assert "### optcheck upgrade: FAIL" in md and "| baseline | ece | 0.068762 | 0.070762 |" in md
    assert "| `restore_roundtrip` | passed | passed |  |" in md and "**OUTSIDE**" in md
    assert "- latency ratio `speedup_at_least`: 0.800 today, 0.900 in the candidate" in md


def test_every_verdict_is_listed_and_a_flip_is_marked_in_the_step_summary():
    from optcheck.upgrade import render

    today, candidate = acme_session("today", ece=0.068762), acme_session("candidate", ece=0.068762,
                                                                        flops_below="failed")
    c = diff.compare(today, candidate, {}, ledger=None, older="today")
    assert c.failed and [v["check"] for v in c.recipes[0].verdicts if v["flipped"]] == ["flops_below"]
    md = render.markdown(c)
    assert "| `flops_below` | passed | failed | **FLIPPED** |" in md
    assert "ledger: none (the sessions ran without one): metrics shown, not judged" in md


def test_a_ledger_that_cannot_be_read_fails_the_comparison_instead_of_leaving_metrics_unjudged(tmp_path):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "optcheck-ledger.toml").write_text("[acme_digits.cpu.baseline]\nflops = [\n")
    c = compare_acme(0.068762, rootdir=tmp_path)
    assert c.failed and c.reasons[0].startswith("the ledger could not be read, so no metric was judged")
    assert "not valid TOML" in c.reasons[0]


def test_the_comparison_passes_on_a_known_failure_and_fails_the_day_it_no_longer_shows(tmp_path):
    from optcheck.upgrade.known import load

    path = tmp_path / "optcheck-upgrades.toml"
    path.write_text('[[known_failure]]\nticket = "#99: ece moves under 0.48"\nmatch = "baseline\\\\.ece: "\n'
                    'candidate = "nvidia-modelopt>=0.48"\n')
    known = load(path)
    explained = compare_acme(0.068762 + 0.002, known=known)
    assert not explained.failed and explained.judged()[1][0]["ticket"].startswith("#99")
    fixed = compare_acme(0.068762, known=known)
    assert fixed.failed and "no longer shows" in fixed.reasons[0]
