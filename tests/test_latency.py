"""Latency budgets (``speedup_at_least``, ``latency_ratio_below``) and their assertions: the ratio is
measured interleaved in one process, with an interval; a faster model passes, a planted slower one
fails with both medians and the ratio; pytest-benchmark is the engine (its JSON carries the series,
``--benchmark-disable`` / ``--benchmark-skip`` skip), and under pytest-xdist a latency check still
measures and says so."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from optcheck import assert_latency_ratio_below, assert_speedup_at_least
from optcheck.checks.latency import Settings, batch_of, interleave, summarize
from optcheck.core.stats import median_interval
from conftest import tiny_recipe

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def conv_net(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)).eval()


class Repeated(nn.Module):
    """The planted regression: a "compressed" model that runs its forward ``times`` times (same output)."""

    def __init__(self, model: nn.Module, times: int = 4):
        super().__init__()
        self.model, self.times = model, times

    def forward(self, x):
        for _ in range(self.times - 1):
            self.model(x)
        return self.model(x)


WIDE, NARROW = conv_net(64), conv_net(8)
X = torch.randn(4, 3, 32, 32)
FAST = dict(example_input=X, rounds=40, warmup_rounds=5)


# -- the measurement ------------------------------------------------------------------------------------

def test_rounds_alternate_which_model_goes_first_and_warm_up_rounds_are_not_timed():
    calls: list[str] = []
    clock = iter(range(10_000))
    ref, cand = interleave(lambda: calls.append("r"), lambda: calls.append("c"), rounds=4, warmup_rounds=2,
                           timer=lambda: float(next(clock)))
    assert "".join(calls) == "rccrrccrrccr"  # 6 rounds, each model once, the order swapped every round
    assert len(ref) == len(cand) == 4 and set(ref) == set(cand) == {1.0}


def test_the_ratio_is_the_median_of_per_round_ratios_with_an_interval():
    ref = [1.0] * 100
    cand = [0.5] * 60 + [0.6] * 40  # 60% of rounds twice as fast
    got = summarize(ref, cand, Settings(rounds=100), engine="test")
    assert got.ratio == 0.5 and got.speedup == 2.0
    assert got.low == 0.5 and got.high == 0.6  # the median's 95% interval reaches into the 0.6 rounds
    assert got.speedup_interval == (pytest.approx(1 / 0.6), 2.0)
    assert "ratio 0.500 [0.500, 0.600]" in got.describe()


def test_the_median_interval_uses_order_statistics_with_at_least_the_coverage_asked():
    assert median_interval(range(1, 201), 0.95) == (86.0, 115.0)
    assert median_interval([3.0, 1.0, 2.0], 0.95) == (1.0, 3.0)  # too few values: the whole range
    import random

    rng = random.Random(0)
    misses = sum(not (lo <= 0 <= hi) for lo, hi in
                 (median_interval([rng.gauss(0, 1) for _ in range(41)], 0.95) for _ in range(1000)))
    assert misses <= 50  # nominal 5%; order statistics are conservative


def test_a_batch_is_cut_or_tiled_to_the_batch_size():
    x = torch.arange(3.0).reshape(3, 1)
    assert batch_of(x, 2).tolist() == [[0.0], [1.0]]
    assert batch_of(x, 7).flatten().tolist() == [0.0, 1.0, 2.0, 0.0, 1.0, 2.0, 0.0]


# -- both sides of both assertions ----------------------------------------------------------------------

def test_a_smaller_model_passes_both_budgets():
    got = assert_speedup_at_least(NARROW, WIDE, 1.5, **FAST)
    assert got["speedup"] >= 1.5 and got["ratio"] <= 1 / 1.5 and got["rounds"] == 40
    assert got["runtime"] == "torch" and got["threads"] == 1 and got["batch_size"] == 1
    assert_latency_ratio_below(NARROW, WIDE, 0.9, **FAST)


def test_a_compressed_model_slower_than_its_baseline_fails_with_both_medians_and_the_ratio():
    slower = Repeated(WIDE, times=4)
    with pytest.raises(AssertionError) as err:
        assert_speedup_at_least(slower, WIDE, 1.0, **FAST)
    msg = str(err.value)
    assert "optcheck budget 'speedup_at_least' failed" in msg
    for row in ("candidate :", "baseline  :", "ratio     :", "speed-up  :", "limit     : speed-up >= 1x"):
        assert row in msg, msg
    assert "ms median" in msg and "interleaved rounds" in msg
    with pytest.raises(AssertionError) as err:
        assert_latency_ratio_below(slower, WIDE, 1.5, **FAST)
    msg = str(err.value)
    assert "optcheck budget 'latency_ratio_below' failed" in msg and "limit     : ratio <= 1.5" in msg
    ratio = float(msg.split("ratio     : ")[1].split()[0])
    assert ratio > 2.0  # four forwards against one


def test_onnxruntime_is_a_runtime_too(tmp_path):
    got = assert_speedup_at_least(NARROW, WIDE, 1.5, runtime="onnxruntime", workdir=tmp_path, **FAST)
    assert got["runtime"] == "onnxruntime" and (tmp_path / "latency-candidate.onnx").is_file()
    with pytest.raises(AssertionError, match="latency_ratio_below"):
        assert_latency_ratio_below(WIDE, NARROW, 1.0, runtime="onnxruntime", workdir=tmp_path, **FAST)


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan")])
def test_a_limit_that_cannot_fail_or_makes_no_sense_is_refused(bad):
    with pytest.raises(ValueError, match="speedup_at_least"):
        assert_speedup_at_least(NARROW, WIDE, bad, **FAST)
    with pytest.raises(ValueError, match="latency_ratio_below"):
        assert_latency_ratio_below(NARROW, WIDE, bad, **FAST)


# -- in a recipe ----------------------------------------------------------------------------------------

def test_a_fake_quantized_stage_is_slower_than_its_baseline_and_the_budget_says_so(tmp_path):
    from test_steps import QUANTIZE, judge, make_run

    run = make_run(tmp_path, QUANTIZE, "speedup_at_least = 1.0\nlatency_ratio_below = 100\n")
    verdicts = judge(run)
    assert verdicts[(None, "latency_ratio_below")] == "passed"
    msg = verdicts[(None, "speedup_at_least")]
    assert "optcheck budget 'speedup_at_least' failed" in msg, msg
    ratio = float(msg.split("ratio     : ")[1].split()[0])
    assert ratio > 1.0  # Model Optimizer's fake quantizers add work in PyTorch: no INT8 kernels run


@pytest.mark.parametrize("table, field, words", [
    ('[latency]\nruntime = "tensorrt"\n', "latency.runtime", "torch"),
    ("[latency]\nrounds = 5\n", "latency.rounds", "20"),
    ("[latency]\nround = 50\n", "latency.round", "did you mean 'rounds'"),
])
def test_a_bad_latency_table_names_its_field(tmp_path, table, field, words):
    from optcheck.core.errors import RecipeError
    from optcheck.recipes.loader import load_recipe

    path = tmp_path / "r.toml"
    path.write_text(tiny_recipe(budgets="speedup_at_least = 1.1\n") + table)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert field in str(err.value) and words in str(err.value), str(err.value)


@pytest.mark.parametrize("budget", ["speedup_at_least = 0", "latency_ratio_below = -1", "speedup_at_least = inf"])
def test_a_latency_budget_that_cannot_fail_is_refused(tmp_path, budget):
    from optcheck.core.errors import RecipeError
    from optcheck.recipes.loader import load_recipe

    path = tmp_path / "r.toml"
    path.write_text(tiny_recipe(budgets=budget + "\n"))
    with pytest.raises(RecipeError, match=budget.split()[0]):
        load_recipe(path)


# -- pytest-benchmark as the engine, and pytest-xdist ---------------------------------------------------

LATENCY_BUDGETS = 'flops_below = "70%"\nlatency_ratio_below = 10\n[budgets.pruned]\nspeedup_at_least = 0.1\n'


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
    (pytester.path / "recipes" / "tiny.toml").write_text(tiny_recipe(budgets=LATENCY_BUDGETS))
    return pytester


def test_benchmark_json_carries_both_series_and_the_ratio_and_asking_for_it_measures_again(project):
    args = ("--optcheck", "--optcheck-ledger", "off", "-p", "no:cacheprovider")
    project.runpytest_inprocess(*args).assert_outcomes(passed=4)  # judged and cached
    out = project.runpytest_inprocess(*args, "--benchmark-json", "bench.json")
    out.assert_outcomes(passed=4)
    doc = json.loads((project.path / "bench.json").read_text())
    groups: dict[str, list] = {}
    for b in doc["benchmarks"]:
        groups.setdefault(b["group"], []).append(b)
    assert sorted(groups) == ["optcheck latency: recipes/tiny.toml::latency_ratio_below",
                              "optcheck latency: recipes/tiny.toml::pruned::speedup_at_least"]
    pair = groups["optcheck latency: recipes/tiny.toml::pruned::speedup_at_least"]
    assert sorted(b["extra_info"]["optcheck_role"] for b in pair) == ["baseline", "pruned"]
    for b in pair:
        assert b["stats"]["rounds"] == 200 and b["stats"]["median"] > 0
        assert b["extra_info"]["optcheck_low"] <= b["extra_info"]["optcheck_ratio"] <= b["extra_info"]["optcheck_high"]
    # without pytest-benchmark output asked for, the verdict is replayed from the cache
    again = project.runpytest_inprocess(*args)
    assert "latency_ratio_below passed (verdict from the cache" in again.stdout.str()


def test_benchmark_disable_and_skip_turn_the_latency_checks_off_out_loud(project):
    args = ("--optcheck", "--optcheck-ledger", "off", "-p", "no:cacheprovider", "-rs")
    off = project.runpytest_inprocess(*args, "--benchmark-disable")
    off.assert_outcomes(passed=2, skipped=2)
    off.stdout.fnmatch_lines(["SKIPPED [[]2[]] recipes/tiny.toml*latency not measured: benchmarks are disabled "
                              "(--benchmark-disable)*"])
    skip = project.runpytest_inprocess(*args, "--benchmark-skip")
    skip.assert_outcomes(passed=2, skipped=2)
    only = project.runpytest_inprocess(*args, "--benchmark-only")
    only.assert_outcomes(passed=2, skipped=2)  # the latency checks run, the others are skipped


def test_under_xdist_a_latency_check_still_measures_and_says_how(project):
    """And ``--benchmark-json`` under ``-n`` is written: pytest-benchmark turns itself off on the workers
    (it used to write no file and say nothing); the workers' series reach the controller's session."""
    pytest.importorskip("xdist")
    out = project.runpytest_subprocess("--optcheck", "--optcheck-ledger", "off", "-p", "no:cacheprovider",
                                       "-n", "2", "--optcheck-report", "report.json", "--benchmark-json", "bench.json")
    out.assert_outcomes(passed=4)
    # pytest-benchmark's "Benchmarks are automatically disabled" would be untrue of these: withheld
    assert "automatically disabled" not in out.stdout.str() + out.stderr.str()
    doc = json.loads((project.path / "report.json").read_text())
    verdicts = doc["recipes"][0]["verdicts"]
    for check in ("latency_ratio_below", "pruned::speedup_at_least"):
        details = verdicts[check]["details"]
        assert verdicts[check]["outcome"] == "passed"
        assert details["engine"].startswith("optcheck under pytest-xdist (pytest-benchmark is off there), worker gw")
        assert details["rounds"] == 200 and 0 < details["ratio"] < 10
        assert "latency_series" not in details  # the raw series go to pytest-benchmark, not the report
    bench = json.loads((project.path / "bench.json").read_text())["benchmarks"]
    groups = sorted({b["group"] for b in bench})
    assert groups == ["optcheck latency: recipes/tiny.toml::latency_ratio_below",
                      "optcheck latency: recipes/tiny.toml::pruned::speedup_at_least"]
    assert len(bench) == 4 and all(b["stats"]["rounds"] == 200 and b["stats"]["median"] > 0 for b in bench)
    assert all(b["extra_info"]["optcheck_engine"].startswith("optcheck under pytest-xdist") for b in bench)


USER_TEST = '''
import os
import torch, torch.nn as nn
from optcheck import assert_speedup_at_least

def net(width):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, 10)).eval()

def test_pruned_is_faster(benchmark):
    got = assert_speedup_at_least(net(8), net(128), 1.5, example_input=torch.randn(2, 3, 32, 32), rounds=30,
                                  warmup_rounds=3, benchmark=benchmark)
    if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest-benchmark is off there: measured all the same
        assert got["engine"].startswith("optcheck under pytest-xdist") and got["rounds"] == 30
    else:
        assert got["engine"] == "pytest-benchmark"
'''


def test_a_users_own_test_times_through_the_benchmark_fixture(pytester):
    pytester.makepyfile(test_user=USER_TEST)
    serial = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--benchmark-json", "b.json")
    serial.assert_outcomes(passed=1)
    names = sorted(b["name"] for b in json.loads((pytester.path / "b.json").read_text())["benchmarks"])
    assert names == ["test_pruned_is_faster[baseline]", "test_pruned_is_faster[candidate]"]
    xdist = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    xdist.assert_outcomes(passed=1)
    disabled = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--benchmark-disable", "-rs")
    disabled.assert_outcomes(skipped=1)
    disabled.stdout.fnmatch_lines(["*latency not measured: benchmarks are disabled (--benchmark-disable)*"])
