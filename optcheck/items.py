"""pytest collection nodes: a recipe file, and one item per budget it declares."""

from __future__ import annotations

from typing import Any

import pytest

from .errors import DatasetMissing, OptcheckError, RecipeError

DISABLED_REASON = "optcheck recipes run only with --optcheck (pytest --optcheck)"


class RecipeFile(pytest.File):
    """``recipes/<name>.toml``: validated at collection, then one ``BudgetItem`` per budget."""

    def collect(self):
        from .recipe import load_recipe
        from .session import get_state

        state = get_state(self.config)
        try:
            recipe = load_recipe(self.path)
            skip_reason = None
            if state.enabled:
                run = state.run_for(recipe)
                try:
                    run.preflight()
                except DatasetMissing as exc:
                    skip_reason = str(exc)
            else:
                run, skip_reason = None, DISABLED_REASON
        except RecipeError as exc:
            state.bad_recipes.add(self.nodeid)
            exc.path = self.nodeid.split("::")[0]  # as pytest shows it: relative to the rootdir
            raise self.CollectError(str(exc)) from None
        for budget in recipe.budgets.active():
            item = BudgetItem.from_parent(self, name=budget, budget=budget, run=run)
            if skip_reason:
                item.add_marker(pytest.mark.skip(reason=skip_reason))
            yield item


class BudgetItem(pytest.Item):
    """``recipes/<name>.toml::<budget>``: passes when the compressed model meets that budget."""

    def __init__(self, *, budget: str, run: Any, **kwargs):
        super().__init__(**kwargs)
        self.budget = budget
        self.run = run

    def runtest(self) -> None:
        from .budgets import check_budget
        from .session import get_state

        measured = check_budget(self.budget, self.run)
        for key, value in measured.items():
            self.user_properties.append((f"optcheck.{key}", value))
        get_state(self.config).record(self.run, self.budget, "passed", measured)

    def repr_failure(self, excinfo, style=None):
        from .session import get_state

        if self.run is not None:
            get_state(self.config).record(self.run, self.budget, "failed", {"error": str(excinfo.value)})
        if isinstance(excinfo.value, (AssertionError, OptcheckError)) and not self.config.getoption("fulltrace"):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        # not a suffix of the node id, so pytest prints node ids untouched and this as the headline
        return self.path, 0, f"{self.budget} ({self.path.name})"
