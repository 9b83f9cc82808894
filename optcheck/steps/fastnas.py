"""``kind = "fastnas"``: Model Optimizer's FastNAS pruning (``mtp.prune``), saved with ``mto.save``.

The search keeps the best subnet under one FLOPs or params constraint; optcheck re-estimates the
subnet's BatchNorm statistics (``recalibrate_bn``), checks the step's own promise (a subnet over its
constraint is an error here) and, before anything trains, that the target is reachable at all.
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from optcheck.core.errors import Problem, RecipeError
from optcheck.core.schema import Limit, limit_fields
from optcheck.steps.base import FACTORY, StepConfig
from optcheck.steps.base import StepKind


class FastNASStep(StepConfig):
    kind: Literal["fastnas"]
    flops: Limit | None = None
    params: Limit | None = None
    channel_divisor: int = Field(16, ge=1)
    feature_divisor: int = Field(16, ge=1)
    calib_batches: int = Field(20, ge=1, description="BatchNorm calibration batches per subnet")
    score_samples: int | None = Field(None, gt=0, description="val samples the score function uses")
    score: str = Field(
        "log_prob", description="what the search maximises on the val split: 'log_prob' (the mean log-probability "
        "of the true class: no ties), 'accuracy' (top-1: steps of 1/n, near-ties flip between machines), or your "
        "Model Optimizer score_func as 'package.module:function': function(model) or function(model, loader, device)")
    recalibrate_bn: bool = Field(
        True, description="re-estimate the subnet's BatchNorm statistics on the train split after the "
        "search (mtp.prune returns them stale: 10% -> 77% test accuracy measured on digits)")

    _limits = limit_fields("flops", "params")

    @field_validator("score")
    @classmethod
    def _score(cls, v: str) -> str:
        if v in ("log_prob", "accuracy") or FACTORY.match(v):
            return v
        raise ValueError(f"{v!r}: use 'log_prob', 'accuracy', or your score function as 'package.module:function'")

    @model_validator(mode="after")
    def _one_constraint(self) -> "FastNASStep":
        if (self.flops is None) == (self.params is None):
            raise ValueError("give exactly one of 'flops' or 'params' (FastNAS takes one constraint)")
        return self

    @property
    def constraint(self) -> tuple[str, Limit]:
        return ("flops", self.flops) if self.flops is not None else ("params", self.params)  # type: ignore[return-value]


def search_space_config(channel_divisor: int, feature_divisor: int):
    """Model Optimizer's ``FastNASConfig`` with these divisors for every conv, BatchNorm and Linear
    rule: the search space a FastNAS step, the zoo and the property checks convert a model to."""
    from optcheck.core.compat import import_modelopt

    _, _, mtp = import_modelopt()
    config = mtp.fastnas.FastNASConfig()
    for rule in ("nn.Conv1d", "nn.Conv2d", "nn.Conv3d"):
        config[rule]["*"]["channel_divisor"] = channel_divisor
    for rule in ("nn.BatchNorm1d", "nn.BatchNorm2d", "nn.BatchNorm3d", "nn.Linear"):
        config[rule]["*"]["feature_divisor"] = feature_divisor
    return config


def fastnas_config(step: FastNASStep):
    """The search space of ``step`` (its divisors)."""
    return search_space_config(step.channel_divisor, step.feature_divisor)


def score_function(score: str, recipe: str, field: str = "steps[].score"):
    """``(model, loader, device) -> float``: the built-in scores, or the team's function (Model
    Optimizer's ``score_func(model)``, or ``(model, loader, device)`` to get the val loader), its result
    checked to be a finite number."""
    import inspect
    import math

    from optcheck.build.training import evaluate, mean_log_prob

    if score == "log_prob":
        return mean_log_prob
    if score == "accuracy":
        return lambda m, loader, device: evaluate(m, loader, device)[0]
    from optcheck.core.factories import load_factory

    fn = load_factory(score, field, recipe)
    try:
        takes_data = len(inspect.signature(fn).parameters) >= 3
    except (TypeError, ValueError):
        takes_data = False

    def team_score(m, loader, device) -> float:
        got = fn(m, loader, device) if takes_data else fn(m)
        try:
            value = float(got)
        except (TypeError, ValueError):
            raise TypeError(f"the score function {score} returned {type(got).__name__} {got!r}, not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"the score function {score} returned {value}: FastNAS needs a finite score")
        return value

    return team_score


def build(run, parent):
    """Search the best subnet under the step's constraint with ``mtp.prune`` and ``mto.save`` it."""
    from optcheck.build.training import recalibrate_batchnorm
    from optcheck.core.compat import import_modelopt

    _, _, mtp = import_modelopt()
    ctx, step = run.ctx, run.step
    run.seed()
    model = parent.model
    score_loader = ctx.eval_loader("val", step.score_samples)
    measure_score = score_function(step.score, run.path, f"steps[{run.stage.index}].score")
    scored = {"n": 0, "best": -float("inf"), "all": []}

    def score_func(candidate) -> float:
        score = measure_score(candidate, score_loader, ctx.device)
        scored["n"] += 1
        scored["best"] = max(scored["best"], score)
        scored["all"].append(score)
        if scored["n"] % 10 == 0:
            ctx.log(f"fastnas: scored {scored['n']} subnets, best val {step.score} {scored['best']:.4f}")
        return score

    name, value = step.constraint
    search_ckpt = run.file("search_checkpoint.pth")
    ctx.log(f"fastnas: searching under {name} <= {value} "
            f"(channel_divisor={step.channel_divisor}, feature_divisor={step.feature_divisor})")
    model, search = mtp.prune(
        model=model,
        mode=[("fastnas", fastnas_config(step))],
        constraints={name: value},
        dummy_input=ctx.dummy_input(),
        config={"data_loader": ctx.train_loader(), "score_func": score_func,
                "checkpoint": str(search_ckpt), "max_iter_data_loader": step.calib_batches,
                "verbose": False},
    )
    if step.recalibrate_bn:  # the subnet's BatchNorm statistics are those of the full model
        run.seed()
        recalibrate_batchnorm(model, ctx.train_loader(), ctx.device)
    path = run.save_modelopt(model)
    verdict = searcher_verdict(search, name)
    artifact = run.finish(model, {"modelopt": path, "search_checkpoint": search_ckpt},
                          {"subnets_scored": scored["n"], "scores": scored["all"], "search": verdict}, checkpoint=path)
    check_constraint(run, artifact.metrics, run.baseline().metrics, verdict)
    ctx.log(f"fastnas: {scored['n']} subnets scored; subnet has {artifact.metrics.flops:,} FLOPs")
    return artifact


def searcher_verdict(search: Any, name: str) -> dict[str, Any]:
    """Model Optimizer's own verdict on its search, from the state ``mtp.prune`` returns: whether its
    best subnet satisfies the constraint, its count of it, and how many subnets it tried met it."""
    best = search.get("best", {}) if isinstance(search, dict) else {}
    constraints = best.get("constraints") or {}
    return {"is_satisfied": best.get("is_satisfied"), "num_satisfied": search.get("num_satisfied")
            if isinstance(search, dict) else None, "count": constraints.get(name)}


def check_constraint(run, metrics, full, verdict: dict[str, Any] | None = None) -> None:
    """The step checks its own promise: ``run.fail`` when the searched subnet misses the step's FLOPs /
    params constraint (``full``: the baseline's metrics, what a percentage is of).

    Exact: optcheck's count is Model Optimizer's (2 x MACs, BatchNorm excluded; ``inference_flops``
    gives the same number on the converted and the returned model). A miss is Model Optimizer's own
    doing: when no subnet its binary search tries meets the target, ``mtp.prune`` returns the last one
    it tried, with ``best["is_satisfied"] = False`` in its state and no warning. That happens when one
    layer's sensitivity is the map's maximum: the search only tries thresholds strictly below it, so
    it never shrinks that layer (seen on the digits ResNet20 at a 35% target: 7.37M FLOPs for a 7.10M
    limit; tests/test_steps.py plants a score that leaves it at 50%).
    """
    from optcheck.core.limits import human, resolve_limit

    name, limit = run.step.constraint
    reference = full.flops if name == "flops" else full.params
    target = resolve_limit(limit, reference, name)
    got = metrics.flops if name == "flops" else metrics.params
    if got <= target:
        return
    unit = " FLOPs" if name == "flops" else " params"
    said = ""
    if verdict and verdict.get("is_satisfied") is False:
        said = (f"; Model Optimizer's own state agrees (best is_satisfied = False, {verdict.get('num_satisfied')} "
                "subnets satisfied the constraint): its binary search never tried a threshold that shrinks the "
                "most sensitive layer, and it returns its last candidate without a warning")
    run.fail(f"the searched subnet has {human(got, unit)} ({got / reference:.1%} of the baseline), over the step's "
             f"own constraint {name} = {limit!r} = {human(target, unit)}{said}",
             f"check steps[{run.stage.index}]: a score that separates subnets better (more score_samples, a "
             "score less flat than the default), a smaller channel_divisor, or a target the search reaches; "
             "the constraint is counted in Model Optimizer's convention (2 x MACs, BatchNorm excluded)")


# -- before anything trains ------------------------------------------------------------------------

def layer_widths(model) -> list[int]:
    import torch.nn as nn

    return sorted({m.out_channels for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)})


@contextlib.contextmanager
def search_space_errors(ctx, step, index: int, path: str):
    """Around the FastNAS conversion: a divisor larger than every layer leaves Model Optimizer with
    "no configurable hyperparameters"; say which field and which widths instead."""
    try:
        yield
    except Exception as exc:
        if "configurable hyperparameters" not in str(exc):
            raise
        widths = layer_widths(ctx.make_model())
        usable = [d for d in (2, 4, 8, 16, 32, 64) if widths and d < max(widths)]
        raise RecipeError(path, [Problem(
            f"steps[{index}].channel_divisor",
            f"no layer of the model can shrink with channel_divisor = {step.channel_divisor} and feature_divisor "
            f"= {step.feature_divisor}: its conv layers have {', '.join(map(str, widths)) or 'no'} output "
            f"channels, and a layer only gets choices below its width in steps of the divisor",
            f"a divisor below the widest layer ({max(widths) if widths else '-'})",
            f"lower steps[{index}].channel_divisor and feature_divisor"
            + (f", e.g. to {usable[len(usable) // 2]}" if usable else ""))]) from None


def key(recipe, step: FastNASStep, keys, root: str) -> dict:
    return {}


def search_space_bounds(ctx, step: FastNASStep, divisor: int | None = None) -> dict[str, float]:
    """FLOPs and params of the smallest and the full subnet of the FastNAS search space."""
    from optcheck.core.compat import import_modelopt
    from optcheck.build.measure import count_flops, count_params

    mtn, _, _ = import_modelopt()
    if divisor is not None:
        step = step.model_copy(update={"channel_divisor": divisor, "feature_divisor": divisor})
    model = mtn.convert(ctx.make_model(), mode=[("fastnas", fastnas_config(step))])
    out: dict[str, float] = {}
    for which, pick in (("min", min), ("max", max)):
        mtn.sample(model, pick)
        out[f"{which}_flops"] = float(count_flops(model, ctx.dummy_input()))
        # no forward pass: a training-mode BatchNorm on a batch of one would raise
        out[f"{which}_params"] = float(count_params(model))
    return out


def check_target(ctx, step: FastNASStep, index: int, path: str, bounds: dict[str, float]) -> dict[str, float]:
    """Raise ``RecipeError`` if no subnet of the search space (``bounds``: its smallest and full
    model) meets the step's constraint; return the bounds."""
    from optcheck.core.errors import Problem, RecipeError
    from optcheck.core.limits import human, parse_percent

    name, limit = step.constraint
    lo, hi = bounds[f"min_{name}"], bounds[f"max_{name}"]
    frac = parse_percent(limit)
    target = frac * hi if frac is not None else float(limit)
    if target >= lo:
        return bounds
    unit = " FLOPs" if name == "flops" else " params"
    smaller = step.channel_divisor // 2
    hint = ""
    if smaller >= 1 and smaller != step.channel_divisor:
        finer = search_space_bounds(ctx, step, smaller)[f"min_{name}"]
        hint = (f"; with channel_divisor = feature_divisor = {smaller} the smallest subnet has "
                f"{human(finer, unit)} ({finer / hi * 100:.0f}%)")
    raise RecipeError(path, [Problem(
        f"steps[{index}].{name}",
        f"target {limit!r} = {human(target, unit)} is unreachable: the smallest subnet of this search "
        f"space (channel_divisor={step.channel_divisor}, feature_divisor={step.feature_divisor}) "
        f"has {human(lo, unit)} ({lo / hi * 100:.0f}% of the full model's {human(hi, unit)})",
        f">= {human(lo, unit)} (>= {lo / hi * 100:.0f}%)",
        f"raise steps[{index}].{name} to at least {lo / hi * 100:.0f}%, or lower the divisors{hint}",
    )])


def preflight(check) -> None:
    """The search space exists (divisors vs layer widths) and holds a subnet under the target; the
    bounds (cached) also let the budgets check that an absolute limit can fail."""
    from optcheck.core.quiet import library_noise

    ctx, step, index = check.ctx, check.step, check.stage.index
    score_function(step.score, check.path, check.field("score"))  # the team's score function imports
    with check.boundary(f"converting the model to the FastNAS search space ({check.stage.label})",
                        f"check steps[{index}]'s divisors and that the model is a plain CNN that Model "
                        "Optimizer can trace"):
        with search_space_errors(ctx, step, index, check.path), library_noise():
            material = {"model": ctx.recipe.model.model_dump(), "input": list(ctx.data.input_shape),
                        "classes": ctx.data.num_classes, "divisors": [step.channel_divisor, step.feature_divisor]}
            bounds = check.cached("bounds", material, lambda: search_space_bounds(ctx, step))
            check.report_bounds(check_target(ctx, step, index, check.path, bounds))


KIND = StepKind(kind="fastnas", stage="pruned", build=build, schema=FastNASStep, searched=True,
                key=key, preflight=preflight,
                summary="mtp.prune FastNAS under one FLOPs / params constraint, BatchNorm re-estimated")
