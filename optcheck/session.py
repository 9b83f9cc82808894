"""Per-session optcheck state: settings, one ``RecipeRun`` per recipe, verdicts for the summary."""

from __future__ import annotations

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
    runs: dict[Path, Any] = field(default_factory=dict)
    verdicts: dict[Path, dict[str, tuple[str, dict]]] = field(default_factory=dict)
    bad_recipes: set[str] = field(default_factory=set)  # node ids of recipe files that failed validation
    collect_failures: set[str] = field(default_factory=set)  # node ids of every failed collector

    def run_for(self, recipe) -> Any:
        """The session's one ``RecipeRun`` for this recipe file (stages then run at most once)."""
        from .pipeline import RecipeRun

        key = Path(recipe.path).resolve()
        if key not in self.runs:
            seed = self.seed if self.seed is not None else (
                recipe.seed if recipe.seed is not None else self.default_seed)
            workdir = (lambda: self.basetemp(f"optcheck-{recipe.name}")) if self.basetemp else None
            self.runs[key] = RecipeRun(recipe, device=self.device, seed=seed, workdir=workdir, log=self.log)
        return self.runs[key]

    def record(self, run, budget: str, outcome: str, details: dict) -> None:
        self.verdicts.setdefault(Path(run.recipe.path).resolve(), {})[budget] = (outcome, details)


def get_state(config: pytest.Config) -> OptcheckState:
    return config.stash[STATE_KEY]


def make_basetemp(config: pytest.Config) -> Callable[[str], Path]:
    factory = getattr(config, "_tmp_path_factory", None)  # set by pytest's tmp_path plugin
    if factory is not None:
        return lambda name: factory.mktemp(name, numbered=True)
    return lambda name: Path(tempfile.mkdtemp(prefix=f"{name}-"))
