"""Recipe schema and loader. A recipe is a TOML file; this module never imports torch."""

from __future__ import annotations

import difflib
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from . import steps as step_registry
from .errors import Problem, RecipeError
from .limits import check_limit, parse_percent
from .schema import Limit, Strict as _Strict
from .steps.fastnas import FastNASStep  # noqa: F401  (re-exported: defined here before the registry)
from .steps.finetune import FinetuneStep  # noqa: F401

DATASETS = ("digits", "cifar10", "synthetic")
DATASET_OPTIONS = {"digits": ("image_size", "channels"), "cifar10": (), "synthetic": ("samples", "classes", "image_size", "noise")}
MODELS = ("resnet20", "small_cnn")
FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
TORCHVISION = re.compile(r"^torchvision:[A-Za-z_]\w*$")
# the budgets a stage's table takes ([budgets] for the final stage, [budgets.<stage>] for another),
# in the order their items are collected
STAGE_BUDGETS = (
    "flops_below",
    "params_below",
    "size_below",
    "sparsity_at_least",
    "accuracy_drop_under",
    "restore_roundtrip",
    "onnx_max_abs_diff",
    "onnx_top1_agreement",
    "speedup_at_least",
    "latency_ratio_below",
)
LATENCY_BUDGETS = ("speedup_at_least", "latency_ratio_below")
BUDGETS = ("baseline_accuracy_at_least",) + STAGE_BUDGETS
JUDGED_ONLY = ("flops_below", "params_below", "size_below", "sparsity_at_least", "accuracy_drop_under",
               "onnx_max_abs_diff", "onnx_top1_agreement", "speedup_at_least", "latency_ratio_below")

# scikit-learn's random_state takes [0, 2**32 - 1] and the val split uses seed + 1
SEED_MAX = 2**32 - 2
# file-safe: a recipe's name becomes part of folder names (working files, cache entries, reports)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Below 40 test samples no accuracy verdict means much: even a candidate whose predictions equal the
# baseline's on every sample (no discordant pair) gets a 95% paired interval (Newcombe) of the drop of
# +-8.4 pp at n = 40, +-11.0 pp at n = 30, +-27.8 pp at n = 10, +-79.3 pp at n = 1 (``stats``).
MIN_TEST_SAMPLES = 40
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]


class DataConfig(_Strict):
    dataset: str = "digits"
    root: str | None = None
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    train_limit: int | None = Field(None, gt=0)
    test_limit: int | None = Field(None, gt=0)
    batch_size: int = Field(128, ge=2, description="BatchNorm in training mode needs 2 samples per batch")
    eval_batch_size: int = Field(512, gt=0)
    num_workers: int = Field(0, ge=0)
    augment: list[Literal["hflip", "crop"]] = ["hflip", "crop"]
    crop_padding: int = Field(4, ge=1, description="the padded random crop's padding in pixels (CIFAR's 4 at 32x32)")
    options: dict[str, Any] = {}

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        if v in DATASETS or FACTORY.match(v):
            return v
        raise ValueError(f"unknown dataset {v!r}")

    @model_validator(mode="after")
    def _known_options(self) -> "DataConfig":
        allowed = DATASET_OPTIONS.get(self.dataset)
        if allowed is None:
            return self  # a factory: its signature is checked when it is called
        unknown = sorted(set(self.options) - set(allowed))
        if unknown:
            near = {u: difflib.get_close_matches(u, allowed, n=1) for u in unknown}
            hints = "; ".join(f"{u!r}: did you mean {n[0]!r}?" for u, n in near.items() if n)
            raise ValueError(f"@options: dataset {self.dataset!r} takes no option {', '.join(map(repr, unknown))} "
                             f"(it takes: {', '.join(allowed) or 'none'}) || fix: "
                             f"{hints or 'remove it from data.options'}")
        for key in ("image_size", "samples", "classes"):
            value = self.options.get(key)
            if key in allowed and value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 2):
                raise ValueError(f"@options.{key}: must be an integer >= 2 (got {value!r}) || fix: "
                                 f"write e.g. {key} = 16")
        channels = self.options.get("channels")
        if "channels" in allowed and channels is not None and (isinstance(channels, bool) or channels not in (1, 3)):
            raise ValueError(f"@options.channels: must be 1 (grey, as the images are) or 3 (the grey copied into RGB) "
                             f"(got {channels!r}) || fix: write channels = 1")
        return self


class ModelConfig(_Strict):
    name: str = "resnet20"
    options: dict[str, Any] = {}

    @field_validator("name")
    @classmethod
    def _known_model(cls, v: str) -> str:
        if v in MODELS or TORCHVISION.match(v) or FACTORY.match(v):
            return v
        raise ValueError(f"unknown model {v!r}")


class TrainConfig(_Strict):
    epochs: int = Field(10, ge=1)
    lr: float = Field(0.1, gt=0, description="learning rate at batch size 128; scaled linearly")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)

    @model_validator(mode="after")
    def _warmup_inside(self) -> "TrainConfig":
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must be less than epochs ({self.epochs})"
            )
        return self


Step = Annotated[Union[step_registry.schemas()], Field(discriminator="kind")]  # type: ignore[valid-type]


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

    @field_validator("flops_below", "params_below", "size_below", mode="before")
    @classmethod
    def _limit(cls, v: object) -> object:
        return v if v is None else check_limit(v)

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
        """This table's budget names in schema order; ``restore_roundtrip = false`` is off."""
        # a budget of 0 is the strictest budget, not a missing one (0 == False in Python)
        return [name for name in STAGE_BUDGETS if getattr(self, name) is not None and getattr(self, name) is not False]


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
        "is checked before anything trains); below 40 even identical predictions leave a 95% interval of "
        "the drop wider than +-10 pp")
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


class LedgerDefaults(_Strict):
    """Tolerances written into new regression-ledger entries of this recipe (each entry keeps its own)."""

    accuracy_tolerance: float = Field(0.01, ge=0, le=1, description="absolute, two-sided")
    bytes_tolerance: float = Field(0.05, ge=0, description="relative, two-sided")
    architecture_tolerance: float = Field(
        0.10, ge=0, description="relative, two-sided, for FLOPs and params of a searched stage (the "
        "baseline's are exact); 0.10 covers the 37.2M..40.4M FLOPs spread measured on the digits recipe")


class LatencyConfig(_Strict):
    """How the latency budgets measure (``optcheck.latency``): interleaved rounds of the stage's model
    and the baseline's, one call each per round, after warm-up rounds; never absolute times."""

    runtime: Literal["torch", "onnxruntime"] = Field(
        "torch", description="torch: eval mode under inference_mode; onnxruntime: the model exported as the "
        "onnx_* budgets export it, run on the CPU provider")
    batch_size: int = Field(1, ge=1, description="inputs per call (test images, tiled if the split is smaller)")
    threads: int = Field(1, ge=1, description="intra-op threads of both runtimes while timing")
    rounds: int = Field(200, ge=20, description="timed rounds; the ratio's interval narrows with more; "
                        "pytest-benchmark's --benchmark-min-rounds raises it")
    warmup_rounds: int = Field(20, ge=0, description="untimed rounds first")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="of the interval of the median ratio")


PROPERTY_CHECKS = ("restore_exact", "export_matches_converted", "flops_match", "flops_monotone")


class PropertiesConfig(_Strict):
    """Property checks over the whole search space of the recipe's FastNAS step (``optcheck.properties``):
    each check is one test item, run by Hypothesis over drawn subnets of the untrained model."""

    checks: list[Literal[PROPERTY_CHECKS]] = Field(  # type: ignore[valid-type]
        min_length=1, description="restore_exact | export_matches_converted | flops_match | flops_monotone")
    examples: int = Field(20, ge=1, le=10_000, description="subnets Hypothesis draws per check (max_examples)")
    deadline_ms: float | None = Field(None, gt=0, description="Hypothesis's limit per subnet; none by default")
    batch_size: int = Field(2, ge=1, description="the example input's batch (random, seeded by the recipe's seed)")

    @field_validator("checks")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"checks {v} name a check twice || fix: list each check once")
        return v


class Recipe(_Strict):
    name: str
    description: str = ""
    seed: Seed | None = None
    seeds: list[Seed] | None = Field(None, min_length=2, description="judge accuracy budgets on the mean "
                                    "drop over these seeds (each a cached build); the first is the seed of "
                                    "every other check")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    steps: list[Step] = []
    budgets: Budgets
    latency: LatencyConfig = LatencyConfig()
    properties: PropertiesConfig | None = None
    ledger: LedgerDefaults = LedgerDefaults()
    path: Path | None = Field(None, exclude=True)

    @field_validator("name")
    @classmethod
    def _file_safe(cls, v: str) -> str:
        if NAME.match(v) and len(v) <= 100:
            return v
        safe = re.sub(r"[^A-Za-z0-9._-]+", "-", v).strip("-.")[:100] or "recipe"
        raise ValueError(f"name {v!r} is not file-safe (it names folders and cache entries; without a name "
                         f"key it is the file's name); e.g. name = {safe!r}, or rename the file")

    @model_validator(mode="after")
    def _coherent(self) -> "Recipe":
        if self.data.test_limit is not None and self.data.test_limit < self.budgets.min_test_samples:
            raise ValueError(
                f"@data.test_limit: data.test_limit = {self.data.test_limit} is below budgets.min_test_samples = "
                f"{self.budgets.min_test_samples}: a verdict on so few test samples means little (a 95% "
                f"interval of +-10 pp or wider) || fix: raise test_limit, or lower min_test_samples knowingly")
        if self.seeds is not None:
            if len(set(self.seeds)) != len(self.seeds):
                raise ValueError(f"@seeds: seeds {self.seeds} repeat a seed: each seed is one independent build || fix: list each seed once")
            if self.seed is not None and self.seed != self.seeds[0]:
                raise ValueError(f"@seeds: seed = {self.seed} and seeds = {self.seeds}: give one of them (with seeds, "
                                 f"the first one is the recipe's seed) || fix: remove seed")
        names = [stage.name for stage in step_registry.plan(self)]
        for i, step in enumerate(self.steps):
            if step.name is not None and not (NAME.match(step.name) and len(step.name) <= 60):
                raise ValueError(f"@steps[{i}].name: name {step.name!r} is not file-safe (it names the stage's files, "
                                 "node ids and [budgets.<name>]) || fix: use letters, digits, '.', '_' and '-'")
        for name in dict.fromkeys(names):
            if names.count(name) > 1:
                where = [f"steps[{i - 1}]" if i else "the baseline" for i, n in enumerate(names) if n == name]
                raise ValueError(f"@steps: two stages are named {name!r} ({' and '.join(where)}) || fix: give the "
                                 f"later step its own name, e.g. name = '{name}2'")
        if not self.steps and [r for r in self.budgets.refs() if r[1] != "baseline_accuracy_at_least"]:
            raise ValueError("@steps: the recipe has no [[steps]], so its budgets would compare the baseline with "
                             "itself and could never fail || fix: add a [[steps]] table (kind = "
                             f"{' | '.join(map(repr, step_registry.listable()))})")
        if self.properties is not None and self.step("fastnas") is None:
            raise ValueError("@properties: property checks draw subnets from a FastNAS search space, and this recipe "
                             "has no kind = \"fastnas\" step || fix: add a fastnas step, or remove [properties]")
        if self.budgets.refs() == [(None, "baseline_accuracy_at_least")]:
            raise ValueError("@budgets: a recipe needs at least one budget under [budgets] that judges the compressed model || fix: add e.g. accuracy_drop_under = 0.01")
        for stage in self.budgets.stages:
            if stage not in names:
                near = difflib.get_close_matches(stage, names + list(STAGE_BUDGETS), n=1)
                raise ValueError(f"@budgets.{stage}: there is no stage {stage!r}; this recipe's stages are "
                                 f"{', '.join(names)} || fix: " + (f"did you mean {near[0]!r}?" if near else
                                 "name a stage a step produces (a step's name, or its kind's default)"))
            if stage == names[0]:
                raise ValueError(f"@budgets.{stage}: budgets of the baseline would compare it with itself || fix: "
                                 "remove the table (baseline_accuracy_at_least under [budgets] judges the baseline)")
            if stage == names[-1]:
                raise ValueError(f"@budgets.{stage}: {stage!r} is the final stage, which [budgets] judges || fix: "
                                 f"move these budgets into [budgets]")
        return self

    def step(self, kind: str):
        """The first step of ``kind``, or None."""
        return next((s for s in self.steps if s.kind == kind), None)


_FIXES = {
    "data.dataset": (
        "digits | cifar10 | synthetic | 'package.module:function'",
        "use one of the built-in names, or point at a factory function as 'package.module:function'",
    ),
    "model.name": (
        "resnet20 | small_cnn | 'torchvision:NAME' | 'package.module:function'",
        "use a built-in name, a torchvision classification model as 'torchvision:resnet18', "
        "or a factory as 'package.module:function'",
    ),
}


_LIMIT_HELP = ("a positive number, or 'N%' of the baseline with 0 < N <= 100", "")
_FRACTION_HELP = ("a fraction in [0, 1): 0.02 means 2 percentage points; 0 allows no drop at all", "")
_SEED_HELP = (f"an integer in [0, {SEED_MAX}] (scikit-learn's random_state range; the val split uses seed + 1)", "")
_FIXES_BY_KEY = {
    "seed": _SEED_HELP,
    "seeds": _SEED_HELP,
    "name": ("letters, digits, '.', '_' and '-', starting with a letter or digit, at most 100", ""),
    "batch_size": ("an integer >= 2 (BatchNorm in training mode needs two samples per batch)", ""),
    "flops": _LIMIT_HELP,
    "params": _LIMIT_HELP,
    "flops_below": _LIMIT_HELP,
    "params_below": _LIMIT_HELP,
    "accuracy_drop_under": _FRACTION_HELP,
    "baseline_accuracy_at_least": ("a fraction in (0, 1], or 'auto'", ""),
    "pre_finetune_drop_under": _FRACTION_HELP,
}


_UNION_MEMBERS = {"bool", "float", "int", "str", "RoundtripBudget", "list[int]", "none"}


def _field_name(loc: tuple) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts[-1:] = [f"{parts[-1]}[{p}]"] if parts else [f"[{p}]"]
        elif p == "stages" and parts and parts[-1] == "budgets":
            continue  # [budgets.<stage>] tables live in Budgets.stages
        elif p in step_registry.KINDS and parts and parts[-1].startswith("steps["):
            continue  # pydantic adds the union tag to the path
        elif p in _UNION_MEMBERS or str(p).startswith(("literal[", "function-")):
            continue  # and the member of a union (`restore_roundtrip.bool`) that did not match
        else:
            parts.append(str(p))
    return ".".join(parts) or "<recipe>"


def _schema_for(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the field at ``loc`` (for listing allowed keys)."""
    model: type[BaseModel] | None = Recipe
    stage_name = False
    for p in loc[:-1]:
        if model is None:
            return None
        if stage_name:  # the <stage> of budgets.stages.<stage>
            stage_name, model = False, StageBudgets
            continue
        if model is Budgets and p == "stages":
            stage_name = True
            continue
        if isinstance(p, int):
            continue
        if p in step_registry.KINDS and step_registry.KINDS[p].schema is not None:
            model = step_registry.KINDS[p].schema
            continue
        field = model.model_fields.get(str(p))
        if field is None:
            return None
        ann = field.annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if str(p) == "steps":
            model = None  # resolved by the tag that follows
    return model


def _problem(err: dict) -> Problem:
    loc = tuple(err["loc"])
    name = _field_name(loc)
    etype = err["type"]
    given = err.get("input")
    if etype == "extra_forbidden":
        owner = _schema_for(loc)
        allowed = sorted(k for k in owner.model_fields if k != "path") if owner else []
        near = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        fix = f"did you mean '{near[0]}'?" if near else "remove it"
        return Problem(name, "unknown key", ", ".join(allowed), fix)
    if etype == "missing":
        return Problem(name, "missing required field", fix=f"add '{loc[-1]}' to the recipe")
    if etype == "union_tag_invalid" or etype == "union_tag_not_found":
        kind = given.get("kind") if isinstance(given, dict) else given
        allowed = "kind = " + " | ".join(map(repr, step_registry.listable()))
        if isinstance(kind, str) and kind in step_registry.UNAVAILABLE:
            return Problem(f"{name}.kind", f"step kind {kind!r} cannot run here", allowed,
                           step_registry.UNAVAILABLE[kind])
        near = difflib.get_close_matches(str(kind), step_registry.listable(), n=1) if kind else []
        return Problem(
            name, f"unknown or missing step kind (got {kind!r})", allowed,
            f"did you mean {near[0]!r}?" if near else "set kind to one of the allowed step kinds",
        )
    msg = err["msg"].removeprefix("Value error, ")
    if msg.startswith("@"):  # a model-level check names its field: "@data.test_limit: ..."
        sub, _, msg = msg[1:].partition(": ")
        name = f"{name}.{sub}" if name != "<recipe>" else sub
        msg, _, fix = msg.partition(" || fix: ")
        return Problem(name, msg, fix=fix)
    key = next((str(p) for p in reversed(loc) if not isinstance(p, int) and _field_name((p,)) not in ("", "<recipe>")),
               "") if loc else ""
    allowed, fix = _FIXES.get(name, _FIXES_BY_KEY.get(key, ("", "")))
    if etype == "less_than" and key in ("accuracy_drop_under", "pre_finetune_drop_under"):
        msg = f"{key} = {given!r} can never fail: no drop exceeds 100 pp"
        fix = f"write the drop you can accept as a fraction, e.g. {key} = 0.01 for 1 pp"
    if isinstance(given, str) and etype in ("int_type", "float_type", "bool_type", "model_type", "dict_type"):
        bare = given.strip().lower()
        plain = bare if bare in ("true", "false") else given.strip()
        try:
            float(plain)
            looks = True
        except ValueError:
            looks = bare in ("true", "false")
        if looks:
            fix = (f"write it without quotes: {loc_key(name)} = {plain} (TOML has real numbers and booleans; "
                   f"optcheck never converts a string)")
        else:
            msg = f"{msg} (got the string {given!r}; TOML's booleans are true and false, never words like 'off')" \
                if etype == "bool_type" else msg
    if not fix:
        fix = f"change '{name}' (got {given!r})" if name != "<recipe>" else "see the message above"
    return Problem(name, msg, allowed, fix)


def loc_key(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _dedupe(problems: list[Problem]) -> list[Problem]:
    """One problem per field: a union reports each member that failed (keep the first)."""
    seen, out = set(), []
    for p in problems:
        if p.field not in seen:
            seen.add(p.field)
            out.append(p)
    return out


def parse_recipe(raw: dict, path: Path) -> Recipe:
    """Validate a recipe's data. Raises ``RecipeError`` listing every problem."""
    data = dict(raw)
    data.setdefault("name", path.stem)
    try:
        return Recipe.model_validate({**data, "path": path})
    except ValidationError as exc:
        raise RecipeError(str(path), _dedupe([_problem(e) for e in exc.errors()])) from None


def read_recipe_file(path: str | Path) -> dict:
    """A recipe file's TOML data. Raises ``RecipeError`` naming the file for unreadable text."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(str(path), [Problem("<file>", f"not UTF-8 text (byte {exc.start}: {exc.reason})",
                                              fix="save the recipe as UTF-8; TOML files are UTF-8")]) from None
    except OSError as exc:
        raise RecipeError(str(path), [Problem("<file>", f"cannot read: {exc.strerror}",
                                              fix="check the path given to optcheck_recipe / --optcheck-recipes")]) from None
    if text.startswith("\ufeff"):
        raise RecipeError(str(path), [Problem(
            "<file>", "the file starts with a UTF-8 byte-order mark (BOM), which TOML does not allow",
            fix="save the file as UTF-8 without BOM (e.g. in VS Code: 'Save with Encoding' -> 'UTF-8'; or "
                "run: sed -i '1s/^\\xEF\\xBB\\xBF//' " + path.name + ")")])
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(str(path), [Problem("<syntax>", f"not valid TOML: {exc}",
                                              fix="fix the TOML syntax at the line and column given")]) from None


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file. Raises ``RecipeError`` naming the file and the fields."""
    raw = read_recipe_file(path)
    from .zoo_recipe import is_zoo

    if is_zoo(raw):
        raise RecipeError(str(path), [Problem("zoo", "this is a zoo recipe (a [zoo] table of models), not a "
                                              "pipeline recipe", fix="run it with pytest --optcheck; the recipe "
                                              "fixtures and --optcheck-calibrate take pipeline recipes")])
    return parse_recipe(raw, Path(path))


def load_any(path: str | Path):
    """A pipeline ``Recipe``, or a ``ZooRecipe`` for a file with a ``[zoo]`` table."""
    raw = read_recipe_file(path)
    from .zoo_recipe import is_zoo, parse_zoo

    return parse_zoo(raw, Path(path)) if is_zoo(raw) else parse_recipe(raw, Path(path))
