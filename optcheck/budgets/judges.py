"""Each recipe budget is judged by one public assertion on one stage's artifact.

A budget is ``(stage, name)``: ``stage`` None is ``[budgets]``, which judges the final stage (and the
baseline's own floor, ``baseline_accuracy_at_least``); ``[budgets.<stage>]`` judges that stage. The
reference of every relative limit and of every accuracy drop is the baseline (the plan's first
stage). One function per budget, all over one routine (``check_budget``), as pytest-regressions
has one module per check over one shared routine.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optcheck.pipeline.run import RecipeRun


@dataclass(frozen=True)
class Judged:
    """What a judge is given: the run, the stage it judges, the limit, and the seed runs."""

    run: RecipeRun
    stage: str
    limit: Any
    seed_runs: Callable[[], list[RecipeRun]]
    record: dict[str, Any]
    benchmark: Any = None  # a pytest-benchmark fixture for the latency budgets (items.BudgetItem builds it)
    # under xdist, with pytest-benchmark output asked for: the timed series go home in the report
    # (``latency_series``), and the controller hands them to pytest-benchmark (plugin.results)
    ship_series: bool = False

    @property
    def subject(self):
        return self.run.artifact(self.stage)

    @property
    def baseline(self):
        return self.run.artifact(self.run.root_stage())


def _floor(j: Judged) -> dict[str, Any]:
    from optcheck.checks.assertions import assert_accuracy_at_least

    acc = assert_accuracy_at_least(j.baseline.model, j.run.ctx.test_loader, j.limit)
    return {"baseline_acc": acc["accuracy"], "floor": acc["floor"], "chance": acc["chance"], "explain": acc["explain"]}


def _flops(j: Judged) -> dict[str, Any]:
    from optcheck.checks.assertions import assert_flops_below

    flops = assert_flops_below(j.subject.model, j.limit, dummy_input=j.run.ctx.dummy_input(),
                               reference=j.baseline.metrics.flops)
    return {"flops": int(flops), "baseline_flops": j.baseline.metrics.flops}


def _params(j: Judged) -> dict[str, Any]:
    from optcheck.checks.assertions import assert_params_below

    params = assert_params_below(j.subject.model, j.limit, reference=j.baseline.metrics.params)
    return {"params": int(params), "baseline_params": j.baseline.metrics.params}


def _size(j: Judged) -> dict[str, Any]:
    from optcheck.checks.assertions import assert_size_below
    from optcheck.build.measure import weight_bytes

    reference = j.baseline.metrics.size_bytes or weight_bytes(j.baseline.model)
    size = assert_size_below(j.subject.model, j.limit, reference=reference)
    return {"size_bytes": int(size), "baseline_size_bytes": int(reference)}


def _sparsity(j: Judged) -> dict[str, Any]:
    from optcheck.checks.assertions import assert_sparsity_at_least

    return {"sparsity": assert_sparsity_at_least(j.subject.model, j.limit)}


def _accuracy_drop(j: Judged) -> dict[str, Any]:
    from optcheck.checks.assertions import assert_paired_drop_under, paired_accuracy_drop
    from optcheck.core.stats import decide, mean_drop

    budgets = j.run.recipe.budgets
    runs = j.seed_runs() if j.run.recipe.seeds else [j.run]
    drops = [paired_accuracy_drop(r.artifact(r.root_stage()).model, r.artifact(j.stage).model, r.ctx.test_loader,
                                  budgets.confidence) for r in runs]
    drop = drops[0] if len(drops) == 1 else mean_drop(drops, budgets.confidence)
    measured = {"accuracy_drop": drop.drop, "ci_low": drop.low, "ci_high": drop.high,
                "rule": budgets.accuracy_rule, "test_n": drops[0].n, "seeds": len(drops),
                "explain": decide(drop, j.limit, budgets.accuracy_rule).explain()}
    j.record.update(measured)  # before judging: a failed budget still reports its interval and rule
    assert_paired_drop_under(drop, j.limit, rule=budgets.accuracy_rule, budget="accuracy_drop_under")
    return measured


def _roundtrip(j: Judged) -> dict[str, Any]:
    """The stage's model saved and restored by its engine (``mto.save`` / ``mto.restore``, or
    Torch-Pruning's for a Torch-Pruning subnet) into a freshly built model of the architecture it
    descends from, compared."""
    from optcheck.checks.restore import ENGINES, assert_restore_roundtrip, pick_engine
    from optcheck.pipeline.checkpoints import fresh_model

    tol = {} if j.limit is True else {"atol": j.limit.atol, "rtol": j.limit.rtol}
    ctx, subject = j.run.ctx, j.subject
    stage = j.run.stages[j.stage]
    kind = stage.kind
    example = next(iter(ctx.test_loader))[0][:8].to(ctx.device)
    # the engine the stage's own checkpoint uses (a custom step declares it); else told from the model
    engine = stage.checkpoint if stage.checkpoint in ENGINES else pick_engine(subject.model, fresh_model(
        ctx, subject.files, kind))
    assert_restore_roundtrip(subject.model, lambda: fresh_model(ctx, subject.files, kind), example_input=example,
                             engine=engine, **tol)
    return {"roundtrip": "exact" if not tol else tol, "engine": engine}


def _onnx(j: Judged, name: str) -> dict[str, Any]:
    """The stage's model exported to ONNX (kept in the run's working folder) and run with onnxruntime
    on the test split, against the model in PyTorch eval mode (``assert_onnx_parity``); one export
    per stage and session serves both ONNX budgets."""
    from optcheck.checks.assertions import assert_onnx_parity
    from optcheck.checks.onnx_parity import ExportError, compare

    ctx, model = j.run.ctx, j.subject.model
    got = _PARITY.get(model)
    if got is None:
        example = next(iter(ctx.test_loader))[0][:2].to(ctx.device)
        try:
            got = compare(model, ctx.test_loader, ctx.workdir / f"{j.stage}.onnx", example)
        except ExportError as exc:
            got = exc
        _PARITY[model] = got
    out = assert_onnx_parity(model, None, measured=got, **{name.removeprefix("onnx_"): j.limit})
    out["explain"] = (f"onnxruntime vs PyTorch on {out['n']} test samples: max |diff| {out['max_abs_diff']:.3g}, "
                      f"top-1 agreement {out['top1_agreement']:.2%}; graph {out['nodes']} nodes "
                      f"({out['qdq_nodes']} Q/DQ), {out['onnx_bytes']:,} bytes")
    return out


_PARITY: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()  # model -> Parity | ExportError


def _latency(j: Judged, name: str) -> dict[str, Any]:
    """The stage's model timed against the baseline's, interleaved in this process, as the recipe's
    [latency] table says (``latency.measure``); both latency budgets of a stage share one measurement
    per session. A model that does not export fails an onnxruntime latency budget (never a pass)."""
    from optcheck.checks.assertions import assert_latency_ratio_below, assert_speedup_at_least
    from optcheck.checks.latency import Settings, measure
    from optcheck.checks.onnx_parity import ExportError

    ctx, model = j.run.ctx, j.subject.model
    settings = Settings(**j.run.recipe.latency.model_dump())
    got = _LATENCY.get(model)
    if got is None or got[0] != settings:
        example = next(iter(ctx.test_loader))[0].to(ctx.device)
        try:
            latency = measure(j.baseline.model, model, example, settings, benchmark=j.benchmark,
                              workdir=ctx.workdir / f"latency-{j.stage}", roles=(j.run.root_stage(), j.stage))
        except ExportError as exc:
            raise AssertionError(f"optcheck budget '{name}' failed\n  export : {exc}\n  hint   : the latency of a "
                                 "model that does not export to ONNX was not measured; use runtime = \"torch\" in "
                                 "[latency], or fix the export (see the onnx_* budgets)") from None
        got = (settings, latency)
        _LATENCY[model] = got
        if j.ship_series and j.benchmark is not None and latency.times is not None:  # once per measurement
            from optcheck.checks.latency import series

            j.record["latency_series"] = series(j.benchmark.name, j.benchmark.fullname, *latency.times, latency,
                                                (j.run.root_stage(), j.stage))
    latency = got[1]
    check = assert_speedup_at_least if name == "speedup_at_least" else assert_latency_ratio_below
    out = check(model, j.baseline.model, j.limit, measured=latency)
    out["stage"] = j.stage
    out["explain"] = latency.describe()
    return out


_LATENCY: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()  # model -> (Settings, Latency)


def _team_metric(j: Judged, name: str):
    """The metric named ``name`` in ``[[metrics]]``, measured on the baseline and the judged stage."""
    from optcheck.build.metrics import measure_metric

    recipe = j.run.recipe
    index, cfg = next((i, m) for i, m in enumerate(recipe.metrics) if m.name == name)
    ctx = j.run.ctx
    loader = ctx.test_loader if cfg.split == "test" else ctx.val_loader
    base = measure_metric(cfg, index, j.baseline.model, loader, ctx.device, j.run.path)
    cand = measure_metric(cfg, index, j.subject.model, loader, ctx.device, j.run.path)
    return cfg, base, cand


def _metric_drop(j: Judged, name: str) -> dict[str, Any]:
    """A team metric's drop against the baseline, in its bad direction, with its paired interval when
    it gives per-sample values (``core.metric_stats``); judged under ``budgets.accuracy_rule``."""
    from optcheck.checks.team_metrics import assert_metric_drop_under
    from optcheck.core.metric_stats import decide_metric, metric_drop

    budgets = j.run.recipe.budgets
    cfg, base, cand = _team_metric(j, name)
    drop = metric_drop(name, cfg.better, base, cand, budgets.confidence)
    from optcheck.core.limits import parse_percent

    fraction = parse_percent(j.limit) if isinstance(j.limit, str) else None
    limit = fraction * abs(drop.base) if fraction is not None else float(j.limit)
    j.record.update({"metric": name, "baseline": drop.base, "candidate": drop.cand, "drop": drop.drop,
                     "ci_low": drop.low, "ci_high": drop.high, "rule": budgets.accuracy_rule,
                     "explain": decide_metric(drop, limit, budgets.accuracy_rule)[1]})
    return assert_metric_drop_under(None, None, max_drop=j.limit, measured=drop, rule=budgets.accuracy_rule,
                                    budget=f"metric_drop_under[{name}]")


def _metric_bound(j: Judged, name: str, budget: str) -> dict[str, Any]:
    from optcheck.checks.team_metrics import assert_metric_bound

    cfg, base, cand = _team_metric(j, name)
    j.record.update({"metric": name, "candidate": cand.value, "baseline": base.value})
    out = assert_metric_bound(None, bound=j.limit, better=cfg.better, name=name, measured=cand.value,
                              budget=f"{budget}[{name}]")
    out["explain"] = (f"{name} ({cfg.better} is better): {cand.value:.6g} (baseline {base.value:.6g}) vs "
                      f"{'floor' if budget == 'metric_at_least' else 'ceiling'} {j.limit:.6g}")
    return out


JUDGES: dict[str, Callable[[Judged], dict[str, Any]]] = {
    "baseline_accuracy_at_least": _floor,
    "flops_below": _flops,
    "params_below": _params,
    "size_below": _size,
    "sparsity_at_least": _sparsity,
    "accuracy_drop_under": _accuracy_drop,
    "restore_roundtrip": _roundtrip,
    "onnx_max_abs_diff": lambda j: _onnx(j, "onnx_max_abs_diff"),
    "onnx_top1_agreement": lambda j: _onnx(j, "onnx_top1_agreement"),
    "speedup_at_least": lambda j: _latency(j, "speedup_at_least"),
    "latency_ratio_below": lambda j: _latency(j, "latency_ratio_below"),
}


# a team metric's budgets, one item per metric: ``metric_drop_under[<name>]``
METRIC_JUDGES: dict[str, Callable[[Judged, str], dict[str, Any]]] = {
    "metric_drop_under": _metric_drop,
    "metric_at_least": lambda j, name: _metric_bound(j, name, "metric_at_least"),
    "metric_at_most": lambda j, name: _metric_bound(j, name, "metric_at_most"),
}


def budget_id(stage: str | None, name: str) -> str:
    """How a budget is named in node ids, reports and the verdict cache: ``name`` for [budgets],
    ``stage::name`` for [budgets.<stage>]."""
    return name if stage is None else f"{stage}::{name}"


def check_budget(budget: str | tuple[str | None, str], run: RecipeRun,
                 seed_runs: Callable[[], list[RecipeRun]] | None = None,
                 record: dict[str, Any] | None = None, benchmark: Any = None,
                 ship_series: bool = False) -> dict[str, Any]:
    """Judge one budget of ``run``'s recipe: ``name`` of [budgets], or ``(stage, name)``; raises
    ``AssertionError`` when it is broken.

    ``seed_runs()`` gives one run per seed of a recipe with ``seeds = [...]`` (``run`` first): the
    accuracy budgets are then judged on the mean drop over them. ``benchmark``: a pytest-benchmark
    fixture the latency budgets time through (``latency.py``). Returns the measured values (for
    reports and JUnit properties); an accuracy budget also puts them into ``record`` before it
    judges, so a failed one still reports its interval and rule.
    """
    __tracebackhide__ = True
    stage, name = (None, budget) if isinstance(budget, str) else budget
    base, _, metric = name.partition("[")
    if base not in JUDGES and base not in METRIC_JUDGES:
        raise KeyError(f"unknown budget {name!r}")
    limit = run.recipe.budgets.table(stage).limit(name)
    target = run.final_stage() if stage is None else stage
    judged = Judged(run, target, limit, seed_runs or (lambda: [run]), record if record is not None else {},
                    benchmark, ship_series)
    if metric:
        return METRIC_JUDGES[base](judged, metric.rstrip("]"))
    return JUDGES[name](judged)
