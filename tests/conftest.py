"""Shared helpers: a tiny synthetic recipe that runs the whole pipeline in seconds on CPU; and how
the suite runs in parallel (`pytest tests -n 2 --dist loadfile`, the README's command)."""

from __future__ import annotations

import os
import sys

import pytest

# Two xdist workers on 2 cores, each with torch's default 2 threads (the numbers the tests expect), plus
# the subprocess sessions some tests start: more OpenMP threads than cores. Threads that wait for each
# other then spin by default and a build beside another one took about 4x longer; passive waiting makes
# them sleep instead (numerics unchanged). Set before any test imports torch: the workers inherit it.
# Measured on this 2-core machine: the suite 14:30 serially, 7:42 with -n 2 and this setting.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# and under xdist one torch thread per worker by default: two workers fill two cores, and a second thread
# on these small models buys little speed for its CPU time (tests that need a count set it themselves)
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# the longest file first: its end-to-end sessions take about as long as all the other files together,
# so under -n 2 one worker runs it while the other runs the rest (collection order is the schedule:
# pytest_configure below turns off xdist's reordering of files by their number of tests)
FIRST = ("test_digits_recipe.py",)


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: 0 if item.path.name in FIRST else 1)  # stable: the rest keep their order


# seconds per test file (setup + call + teardown of its tests), printed at the end of every run of the
# suite: where CI's time goes, file by file, without a second run (`--durations` lists tests, not files)
_FILE_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report):
    name = report.nodeid.split("::", 1)[0]
    _FILE_SECONDS[name] = _FILE_SECONDS.get(name, 0.0) + (report.duration or 0.0)


def pytest_terminal_summary(terminalreporter, config):
    if hasattr(config, "workerinput") or not _FILE_SECONDS:
        return
    total = sum(_FILE_SECONDS.values())
    terminalreporter.write_sep("=", f"seconds per test file (summed over workers: {total:.0f} s)")
    for name, seconds in sorted(_FILE_SECONDS.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{seconds:8.1f} s  {name}")


# torch's default thread count in this process, before any test ran (torch may not be imported yet)
_THREADS_AT_START = int(os.environ.get("OMP_NUM_THREADS") or 0) or len(os.sched_getaffinity(0))


@pytest.fixture(autouse=True, scope="session")
def not_an_xdist_worker():
    """Under `pytest tests -n 2` (the README's command) a worker carries xdist's variables into the
    pytest runs the tests start (pytester, subprocesses): optcheck and pytest-benchmark would take
    those runs for xdist workers too. Session-scoped, so module fixtures that start runs see it."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
            mp.delenv(name, raising=False)
        yield


@pytest.fixture(autouse=True)
def torch_threads_restored():
    """A ``RecipeRun`` with ``threads`` sets torch's process-wide thread count (as it must in a real
    session); here it must not leak into later tests, whose numbers depend on it (a stage built with
    1 thread differs from one built with 2, e.g. the tiny recipe's fine-tuned 75.00% vs 77.08%).
    Restored to the count the process started with, not the one before the test: a module- or
    session-scoped fixture that builds a run with 1 thread sets it before this fixture looks."""
    yield
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != _THREADS_AT_START:
        torch.set_num_threads(_THREADS_AT_START)


# the data, model and training of every tiny recipe (format-escaped braces: TINY_RECIPE is a template)
TINY_HEAD = """
description = "synthetic + small_cnn + FastNAS: the whole pipeline in seconds"
seed = 0

[data]
dataset = "synthetic"
batch_size = 32
options = { samples = 240, classes = 4, image_size = 16 }

[model]
name = "small_cnn"

[train]
epochs = 6
lr = 0.4
warmup_epochs = 0.5
"""

TINY_RECIPE = TINY_HEAD.replace("{", "{{").replace("}", "}}") + """
[[steps]]
kind = "fastnas"
flops = "{flops}"
channel_divisor = 4
feature_divisor = 4
calib_batches = 4

[[steps]]
kind = "finetune"
epochs = 3
lr_scale = 0.1

[budgets]
{budgets}
"""

TINY_BUDGETS = """flops_below = "70%"
accuracy_drop_under = 0.25
restore_roundtrip = true
"""


def tiny_recipe(flops: str = "60%", budgets: str = TINY_BUDGETS) -> str:
    return TINY_RECIPE.format(flops=flops, budgets=budgets)


@pytest.fixture
def tiny_recipe_text():
    return tiny_recipe


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A ``RecipeRun`` of the tiny recipe with every stage built once for the test session."""
    from optcheck.pipeline.run import RecipeRun
    from optcheck.recipes.loader import load_recipe

    path = tmp_path_factory.mktemp("tiny") / "tiny.toml"
    path.write_text(tiny_recipe())
    run = RecipeRun(load_recipe(path), device="cpu", seed=0,
                    workdir=lambda: tmp_path_factory.mktemp("tiny-work"))
    for stage in run.available_stages():
        run.artifact(stage)
    return run
