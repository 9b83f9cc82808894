"""The xdist unit of work and the thread split (``optcheck/schedule.py``); the scheduler itself runs
under ``-n 2`` in tests/test_plugin_ci.py."""

from __future__ import annotations

import pytest

from optcheck.plugin.schedule import explicit_dist, recipe_scope, stage_threads, threads_for


@pytest.mark.parametrize(("nodeid", "scope"), [
    ("recipes/a.toml::flops_below", "recipes/a.toml"),
    ("recipes/a.toml::ledger[baseline]", "recipes/a.toml"),
    ("recipes/sub/b.toml::quantized::size_below", "recipes/sub/b.toml"),
    ("tests/test_x.py::test_one", "tests/test_x.py::test_one"),
    ("tests/test_x.py::TestA::test_one[1]", "tests/test_x.py::TestA::test_one[1]"),
])
def test_a_recipes_items_share_one_scope_and_other_tests_are_their_own(nodeid, scope):
    assert recipe_scope(nodeid) == scope


@pytest.mark.parametrize(("args", "explicit"), [
    (["--optcheck", "-n", "auto"], False),
    (["--optcheck", "-n", "2", "--dist", "load"], True),
    (["-n", "2", "--dist=loadfile"], True),
    (["-n", "2", "-d"], True),
    (["--distload"], False),
])
def test_an_explicit_dist_is_recognised(args, explicit):
    assert explicit_dist(args) is explicit


@pytest.mark.parametrize(("workers", "recipes", "cores", "threads"), [
    (0, 3, 2, None),  # not under xdist: torch's default
    (1, 3, 8, None),
    (2, 1, 2, 2),  # one recipe builds: its worker takes both cores
    (2, 2, 2, 1),
    (2, 5, 2, 1),
    (4, 2, 8, 4),
    (4, 0, 8, 8),  # nothing builds (all skipped): no split needed
    (8, 8, 2, 1),  # never below one
])
def test_threads_share_the_cores_among_workers_that_build(workers, recipes, cores, threads):
    assert threads_for(workers, recipes, cores) == threads


def test_a_stage_every_recipe_needs_gets_all_the_cores():
    a = {"baseline": "B", "pruned": "P", "finetuned": "F1"}
    b = {"baseline": "B", "pruned": "P", "distilled": "D"}
    c = {"baseline": "B", "quantized": "Q"}
    assert stage_threads([a, b], cores=4) == [{"baseline": 4, "pruned": 4}, {"baseline": 4, "pruned": 4}]
    assert stage_threads([a, b, c], cores=2) == [{"baseline": 2}, {"baseline": 2}, {"baseline": 2}]
    other_seed = {"baseline": "B1", "quantized": "Q1"}
    assert stage_threads([a, other_seed], cores=2) == [{}, {}]  # nothing shared: the usual split
    assert stage_threads([a], cores=2) == [{}]  # one recipe already gets every core
    assert stage_threads([], cores=2) == []


def test_the_stage_lineage_follows_what_a_stage_is_built_from(tmp_path):
    from conftest import tiny_recipe

    from optcheck.pipeline.keys import stage_lineage
    from optcheck.recipes.loader import load_recipe

    def lineage(text, seed=0, name="r.toml"):
        (tmp_path / name).write_text(text)
        return stage_lineage(load_recipe(tmp_path / name), seed)

    base = lineage(tiny_recipe())
    assert list(base) == ["baseline", "pruned", "finetuned"]
    assert lineage(tiny_recipe(), name="copy.toml") == base  # the file's name is not what it builds
    assert lineage(tiny_recipe(), seed=1)["baseline"] != base["baseline"]
    other_target = lineage(tiny_recipe(flops="65%"))
    assert other_target["baseline"] == base["baseline"] and other_target["pruned"] != base["pruned"]
    budgets_only = lineage(tiny_recipe(budgets='flops_below = "80%"\n'))
    assert budgets_only == base  # budgets judge a stage; they do not build it


@pytest.mark.parametrize(("threads", "workers", "cores", "says"), [
    (2, 2, 2, True), (1, 2, 2, False), (2, 1, 2, False), (4, 2, 8, False), (4, 3, 8, True)])
def test_more_threads_than_cores_for_the_workers_is_said(threads, workers, cores, says):
    from optcheck.plugin.schedule import oversubscribed

    text = oversubscribed(threads, workers, cores)
    assert (text is not None) == says
    if says:
        assert f"asks for {threads * workers} torch threads on {cores} cores" in text
        assert f"--optcheck-threads auto (cores / workers: {max(1, cores // workers)})" in text


def test_an_oversubscribing_thread_count_under_xdist_warns_at_the_start(pytester, tiny_recipe_text):
    """`-n 2 --optcheck-threads <cores>` once ran the main job several times slower, silently."""
    pytest.importorskip("xdist")
    import os

    cores = len(os.sched_getaffinity(0))
    (pytester.path / "recipes").mkdir()
    (pytester.path / "recipes" / "tiny.toml").write_text(tiny_recipe_text())
    over = pytester.runpytest_subprocess("--optcheck", "--co", "-n", "2", "--optcheck-threads", str(cores),
                                         "--optcheck-ledger", "off", "-p", "no:cacheprovider")
    assert f"ThreadsWarning: --optcheck-threads {cores} with 2 xdist workers asks for {2 * cores}" in over.stdout.str()
    fine = pytester.runpytest_subprocess("--optcheck", "--co", "-n", "2", "--optcheck-ledger", "off",
                                         "-p", "no:cacheprovider")
    assert "ThreadsWarning" not in fine.stdout.str()
