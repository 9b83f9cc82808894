"""Per-session optcheck state: settings, the cache and ledger, one ``RecipeRun`` per recipe (and seed),
the thread count, the zoo session, and the verdicts and ledger comparisons gathered so far.

The results as plain data (what an xdist worker sends home, and their merge) are ``results.py``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

STATE_KEY = pytest.StashKey["OptcheckState"]()


@dataclass
class OptcheckState:
    enabled: bool
    device: str
    seed: int | None  # from the command line: overrides a recipe's own seed
    default_seed: int  # from the ini file: used when the recipe sets none
    basetemp: Callable[[str], Path] | None = None
    log: Callable[[str], None] = lambda _m: None
    rootdir: Path = Path(".")
    worker: str = "main"  # the xdist worker id ("gw0", ...) or "main"
    threads: int | None = None  # torch intra-op threads for building artifacts (None: torch's default)
    threads_auto: bool = False  # ``auto``: re-decided once the recipes to build are known (``retune_threads``)
    cache: Any = None  # ArtifactCache, or None when caching is off
    cache_note: str = "off"
    ledger: Any = None  # Ledger, or None when the ledger is off
    update: str | None = None  # None, "failed" (--optcheck-update) or "all" (--optcheck-update-all)
    runs: dict[Path, Any] = field(default_factory=dict)
    extra_runs: dict[tuple[Path, int], Any] = field(default_factory=dict)  # the other seeds of ``seeds = [...]``
    verdicts: dict[str, dict[str, dict]] = field(default_factory=dict)  # recipe path -> check -> verdict
    ledger_checks: dict[str, dict[str, dict]] = field(default_factory=dict)  # recipe path -> stage -> details
    ledger_updates: dict[tuple[str, str, str], dict] = field(default_factory=dict)
    remote: list[dict] = field(default_factory=list)  # exports received from xdist workers
    final: dict | None = None  # the merged results and metadata, once the session has finished
    bad_recipes: set[str] = field(default_factory=set)  # node ids of recipe files that failed validation
    collect_failures: set[str] = field(default_factory=set)  # node ids of every failed collector
    zoo: Any = None  # ZooSession, once a zoo item runs

    def zoo_session(self) -> Any:
        """This process's zoo models (``zoo_session.py``). Threads: the explicit setting, else (auto)
        the cores shared among the xdist workers."""
        if self.zoo is None:
            from optcheck.plugin.schedule import threads_for
            from optcheck.zoo.session import ZooSession

            workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
            threads = threads_for(workers, workers) if self.threads_auto else self.threads
            self.zoo = ZooSession(self.cache, self.basetemp, self.log, threads)
        return self.zoo

    def run_for(self, recipe) -> Any:
        """The session's one ``RecipeRun`` for this recipe file (stages then run at most once)."""
        key = Path(recipe.path).resolve()
        if key not in self.runs:
            seed = self.seed if self.seed is not None else (
                recipe.seeds[0] if recipe.seeds else recipe.seed if recipe.seed is not None else self.default_seed)
            self.runs[key] = self._new_run(recipe, seed)
        return self.runs[key]

    def seed_runs_for(self, recipe) -> list[Any]:
        """One run per seed of ``recipe.seeds`` (the recipe's own run first); just that run when the
        recipe has no ``seeds`` or ``--optcheck-seed`` fixes one."""
        first = self.run_for(recipe)
        if not recipe.seeds or self.seed is not None:
            return [first]
        key = Path(recipe.path).resolve()
        out = [first]
        for seed in recipe.seeds[1:]:
            if (key, seed) not in self.extra_runs:
                self.extra_runs[(key, seed)] = self._new_run(recipe, seed)
            out.append(self.extra_runs[(key, seed)])
        return out

    def _new_run(self, recipe, seed: int) -> Any:
        from optcheck.pipeline.run import RecipeRun

        workdir = (lambda: self.basetemp(f"optcheck-{recipe.name}")) if self.basetemp else None
        return RecipeRun(recipe, device=self.device, seed=seed, workdir=workdir, log=self.log,
                         cache=self.cache, threads=self.threads)

    def retune_threads(self, recipes: list) -> None:
        """After collection, with ``auto`` threads under xdist, given the recipes that will build: a
        worker with idle siblings (fewer recipes than workers) builds with their cores too, and a stage
        every recipe needs is built with all the cores (``schedule.stage_threads``). Cache keys hold
        the thread count, so they are recomputed."""
        if not self.threads_auto:
            return
        from optcheck.pipeline.keys import stage_lineage
        from optcheck.plugin.schedule import stage_threads, worker_threads

        self.threads = worker_threads("auto", len(recipes))
        runs = [run for recipe in recipes for run in self.seed_runs_for(recipe)]
        lineages = [stage_lineage(run.recipe, run.seed) for run in runs]
        # without a cache there is no lock: every worker would build the shared stage, all at once
        shared = stage_threads(lineages) if self.threads and self.cache is not None else [{} for _ in runs]
        for run, own in zip(runs, shared):
            run.set_threads(self.threads, own)
        for run in [*self.runs.values(), *self.extra_runs.values()]:
            if run not in runs:
                run.set_threads(self.threads)

    def relpath(self, path) -> str:
        try:
            return Path(path).resolve().relative_to(self.rootdir.resolve()).as_posix()
        except ValueError:
            return str(path)

    def record_verdict(self, recipe_path: str, check: str, verdict: dict) -> None:
        self.verdicts.setdefault(recipe_path, {})[check] = verdict


def get_state(config: pytest.Config) -> OptcheckState:
    return config.stash[STATE_KEY]


def make_basetemp(config: pytest.Config) -> Callable[[str], Path]:
    """Working folders under pytest's own temporary directory (``--basetemp``, kept for the last 3
    sessions by pytest's retention), looked up when first needed: pytest's tmp_path plugin sets up its
    factory in a ``pytest_configure`` that may run after ours. Without that plugin (``-p no:tmpdir``)
    the folders are removed at the end of the session."""

    def make(name: str) -> Path:
        from optcheck.core.private_api import tmp_path_factory

        factory = tmp_path_factory(config)  # set by pytest's tmp_path plugin
        if factory is not None:
            return factory.mktemp(name, numbered=True)
        path = Path(tempfile.mkdtemp(prefix=f"{name}-"))
        config.add_cleanup(lambda: shutil.rmtree(path, ignore_errors=True))
        return path

    return make
