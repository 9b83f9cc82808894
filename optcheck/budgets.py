"""Each recipe budget is judged by one public assertion on the run's artifacts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .assertions import (assert_accuracy_at_least, assert_flops_below, assert_paired_drop_under,
                         assert_params_below, assert_restore_roundtrip, assert_same_model,
                         paired_accuracy_drop)
from .pipeline import RecipeRun


def check_budget(name: str, run: RecipeRun, seed_runs: Callable[[], list[RecipeRun]] | None = None,
                 record: dict[str, Any] | None = None) -> dict[str, Any]:
    """Judge budget ``name`` of ``run``'s recipe; raises ``AssertionError`` when it is broken.

    ``seed_runs()`` gives one run per seed of a recipe with ``seeds = [...]`` (``run`` first): the
    accuracy budgets are then judged on the mean drop over them. Returns the measured values (for
    reports and JUnit properties); an accuracy budget also puts them into ``record`` before it
    judges, so a failed one still reports its interval and rule.
    """
    __tracebackhide__ = True
    budgets = run.recipe.budgets
    limit = getattr(budgets, name)
    baseline = run.artifact("baseline")
    ctx = run.ctx
    if name == "baseline_accuracy_at_least":
        acc = assert_accuracy_at_least(baseline.model, ctx.test_loader, limit)
        return {"baseline_acc": acc["accuracy"], "floor": acc["floor"], "chance": acc["chance"],
                "explain": acc["explain"]}
    if name == "flops_below":
        final = run.artifact(run.final_stage())
        flops = assert_flops_below(final.model, limit, dummy_input=ctx.dummy_input(),
                                   reference=baseline.metrics.flops)
        return {"flops": int(flops), "baseline_flops": baseline.metrics.flops}
    if name == "params_below":
        final = run.artifact(run.final_stage())
        params = assert_params_below(final.model, limit, reference=baseline.metrics.params)
        return {"params": int(params), "baseline_params": baseline.metrics.params}
    if name in ("accuracy_drop_under", "pre_finetune_drop_under"):
        from .stats import decide, mean_drop

        stage = run.final_stage() if name == "accuracy_drop_under" else "restored"
        runs = seed_runs() if seed_runs is not None and run.recipe.seeds else [run]
        drops = [paired_accuracy_drop(r.artifact("baseline").model, r.artifact(stage).model, r.ctx.test_loader,
                                      budgets.confidence) for r in runs]
        drop = drops[0] if len(drops) == 1 else mean_drop(drops, budgets.confidence)
        measured = {"accuracy_drop": drop.drop, "ci_low": drop.low, "ci_high": drop.high,
                    "rule": budgets.accuracy_rule, "test_n": drops[0].n, "seeds": len(drops),
                    "explain": decide(drop, limit, budgets.accuracy_rule).explain()}
        if record is not None:
            record.update(measured)
        assert_paired_drop_under(drop, limit, rule=budgets.accuracy_rule, budget=name)
        return measured
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
