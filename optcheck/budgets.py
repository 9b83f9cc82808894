"""Each recipe budget is judged by one public assertion on the run's artifacts."""

from __future__ import annotations

from typing import Any

from .assertions import (assert_accuracy_drop_under, assert_flops_below, assert_params_below,
                         assert_restore_roundtrip, assert_same_model)
from .pipeline import RecipeRun


def check_budget(name: str, run: RecipeRun) -> dict[str, Any]:
    """Judge budget ``name`` of ``run``'s recipe; raises ``AssertionError`` when it is broken.

    Returns the measured values (for reports and JUnit properties).
    """
    __tracebackhide__ = True
    budgets = run.recipe.budgets
    limit = getattr(budgets, name)
    baseline = run.artifact("baseline")
    ctx = run.ctx
    if name == "flops_below":
        final = run.artifact(run.final_stage())
        flops = assert_flops_below(final.model, limit, dummy_input=ctx.dummy_input(),
                                   reference=baseline.metrics.flops)
        return {"flops": int(flops), "baseline_flops": baseline.metrics.flops}
    if name == "params_below":
        final = run.artifact(run.final_stage())
        params = assert_params_below(final.model, limit, reference=baseline.metrics.params)
        return {"params": int(params), "baseline_params": baseline.metrics.params}
    if name == "accuracy_drop_under":
        final = run.artifact(run.final_stage())
        drop = assert_accuracy_drop_under(baseline.model, final.model, ctx.test_loader, limit)
        return {"accuracy_drop": drop, "test_n": final.metrics.test_n}
    if name == "pre_finetune_drop_under":
        restored = run.artifact("restored")
        drop = assert_accuracy_drop_under(baseline.model, restored.model, ctx.test_loader, limit)
        return {"pre_finetune_drop": drop, "test_n": restored.metrics.test_n}
    if name == "restore_roundtrip":
        tol = {} if limit is True else {"atol": limit.atol, "rtol": limit.rtol}
        example = next(iter(ctx.test_loader))[0][:8].to(ctx.device)
        # the pipeline's own restore: the pruned subnet rebuilt from its checkpoint
        assert_same_model(run.artifact("pruned").model, run.artifact("restored").model,
                          example_input=example, **tol)
        # and the final model through a fresh mto.save / mto.restore
        final = run.artifact(run.final_stage())
        assert_restore_roundtrip(final.model, ctx.make_model, example_input=example, **tol)
        return {"roundtrip": "exact" if not tol else tol}
    raise KeyError(f"unknown budget {name!r}")
