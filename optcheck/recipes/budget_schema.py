"""The ``[budgets]`` tables of a recipe: what a stage must meet (``StageBudgets``), the final stage's
table with the verdict settings and the ``[budgets.<stage>]`` tables (``Budgets``). No torch."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from optcheck.core.limits import check_limit, parse_percent
from optcheck.core.schema import Limit, limit_fields, Strict as _Strict

# the budgets a stage's table takes ([budgets] for the final stage, [budgets.<stage>] for another),
# in the order their items are collected
STAGE_BUDGETS = (
    "flops_below",
    "params_below",
    "size_below",
    "sparsity_at_least",
    "accuracy_drop_under",
    "metric_drop_under",
    "metric_at_least",
    "metric_at_most",
    "restore_roundtrip",
    "onnx_max_abs_diff",
    "onnx_top1_agreement",
    "speedup_at_least",
    "latency_ratio_below",
)
LATENCY_BUDGETS = ("speedup_at_least", "latency_ratio_below")
METRIC_BUDGETS = ("metric_drop_under", "metric_at_least", "metric_at_most")  # one item per team metric named
BUDGETS = ("baseline_accuracy_at_least",) + STAGE_BUDGETS
JUDGED_ONLY = ("flops_below", "params_below", "size_below", "sparsity_at_least", "accuracy_drop_under",
               "onnx_max_abs_diff", "onnx_top1_agreement", "speedup_at_least", "latency_ratio_below")

# Below 40 test samples no accuracy verdict means much: a candidate that predicts exactly like a baseline
# that gets every sample right (no discordant pair) still gets a 95% paired interval (Newcombe) of the drop
# of +-8.76 pp at n = 40, +-11.35 pp at n = 30, +-27.75 pp at n = 10, +-79.35 pp at n = 1
# (``core.stats.agreement_halfwidth``; tests/test_stats.py holds these numbers).
MIN_TEST_SAMPLES = 40


class RoundtripBudget(_Strict):
    atol: float = Field(0.0, ge=0)
    rtol: float = Field(0.0, ge=0)


class StageBudgets(_Strict):
    """The budgets of one stage: ``[budgets]`` judges the final model, ``[budgets.<stage>]`` another."""

    flops_below: Limit | None = Field(None, description="FLOPs; 'N%' of the baseline's")
    params_below: Limit | None = Field(None, description="params; 'N%' of the baseline's")
    size_below: Limit | None = Field(None, description="bytes of the parameters at their real bit-widths; "
                                     "'N%' of the baseline's fp32 size")
    sparsity_at_least: float | None = Field(None, gt=0, le=1, description="zero share of the sparsified "
                                            "layers' weights (0.5 = 2:4)")
    accuracy_drop_under: float | None = Field(None, ge=0, lt=1, description="test accuracy drop against the "
                                              "baseline, a fraction; a drop of 1 (100 pp) cannot be exceeded")
    metric_drop_under: dict[str, Limit] = Field(
        {}, description="per team metric ([[metrics]] name = limit): how much worse than the baseline's value, "
        "in the metric's bad direction: an absolute amount (0.02) or 'N%' of the baseline's value")
    metric_at_least: dict[str, float] = Field({}, description="floors of higher-is-better metrics")
    metric_at_most: dict[str, float] = Field({}, description="ceilings of lower-is-better metrics")
    restore_roundtrip: bool | RoundtripBudget | None = Field(
        None, description="mto.save then mto.restore into a freshly built model reproduces the stage's model")
    onnx_max_abs_diff: float | None = Field(None, ge=0, allow_inf_nan=False, description="largest absolute "
                                            "difference of the logits, onnxruntime vs PyTorch eval, on the test split")
    onnx_top1_agreement: float | None = Field(None, gt=0, le=1, description="share of test samples whose "
                                              "predicted class is the same in onnxruntime and in PyTorch")
    speedup_at_least: float | None = Field(None, gt=0, allow_inf_nan=False, description="the stage's median "
                                           "latency against the baseline's, as a speed-up: 1.2 = at least 1.2x faster, "
                                           "measured as set in [latency]")
    latency_ratio_below: float | None = Field(None, gt=0, allow_inf_nan=False, description="the stage's latency "
                                              "over the baseline's at most this (0.8 = 20% faster; 5 = at most 5x "
                                              "slower, for fake quantization), measured as set in [latency]")
    report_only: list[Literal[JUDGED_ONLY]] = Field(  # type: ignore[valid-type]
        [], description="budgets of this table that are measured and reported but never fail the run (a "
        "breach is a warning); only these may take a limit that cannot fail, such as flops_below = '100%'")

    _limits = limit_fields("flops_below", "params_below", "size_below")

    @field_validator("metric_drop_under", mode="before")
    @classmethod
    def _metric_limits(cls, v: object) -> object:
        if isinstance(v, dict):
            for name, limit in v.items():
                if isinstance(limit, (int, float)) and not isinstance(limit, bool) and limit == 0:
                    continue  # 0: the strictest budget (no drop at all), not a missing one
                try:
                    check_limit(limit)
                except ValueError as exc:
                    raise ValueError(f"@{name}: {exc} || fix: an amount >= 0, or 'N%' of the "
                                     "baseline's value") from None
        return v

    @model_validator(mode="after")
    def _can_fail(self) -> "StageBudgets":
        for name in ("flops_below", "params_below", "size_below"):
            limit = getattr(self, name)
            if isinstance(limit, str) and parse_percent(limit) == 1.0 and name not in self.report_only:
                raise ValueError(f"@{name}: {name} = {limit!r} can never fail (no compressed model is larger than "
                                 f"its baseline) || fix: set a limit under 100%, or list it in report_only = "
                                 f"[\"{name}\"] to measure it without judging")
        off = [n for n in self.report_only if getattr(self, n) is None]
        if off:
            raise ValueError(f"@report_only: report_only lists {off} but the recipe sets no such budget || fix: remove it from "
                             f"report_only, or set the budget")
        return self

    def active(self) -> list[str]:
        """This table's budget names in schema order, a team metric's as ``metric_drop_under[<name>]``;
        ``restore_roundtrip = false`` is off."""
        # a budget of 0 is the strictest budget, not a missing one (0 == False in Python)
        out = []
        for name in STAGE_BUDGETS:
            value = getattr(self, name)
            if name in METRIC_BUDGETS:
                out += [f"{name}[{metric}]" for metric in value]
            elif value is not None and value is not False:
                out.append(name)
        return out

    def limit(self, budget: str) -> Any:
        """The limit of ``budget`` as ``active`` names it (``metric_drop_under[f1]`` -> its entry)."""
        name, _, metric = budget.partition("[")
        value = getattr(self, name)
        return value[metric.rstrip("]")] if metric else value


class Budgets(StageBudgets):
    baseline_accuracy_at_least: float | Literal["auto"] = Field(
        "auto", description="the trained baseline's test accuracy floor (a fraction); 'auto' = halfway "
        "from chance (the test split's majority-class share) to 100%: a baseline below it learned too little "
        "for any budget relative to it to mean anything")
    accuracy_rule: Literal["point", "not_significantly_over", "assured_under"] = Field(
        "point", description="how accuracy budgets use the paired interval of the drop: the observed "
        "drop (point); fail only when the whole interval is over the limit; pass only when it is under")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="confidence level of the accuracy intervals")
    min_test_samples: int = Field(
        MIN_TEST_SAMPLES, ge=1, description="the fewest test samples a verdict may rest on (the test split "
        "is checked before anything trains); at 40, predictions identical to a baseline that gets every "
        "sample right still leave a 95% interval of the drop of +-8.76 pp, wider below")
    stages: dict[str, StageBudgets] = Field(
        {}, description="[budgets.<stage>] tables: the budgets of a stage before the final one")

    @model_validator(mode="before")
    @classmethod
    def _stage_tables(cls, data: object) -> object:
        """``[budgets.<stage>]`` tables (any table under [budgets] that is not a budget) go to ``stages``;
        ``pre_finetune_drop_under`` (optcheck <= 0.2) says how to write it now."""
        if not isinstance(data, dict):
            return data
        if "pre_finetune_drop_under" in data:
            v = data["pre_finetune_drop_under"]
            raise ValueError(f"@pre_finetune_drop_under: pre_finetune_drop_under was replaced by per-stage budgets || fix: "
                             f"delete it and write a table for the stage your fastnas step produces: "
                             f"[budgets.pruned] then accuracy_drop_under = {v!r}")
        known = set(cls.model_fields)
        tables = {k: v for k, v in data.items() if k not in known and isinstance(v, dict)}
        if not tables:
            return data
        if "stages" in data:
            raise ValueError("@stages: write stage budgets as [budgets.<stage>] tables, not under 'stages' || "
                             "fix: e.g. [budgets.pruned] then accuracy_drop_under = 0.1")
        rest = {k: v for k, v in data.items() if k not in tables}
        return {**rest, "stages": tables}

    @field_validator("baseline_accuracy_at_least", mode="before")
    @classmethod
    def _floor(cls, v: object) -> object:
        # before the union is tried: one clear problem instead of one per member, and no true -> 1.0
        if v == "auto":
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"{v!r} is neither 'auto' nor a fraction: 0.9 means 90% test accuracy")
        if not 0 < v <= 1:
            raise ValueError(f"{v!r} is not a fraction in (0, 1]: 0.9 means 90% test accuracy")
        return v

    def active(self) -> list[str]:
        """The final stage's budget names, the baseline's floor first."""
        return ["baseline_accuracy_at_least", *super().active()]

    def table(self, stage: str | None) -> StageBudgets:
        """The budget table of ``stage`` (None: the final stage's, i.e. [budgets] itself)."""
        return self if stage is None else self.stages[stage]

    def refs(self) -> list[tuple[str | None, str]]:
        """Every budget as ``(stage, name)``: stage None for [budgets] (the final model; the baseline's
        floor is in it too), then each [budgets.<stage>] table in file order."""
        return [(None, n) for n in self.active()] + [(stage, n) for stage, t in self.stages.items() for n in t.active()]
