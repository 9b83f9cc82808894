"""Where each check runs under pytest-xdist, and how many threads a worker's builds get.

One recipe's checks all need the same artifacts (baseline, subnet, ...). Spread over workers, every
worker would import, load and restore them, and with ``--optcheck-no-cache`` train them again. So
under ``-n N`` (xdist's default ``--dist load``) optcheck hands xdist a scheduler that keeps the
items of one recipe file together on one worker and spreads the recipes over the workers; every
other test is its own unit, as under ``load``.

xdist's own ``--dist loadgroup`` with the ``xdist_group`` marker the items also carry would do the
grouping, but on pytest 9.2 + xdist 3.8 it silently groups nothing (pytest-dev/pytest-xdist#1386:
the node-id rewrite it relies on no longer takes effect), and the README's ``-n auto`` does not
select it anyway. An explicit ``--dist`` on the command line is respected.

Threads: with fewer recipes to build than workers, a worker that builds alone should use the idle
cores. ``threads_for`` gives a worker ``cores // min(workers, recipes to build)``. And a stage that
every recipe to build needs (the shipped digits recipes share one baseline) is built by one worker
while the others wait on its cache lock: ``stage_threads`` gives such a stage all the cores. Both are
decided from the collected recipes alone, the same on every worker, so a session's cache keys (which
hold the thread count) do not depend on which worker got there first.
"""

from __future__ import annotations

import os


def recipe_scope(nodeid: str) -> str:
    """The unit of work a node id belongs to: its recipe file for an optcheck item
    (``recipes/a.toml::flops_below`` -> ``recipes/a.toml``), its model for a zoo item
    (``zoo/tv.toml::model[resnet18]::restore`` -> ``zoo/tv.toml::model[resnet18]``: the models of a
    zoo spread over the workers, a model's phases stay together), the node id itself otherwise."""
    parts = nodeid.split("::")
    if not parts[0].endswith(".toml"):
        return nodeid
    if len(parts) > 1 and parts[1].startswith("model[") and parts[1].endswith("]"):
        return "::".join(parts[:2])
    return parts[0]


def explicit_dist(args: list[str]) -> bool:
    """Did the command line choose a distribution mode (``--dist X``, ``--dist=X``, ``-d``)?"""
    return any(a == "--dist" or a.startswith("--dist=") or a == "-d" for a in args)


def make_scheduler(config, log):
    """A ``LoadScopeScheduling`` whose scopes are recipe files (``recipe_scope``)."""
    from xdist.scheduler import LoadScopeScheduling

    class RecipeScheduling(LoadScopeScheduling):
        """Items of one recipe file on one worker; other tests one by one, as under ``load``."""

        def _split_scope(self, nodeid: str) -> str:
            return recipe_scope(nodeid)

    return RecipeScheduling(config, log)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_for(workers: int, recipes: int, cores: int | None = None) -> int | None:
    """torch threads for a worker's builds: the cores shared among the workers that build at the same
    time (at most one per recipe). None (torch's default) outside xdist."""
    if workers <= 1:
        return None
    cores = cores or usable_cores()
    busy = max(1, min(workers, recipes))
    return max(1, cores // busy)


def stage_threads(lineages: list[dict[str, str]], cores: int | None = None) -> list[dict[str, int]]:
    """For each recipe to build (``keys.stage_lineage``: stage -> what it is built from), the stages
    that every one of them needs, with all the cores: no other build can start before such a stage
    exists, so its builder would otherwise leave the waiting workers' cores idle. Empty with fewer
    than two recipes (one recipe already gets every core: ``threads_for``)."""
    if len(lineages) < 2:
        return [{} for _ in lineages]
    cores = cores or usable_cores()
    common = set.intersection(*(set(lin.values()) for lin in lineages))
    return [{stage: cores for stage, sig in lin.items() if sig in common} for lin in lineages]


def oversubscribed(threads: int, workers: int, cores: int | None = None) -> str | None:
    """What to say when ``workers`` xdist workers with ``threads`` torch threads each ask for more
    threads than there are cores (None when they fit): OpenMP threads that share a core spin while
    they wait for each other."""
    cores = cores or usable_cores()
    if workers < 2 or workers * threads <= cores:
        return None
    return (f"--optcheck-threads {threads} with {workers} xdist workers asks for {workers * threads} torch threads "
            f"on {cores} cores: OpenMP threads that share a core spin while they wait, and every build slows "
            f"down several times; use --optcheck-threads auto (cores / workers: {max(1, cores // workers)}) or "
            "fewer workers")


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)`` with 1 <= K <= N; a usage error otherwise."""
    import pytest

    k, sep, n = str(text).partition("/")
    if not (sep and k.strip().isdigit() and n.strip().isdigit() and 1 <= int(k) <= int(n)):
        raise pytest.UsageError(f"--optcheck-shard {text!r}: write K/N with 1 <= K <= N, e.g. --optcheck-shard 1/2 "
                                "(the first of two shards)")
    return int(k), int(n)


def shard_items(items: list, k: int, n: int) -> tuple[list, list]:
    """``(kept, dropped)``: the items of shard ``k`` of ``n``. The units (``recipe_scope``: a recipe
    file, a zoo model, any other test) are dealt round-robin in collection order, so every machine
    that collects the same tests splits them the same way, and no unit is split."""
    order: dict[str, int] = {}
    for item in items:
        order.setdefault(recipe_scope(item.nodeid), len(order))
    keep, drop = [], []
    for item in items:
        (keep if order[recipe_scope(item.nodeid)] % n == k - 1 else drop).append(item)
    return keep, drop


def worker_threads(setting: str, recipes: int | None = None) -> int | None:
    """torch threads per process: ``auto`` splits the usable cores among the xdist workers that
    build at the same time (``schedule.threads_for``; every worker until the number of recipes to
    build is known after collection)."""
    if setting == "auto":
        workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
        return threads_for(workers, workers if recipes is None else recipes)
    return int(setting)
