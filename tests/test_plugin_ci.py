"""The CI features through pytester: cache options, the ledger workflow (missing, update, mismatch,
known failure), a broken ledger, the JSON report, the step summary, the plot, JUnit properties,
and pytest-xdist."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

import pytest

from conftest import tiny_recipe

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True, scope="module")
def heavy_modules_loaded_once():
    """See tests/test_plugin.py: compiled modules cannot be imported twice in one process."""
    import matplotlib.pyplot  # noqa: F401
    import sklearn.model_selection  # noqa: F401
    import torchvision.transforms.v2  # noqa: F401

    from optcheck.core.compat import import_modelopt

    import_modelopt()


@pytest.fixture
def project(pytester, monkeypatch):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    pytester.makeini("[pytest]\nfilterwarnings = ignore::UserWarning\n")
    pytester.mkdir("recipes")
    (pytester.path / "recipes" / "tiny.toml").write_text(tiny_recipe())
    return pytester


LEDGER = "recipes/optcheck-ledger.toml"


def test_cache_second_run_builds_nothing_and_no_cache_builds_everything(project):
    first = project.runpytest_inprocess("--optcheck", "--optcheck-ledger", "off")
    first.assert_outcomes(passed=4)
    assert "tiny: building baseline" in first.stdout.str()
    assert (project.path / ".optcheck" / "cache" / "entries" / "baseline").is_dir()  # the default place
    second = project.runpytest_inprocess("--optcheck", "--optcheck-ledger", "off")
    second.assert_outcomes(passed=4)
    out = second.stdout.str()
    assert "building baseline" not in out and "building pruned" not in out and "building finetuned" not in out
    second.stdout.fnmatch_lines(["cache: baseline cache hit; pruned cache hit; finetuned cache hit; verdicts of "
                                 "baseline_accuracy_at_least, flops_below, accuracy_drop_under, restore_roundtrip "
                                 "from the cache*"])
    live = project.runpytest_inprocess("--optcheck", "--optcheck-ledger", "off", "--optcheck-rebuild")
    live.assert_outcomes(passed=4)
    assert "building finetuned" in live.stdout.str()  # entries of earlier sessions do not count
    off = project.runpytest_inprocess("--optcheck", "--optcheck-ledger", "off", "--optcheck-no-cache")
    off.assert_outcomes(passed=4)
    assert "tiny: building baseline" in off.stdout.str() and "optcheck cache: off (--optcheck-no-cache)" in off.stdout.str()
    again = project.runpytest_inprocess("--optcheck", "--optcheck-ledger", "off", "--optcheck-rebuild")
    again.assert_outcomes(passed=4)
    assert again.stdout.str().count("tiny: building baseline") == 1


def test_cache_dir_option_and_an_unwritable_one(project):
    result = project.runpytest_inprocess("--optcheck", "--optcheck-ledger", "off", "--optcheck-cache-dir", "elsewhere")
    result.assert_outcomes(passed=4)
    assert (project.path / "elsewhere" / "entries" / "finetuned").is_dir()
    (project.path / "blocker").write_text("a file, not a folder")
    result = project.runpytest_inprocess("--optcheck", "--optcheck-ledger", "off", "--optcheck-cache-dir",
                                         "blocker/cache", "-W", "always::optcheck.pipeline.cache.CacheWarning")
    result.assert_outcomes(passed=4)
    out = result.stdout.str()
    assert "optcheck cache directory blocker/cache cannot be written" in out and "runs without a cache" in out
    assert "optcheck cache: off: blocker/cache is not writable" in out


def test_a_corrupted_entry_is_rebuilt_with_a_warning_in_the_session(project):
    project.runpytest_inprocess("--optcheck", "--optcheck-ledger", "off").assert_outcomes(passed=4)
    [entry] = (project.path / ".optcheck" / "cache" / "entries" / "finetuned").iterdir()
    (entry / "modelopt.pth").write_bytes(b"garbage")
    import shutil

    shutil.rmtree(project.path / ".optcheck" / "cache" / "entries" / "verdicts")  # else replayed: no model read
    result = project.runpytest_inprocess("--optcheck", "--optcheck-ledger", "off", "-W",
                                         "always::optcheck.pipeline.cache.CacheWarning")
    result.assert_outcomes(passed=4)
    out = result.stdout.str()
    assert "CacheWarning" in out and "is unusable" in out and "will be rebuilt" in out
    assert "building finetuned" in out and "building baseline" not in out


def test_ledger_missing_then_update_then_pass(project):
    result = project.runpytest_inprocess("--optcheck", "-v")
    result.assert_outcomes(passed=4, failed=3)
    result.stdout.fnmatch_lines(["recipes/tiny.toml::ledger[[]baseline[]] FAILED*",
                                 f"[[]tiny.cpu.baseline[]] has no entry in the ledger {LEDGER}: record the "
                                 "current values with `pytest --optcheck --optcheck-update`*"])
    assert not (project.path / LEDGER).exists()
    update = project.runpytest_inprocess("--optcheck", "--optcheck-update")
    update.assert_outcomes(passed=4, failed=3)  # updating still fails the checks it updated
    update.stdout.fnmatch_lines([f"ledger: wrote 3 entries to {LEDGER} (review the diff and commit it)"])
    text = (project.path / LEDGER).read_text()
    assert "[tiny.cpu.baseline]" in text and "[tiny.cpu.finetuned]" in text
    project.runpytest_inprocess("--optcheck").assert_outcomes(passed=7)
    assert (project.path / LEDGER).read_text() == text  # a passing run writes nothing


def test_ledger_mismatch_fails_and_known_failure_xfails_then_xpasses_loudly(project):
    project.runpytest_inprocess("--optcheck", "--optcheck-update-all").assert_outcomes(passed=7)
    path = project.path / LEDGER
    good = path.read_text()
    flops = next(line for line in good.splitlines() if line.startswith("flops = "))
    broken = good.replace(flops, "flops = 123", 1)  # the baseline entry
    path.write_text(broken)
    result = project.runpytest_inprocess("--optcheck")
    result.assert_outcomes(passed=6, failed=1)
    result.stdout.fnmatch_lines([f"[[]tiny.cpu.baseline[]] differs from the ledger {LEDGER}:",
                                 "  flops: * now, 123 in the ledger (*; must match exactly)",
                                 "  if the change is intended, accept it with `pytest --optcheck --optcheck-update`*"])
    path.write_text(broken.replace("[tiny.cpu.baseline]\n", "[tiny.cpu.baseline]\nknown_failure = \"GH-9: refactor moved FLOPs\"\n"))
    result = project.runpytest_inprocess("--optcheck", "-rx")
    result.assert_outcomes(passed=6, xfailed=1)
    result.stdout.fnmatch_lines(["XFAIL*ledger[[]baseline[]]*GH-9: refactor moved FLOPs*"])
    path.write_text(good.replace("[tiny.cpu.baseline]\n", "[tiny.cpu.baseline]\nknown_failure = \"GH-9: fixed now\"\n"))
    result = project.runpytest_inprocess("--optcheck")
    result.assert_outcomes(passed=6, failed=1)
    result.stdout.fnmatch_lines(["*XPASS(strict)*GH-9: fixed now*"])


def test_update_all_accepts_a_changed_value_and_passes(project):
    project.runpytest_inprocess("--optcheck", "--optcheck-update-all").assert_outcomes(passed=7)
    path = project.path / LEDGER
    good = path.read_text()
    path.write_text(good.replace("params = ", "params = 1", 1))
    project.runpytest_inprocess("--optcheck", "--optcheck-update-all").assert_outcomes(passed=7)
    assert path.read_text() == good



LEDGER_TEXT = """# an accepted ledger, as committed
[tiny.cpu.baseline]
test_acc = 0.5
flops = 1000
params = 100
ckpt_bytes = 5000
accuracy_tolerance = 0.01
bytes_tolerance = 0.05
"""


def test_with_the_ledger_off_no_ledger_file_is_collected_as_a_recipe(project):
    project.makeini("[pytest]\noptcheck_ledger = recipes/ci-ledger.toml\nfilterwarnings = ignore::UserWarning\n")
    for name in ("optcheck-ledger.toml", "ci-ledger.toml"):  # the default name, and the configured path
        (project.path / "recipes" / name).write_text(LEDGER_TEXT)
    result = project.runpytest_inprocess("--optcheck", "--optcheck-ledger", "off", "-v")
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=4)
    out = result.stdout.str() + result.stderr.str()
    assert "ledger.toml" not in out and "invalid optcheck recipe" not in out and "unknown key" not in out


@pytest.mark.parametrize("edit, words", [
    (lambda t: t.replace("[tiny.cpu.baseline]", "[tinyy.cpu.baseline]"), ":*: unknown recipe 'tinyy'"),
    (lambda t: t.replace("flops = ", "flops == ", 1), ":*: not valid TOML"),
])
def test_a_broken_ledger_stops_the_session_and_is_not_overwritten(project, edit, words):
    project.runpytest_inprocess("--optcheck", "--optcheck-update-all").assert_outcomes(passed=7)
    path = project.path / LEDGER
    path.write_text(edit(path.read_text()))
    before = path.read_bytes()
    result = project.runpytest_inprocess("--optcheck", "--optcheck-update-all")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{LEDGER}{words}*", "*fix: *", "*the ledger file was not changed*"])
    assert path.read_bytes() == before


def test_report_step_summary_plot_and_junit(project, monkeypatch):
    summary = project.path / "summary.md"
    summary.write_text("earlier steps\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = project.runpytest_inprocess("--optcheck", "--optcheck-update-all", "--optcheck-report", "out/report.json",
                                         "--optcheck-plot", "out/plot.png", "--junitxml", "out/junit.xml")
    result.assert_outcomes(passed=7)
    result.stdout.fnmatch_lines(["report: out/report.json", "step summary: appended*", "plot: out/plot.png"])
    doc = json.loads((project.path / "out" / "report.json").read_text())
    meta = doc["meta"]
    assert meta["versions"]["torch"] and meta["versions"]["nvidia-modelopt"] and meta["machine"]["cpus"]
    assert "commit" in meta["git"] and meta["cache"] == ".optcheck/cache" and meta["ledger"] == LEDGER
    [recipe] = doc["recipes"]
    assert recipe["path"] == "recipes/tiny.toml" and list(recipe["stages"]) == ["baseline", "pruned", "finetuned"]
    assert recipe["stages"]["baseline"]["events"][0]["cache"] == "built"
    assert recipe["stages"]["pruned"]["metrics"]["flops"] < recipe["stages"]["baseline"]["metrics"]["flops"]
    assert recipe["verdicts"]["flops_below"]["outcome"] == "passed"
    assert recipe["verdicts"]["flops_below"]["details"]["flops"] == recipe["stages"]["finetuned"]["metrics"]["flops"]
    assert recipe["budgets"]["flops_below"] == "70%" and recipe["ledger"]["baseline"]["updated"] is True
    assert list(recipe["verdicts"])[:4] == ["baseline_accuracy_at_least", "flops_below", "accuracy_drop_under",
                                            "restore_roundtrip"]
    assert recipe["budgets"]["baseline_accuracy_at_least"] == "auto"
    floor = recipe["verdicts"]["baseline_accuracy_at_least"]["details"]
    assert floor["chance"] == 0.25 and floor["floor"] == 0.625
    assert floor["baseline_acc"] == recipe["stages"]["baseline"]["metrics"]["test_acc"]
    drop = recipe["verdicts"]["accuracy_drop_under"]["details"]
    assert drop["rule"] == "point" and drop["seeds"] == 1 and drop["test_n"] == 48
    assert drop["ci_low"] < drop["accuracy_drop"] < drop["ci_high"]
    assert drop["explain"].endswith("rule point: pass when the observed drop <= 25.00 pp -> pass")
    md = summary.read_text()
    assert md.startswith("earlier steps\n## optcheck")  # appended, never overwritten
    assert "| flops_below | ✅ passed | limit 70% |" in md
    assert "| baseline_accuracy_at_least | ✅ passed | " in md and "vs floor 62.50% (auto: halfway from chance" in md
    assert "| accuracy_drop_under | ✅ passed | drop " in md and "-> pass |" in md  # the interval and the rule
    assert "| baseline | " in md and "| finetuned | " in md and "| built by main |" in md
    assert "| baseline |" in md and "no entry (written)" in md
    png = (project.path / "out" / "plot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    tree = ET.parse(project.path / "out" / "junit.xml")
    props = {p.get("name"): p.get("value") for case in tree.iter("testcase") if case.get("name") == "flops_below"
             for p in case.iter("property")}
    assert props["optcheck.check"] == "flops_below" and int(props["optcheck.flops"]) > 0
    props = {p.get("name"): p.get("value") for case in tree.iter("testcase") if case.get("name") == "accuracy_drop_under"
             for p in case.iter("property")}
    assert props["optcheck.rule"] == "point" and float(props["optcheck.ci_low"]) < float(props["optcheck.ci_high"])


def test_ledger_deltas_in_the_step_summary(project, monkeypatch):
    project.runpytest_inprocess("--optcheck", "--optcheck-update-all").assert_outcomes(passed=7)
    summary = project.path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    project.runpytest_inprocess("--optcheck").assert_outcomes(passed=7)
    md = summary.read_text()
    assert "acc ±0.00 pp, FLOPs ±0, params ±0 ✅" in md and "| cache hit |" in md


def test_under_xdist_each_artifact_is_built_once_and_reports_merge(project):
    report = project.path / "report.json"
    result = project.runpytest_subprocess("--optcheck", "-n", "2", "--optcheck-update-all",
                                          "--optcheck-report", str(report), "-p", "no:cacheprovider",
                                          timeout=600)
    result.assert_outcomes(passed=7)
    doc = json.loads(report.read_text())
    [recipe] = doc["recipes"]
    assert doc["meta"]["workers"] == 2
    # one recipe builds: its worker takes every core (the other worker has nothing to build)
    assert recipe["threads"] == len(os.sched_getaffinity(0))
    workers = set()
    for stage in ("baseline", "pruned", "finetuned"):
        events = recipe["stages"][stage]["events"]
        assert [e["cache"] for e in events].count("built") == 1, (stage, events)
        workers |= {e["worker"] for e in events}
    assert len(workers) == 1 and workers <= {"gw0", "gw1"}  # one recipe's items stay on one worker
    assert len(recipe["verdicts"]) == 7 and all(v["outcome"] == "passed" for v in recipe["verdicts"].values())
    assert "[tiny.cpu.finetuned]" in (project.path / LEDGER).read_text()  # written once, by the controller


def test_the_step_summary_shows_a_failed_check_and_its_ledger_delta(project, monkeypatch):
    project.runpytest_inprocess("--optcheck", "--optcheck-update-all").assert_outcomes(passed=7)
    path = project.path / LEDGER
    text = path.read_text()
    flops = next(line for line in text.splitlines() if line.startswith("flops = "))
    path.write_text(text.replace(flops, f"flops = {int(flops.split('=')[1]) - 100}", 1))
    summary = project.path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    project.runpytest_inprocess("--optcheck").assert_outcomes(passed=6, failed=1)
    md = summary.read_text()
    assert "| ledger[baseline] | ❌ failed | [tiny.cpu.baseline] differs from the ledger" in md
    assert "FLOPs +100, params ±0 ❌" in md


def _workers_by_recipe(stdout: str) -> dict[str, set[str]]:
    """From ``-v`` under xdist ("[gw0] [ 14%] PASSED recipes/a.toml::flops_below"): recipe -> workers."""
    import re

    out: dict[str, set[str]] = {}
    for worker, nodeid in re.findall(r"\[(gw\d+)\] \[\s*\d+%\] \w+ (\S+)", stdout):
        out.setdefault(nodeid.split("::")[0], set()).add(worker)
    return out


def test_under_xdist_each_recipe_runs_on_one_worker_and_recipes_build_side_by_side(project):
    """xdist's default ``--dist load`` would spread one recipe's items over the workers, and each
    worker would load (with --optcheck-no-cache: train) the same artifacts: optcheck's scheduler keeps
    a recipe on one worker and puts two recipes on two workers at once."""
    (project.path / "recipes" / "other.toml").write_text(tiny_recipe().replace('seed = 0', 'seed = 1'))
    report = project.path / "report.json"
    result = project.runpytest_subprocess("--optcheck", "-n", "2", "-v", "--optcheck-no-cache",
                                          "--optcheck-ledger", "off", "--optcheck-report", str(report),
                                          "-p", "no:cacheprovider", timeout=600)
    result.assert_outcomes(passed=8)
    placed = _workers_by_recipe(result.stdout.str())
    assert set(placed) == {"recipes/tiny.toml", "recipes/other.toml"}, result.stdout.str()
    assert all(len(w) == 1 for w in placed.values()), placed
    assert placed["recipes/tiny.toml"] != placed["recipes/other.toml"], placed  # built side by side
    doc = json.loads(report.read_text())
    for recipe in doc["recipes"]:  # two recipes build at once: the cores are shared between them
        assert recipe["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)
        events = [e for s in ("baseline", "pruned", "finetuned") for e in recipe["stages"][s]["events"]]
        assert [e["cache"] for e in events].count("off") == 3, events  # built once, without a cache


def test_under_xdist_the_baseline_every_recipe_needs_is_built_with_all_the_cores(project):
    """Two recipes that share their baseline: one worker builds it while the other waits on its lock,
    so it gets both workers' cores; the recipes' own stages then build side by side, one core each.
    The same split on both workers (decided from the collected recipes), so both find one cache key."""
    (project.path / "recipes" / "other.toml").write_text(tiny_recipe(flops="65%"))
    report = project.path / "report.json"
    result = project.runpytest_subprocess("--optcheck", "-n", "2", "-v", "--optcheck-ledger", "off",
                                          "--optcheck-report", str(report), "-p", "no:cacheprovider",
                                          timeout=600)
    result.assert_outcomes(passed=8)
    cores = len(os.sched_getaffinity(0))
    doc = json.loads(report.read_text())
    by_recipe = {r["recipe"]: r for r in doc["recipes"]}
    baseline = [e for r in by_recipe.values() for e in r["stages"]["baseline"]["events"]]
    assert sorted(e["cache"] for e in baseline) == ["built", "hit (built by another process)"], baseline
    assert len({e["key"] for e in baseline}) == 1, baseline  # one artifact: the same key on both workers
    assert [e["threads"] for e in baseline if e["cache"] == "built"] == [cores]
    for r in by_recipe.values():
        assert r["threads"] == max(1, cores // 2)
        for stage in ("pruned", "finetuned"):
            assert [e["threads"] for e in r["stages"][stage]["events"]] == [max(1, cores // 2)], r["stages"][stage]
    assert f"({cores} threads: every recipe needs it)" in result.stdout.str()  # the workers' progress


def test_an_explicit_dist_mode_is_respected(project):
    """``--dist load`` on the command line: the user chose xdist's own scheduling (items spread)."""
    result = project.runpytest_subprocess("--optcheck", "-n", "2", "--dist", "load", "-v",
                                          "--optcheck-ledger", "off", "-p", "no:cacheprovider", timeout=600)
    result.assert_outcomes(passed=4)
    assert _workers_by_recipe(result.stdout.str())["recipes/tiny.toml"] == {"gw0", "gw1"}


WHAT_WAS_IMPORTED = '''
import json, os, sys

def pytest_sessionfinish(session):
    with open(os.environ["IMPORTED_REPORT"], "w") as fh:
        json.dump({m: m in sys.modules for m in ("torch", "modelopt", "sklearn", "torchvision")}, fh)
'''


def test_a_warm_session_replays_verdicts_without_importing_model_optimizer(project, monkeypatch):
    """Nothing a verdict depends on changed: it is replayed from the cache (said in the summary and
    the JSON report), no model is loaded, and Model Optimizer, scikit-learn and torchvision are not
    even imported. A failed verdict replays as the same failure; a changed budget is judged live."""
    (project.path / "conftest.py").write_text(WHAT_WAS_IMPORTED)
    report = project.path / "imported.json"
    monkeypatch.setenv("IMPORTED_REPORT", str(report))
    args = ("--optcheck", "--optcheck-ledger", "off", "-p", "no:cacheprovider", "-p", "no:hypothesispytest")
    project.runpytest_subprocess(*args, timeout=600).assert_outcomes(passed=4)
    assert json.loads(report.read_text())["modelopt"] is True  # the cold session built with it
    warm = project.runpytest_subprocess(*args, "--optcheck-report", "r.json", timeout=600)
    warm.assert_outcomes(passed=4)
    out = warm.stdout.str()
    assert "building" not in out and "from the cache (nothing they depend on changed" in out
    assert json.loads(report.read_text()) == {"torch": True, "modelopt": False, "sklearn": False,
                                              "torchvision": False}
    [recipe] = json.loads((project.path / "r.json").read_text())["recipes"]
    assert all(v["details"]["verdict_cache"] == "hit" for v in recipe["verdicts"].values())
    # a tighter FLOPs budget: a new verdict key, judged live, and it fails with its numbers
    path = project.path / "recipes" / "tiny.toml"
    path.write_text(path.read_text().replace('flops_below = "70%"', 'flops_below = "5%"'))
    tight = project.runpytest_subprocess(*args, timeout=600)
    tight.assert_outcomes(passed=3, failed=1)
    message = [line for line in tight.stdout.lines if "FLOPs" in line and "5%" in line
               and not line.startswith("[optcheck]")]
    assert message and json.loads(report.read_text())["modelopt"] is True  # measured: the model was loaded
    # the same failure again, replayed from the cache: still a failure, with the same message
    again = project.runpytest_subprocess(*args, timeout=600)
    again.assert_outcomes(passed=3, failed=1)
    assert message[0] in again.stdout.lines and json.loads(report.read_text())["modelopt"] is False
    # --optcheck-rebuild: entries of earlier sessions (verdicts too) do not count
    rebuilt = project.runpytest_subprocess(*args, "--optcheck-rebuild", timeout=600)
    rebuilt.assert_outcomes(passed=3, failed=1)
    assert "from the cache (nothing" not in rebuilt.stdout.str()
