"""``budgets.judges.check_budget`` on a run stand-in: each budget reaches its assertion with the
recipe's limit, including the limits that look false (0), and the planted regression fails."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from optcheck.budgets.judges import check_budget
from optcheck.recipes.budget_schema import Budgets

N = 60


class Fixed(nn.Module):
    """Predicts ``labels`` (the test labels, or some wrong on purpose) for the N test inputs in order."""

    def __init__(self, labels: torch.Tensor):
        super().__init__()
        self.register_buffer("labels", labels)

    def forward(self, x):
        index = x[:, 0].long()
        return nn.functional.one_hot(self.labels[index], 4).float()


def _run(candidate_wrong: int, budgets: dict):
    y = torch.arange(N) % 4
    x = torch.arange(N).float().unsqueeze(1)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    wrong = y.clone()
    wrong[:candidate_wrong] = (wrong[:candidate_wrong] + 1) % 4
    art = {"baseline": SimpleNamespace(model=Fixed(y)), "final": SimpleNamespace(model=Fixed(wrong))}
    recipe = SimpleNamespace(budgets=Budgets(**budgets), seeds=None)
    return SimpleNamespace(recipe=recipe, ctx=SimpleNamespace(test_loader=loader), artifact=art.__getitem__,
                           root_stage=lambda: "baseline", final_stage=lambda: "final")


def test_a_drop_budget_of_zero_is_judged_and_a_positive_drop_fails_it():
    """0 == False once made the budget vanish; one layer lower (``if not limit``) it would pass silently."""
    with pytest.raises(AssertionError) as info:
        check_budget("accuracy_drop_under", _run(3, {"accuracy_drop_under": 0.0}))
    assert "optcheck budget 'accuracy_drop_under' failed" in str(info.value)
    assert "5.00 pp" in str(info.value)  # 3 of 60 samples
    measured = check_budget("accuracy_drop_under", _run(0, {"accuracy_drop_under": 0.0}))
    assert measured["accuracy_drop"] == 0.0  # no drop meets a budget of 0


def test_a_stage_drop_budget_of_zero_is_judged_too():
    run = _run(2, {"accuracy_drop_under": 0.5, "pruned": {"accuracy_drop_under": 0}})
    run.artifact = {"baseline": run.artifact("baseline"), "pruned": run.artifact("final"),
                    "final": run.artifact("baseline")}.__getitem__
    with pytest.raises(AssertionError, match="optcheck budget 'accuracy_drop_under' failed"):
        check_budget(("pruned", "accuracy_drop_under"), run)
