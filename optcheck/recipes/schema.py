"""Recipe schema and loader. A recipe is a TOML file; this module never imports torch."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from optcheck.steps import registry as step_registry
from optcheck.core.stats import agreement_halfwidth
from optcheck.recipes.fields import SEED_MAX, check_recipe_name, file_safe
from optcheck.core.schema import Strict as _Strict
from optcheck.recipes.budget_schema import METRIC_BUDGETS, STAGE_BUDGETS, Budgets

DATASETS = ("digits", "cifar10", "synthetic")
DATASET_OPTIONS = {"digits": ("image_size", "channels"), "cifar10": (), "synthetic": ("samples", "classes", "image_size", "noise")}
MODELS = ("resnet20", "small_cnn")
FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
TORCHVISION = re.compile(r"^torchvision:[A-Za-z_]\w*$")
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
    split_seed: int | None = Field(None, ge=0, description=(
        "the seed the splits are drawn with (the dataset function's seed=); default: the run's seed. A recipe "
        "whose baseline is a checkpoint pins it to the split the checkpoint was trained on"))

    def seed_for(self, run_seed: int) -> int:
        """The seed the data is built with: ``split_seed`` when pinned, else the run's seed."""
        return run_seed if self.split_seed is None else self.split_seed

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


CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth")


class ModelConfig(_Strict):
    name: str = "resnet20"
    options: dict[str, Any] = {}
    checkpoint: str | None = Field(None, description="trained weights: a state dict file (.safetensors, or "
                                   ".pt / .pth read with weights_only=True), relative to the recipe's folder; "
                                   "the baseline is loaded, not trained")
    checkpoint_key: str | None = Field(None, description="the entry of a .pt / .pth dict that holds the state "
                                       "dict (e.g. 'model' for torch.save({'model': ..., 'optimizer': ...}))")
    pretrained: bool = Field(False, description="the factory returns a trained model: the baseline is built, "
                                                "not trained")

    @field_validator("name")
    @classmethod
    def _known_model(cls, v: str) -> str:
        if v in MODELS or TORCHVISION.match(v) or FACTORY.match(v):
            return v
        raise ValueError(f"unknown model {v!r}")

    @model_validator(mode="after")
    def _one_source_of_weights(self) -> "ModelConfig":
        if self.checkpoint is not None and not self.checkpoint.lower().endswith(CHECKPOINT_SUFFIXES):
            raise ValueError(f"@checkpoint: {self.checkpoint!r} is neither .safetensors nor .pt / .pth || fix: save the "
                             "model's state dict with safetensors.torch.save_file (no pickle) or torch.save")
        if self.checkpoint_key is not None and self.checkpoint is None:
            raise ValueError("@checkpoint_key: checkpoint_key without a checkpoint || fix: set checkpoint, or remove "
                             "checkpoint_key")
        weights = "weights" in self.options and self.name.startswith("torchvision:")
        given = [n for n, on in (("checkpoint", self.checkpoint is not None), ("pretrained", self.pretrained),
                                 ("options.weights", weights)) if on]
        if len(given) > 1:
            raise ValueError(f"@{given[1]}: {' and '.join(given)} both say where the trained weights come from || "
                             f"fix: keep one of them")
        return self

    @property
    def trained(self) -> bool:
        """Whether the baseline comes trained (a checkpoint, a pretrained factory, torchvision weights)
        rather than trained by ``[train]``."""
        return self.checkpoint is not None or self.pretrained or (
            self.name.startswith("torchvision:") and "weights" in self.options)


class TrainConfig(_Strict):
    epochs: int = Field(10, ge=1)
    lr: float = Field(0.1, gt=0, description="learning rate at batch size 128; scaled linearly")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    function: str | None = Field(None, description="your training loop, 'package.module:function', called as "
                                 "function(model, training) to train the baseline (and every finetune step that "
                                 "names none); default: optcheck's SGD loop")
    options: dict[str, Any] = Field({}, description="passed to your training function as training.options")

    @field_validator("function")
    @classmethod
    def _factory(cls, v: str | None) -> str | None:
        if v is None or FACTORY.match(v):
            return v
        raise ValueError(f"{v!r} is not 'package.module:function'")

    @model_validator(mode="after")
    def _warmup_inside(self) -> "TrainConfig":
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must be less than epochs ({self.epochs})"
            )
        return self


Step = Annotated[Union[step_registry.schemas()], Field(discriminator="kind")]  # type: ignore[valid-type]


class LedgerDefaults(_Strict):
    """Tolerances written into new regression-ledger entries of this recipe (each entry keeps its own)."""

    accuracy_tolerance: float = Field(0.01, ge=0, le=1, description="absolute, two-sided")
    bytes_tolerance: float = Field(0.05, ge=0, description="relative, two-sided")
    architecture_tolerance: float = Field(
        0.10, ge=0, description="relative, two-sided, for FLOPs and params of a searched stage (the "
        "baseline's are exact); 0.10 covers the 37.2M..40.4M FLOPs spread measured on the digits recipe")
    metric_tolerance: float = Field(0.02, ge=0, description="absolute, two-sided, for each team metric "
                                    "([[metrics]]) until calibrated")


class LatencyConfig(_Strict):
    """How the latency budgets measure (``optcheck.checks.latency``): interleaved rounds of the stage's model
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


METRIC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_METRICS = ("test_acc", "val_acc", "accuracy", "flops", "params", "ckpt_bytes", "size_bytes", "sparsity",
                    "seconds", "test_n", "val_n")


class MetricConfig(_Strict):
    """A team's quality metric, measured on every stage beside top-1 accuracy (``build.metrics``)."""

    name: str = Field(description="how tables, budgets and the ledger name it (letters, digits, _)")
    function: str = Field(description="'package.module:function', called as function(model, loader, device, "
                          "**options) with the model in eval mode under no_grad: one number, or one value per sample")
    better: Literal["higher", "lower"] = Field(description="which direction is better")
    split: Literal["test", "val"] = "test"
    primary: bool = Field(False, description="the recipe's headline metric: the plot's y axis")
    options: dict[str, Any] = {}

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not METRIC_NAME.match(v) or len(v) > 40:
            raise ValueError(f"{v!r}: use letters, digits and _ (it names table columns, budgets and ledger fields)")
        if v in RESERVED_METRICS:
            raise ValueError(f"{v!r} is optcheck's own field: name your metric otherwise")
        return v

    @field_validator("function")
    @classmethod
    def _factory(cls, v: str) -> str:
        if FACTORY.match(v):
            return v
        raise ValueError(f"{v!r} is not 'package.module:function'")


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
    metrics: list[MetricConfig] = Field([], description="[[metrics]]: the team's quality metrics besides top-1")
    golden: list[str] = Field([], description="stages whose committed golden checkpoint (golden/<name>/<stage>/ "
                              "beside the recipe) today's stack must restore and reproduce: golden[<stage>] items")
    ledger: LedgerDefaults = LedgerDefaults()
    path: Path | None = Field(None, exclude=True)

    _name = field_validator("name")(classmethod(lambda cls, v: check_recipe_name(v)))

    @model_validator(mode="after")
    def _coherent(self) -> "Recipe":
        if self.data.test_limit is not None and self.data.test_limit < self.budgets.min_test_samples:
            raise ValueError(
                f"@data.test_limit: data.test_limit = {self.data.test_limit} is below budgets.min_test_samples = "
                f"{self.budgets.min_test_samples}: a verdict on so few test samples means little (identical "
                f"predictions on {self.data.test_limit} samples all right leave a 95% interval of the drop of "
                f"+-{agreement_halfwidth(self.data.test_limit) * 100:.2f} pp) || fix: raise test_limit, or lower "
                "min_test_samples knowingly")
        if self.seeds is not None:
            if len(set(self.seeds)) != len(self.seeds):
                raise ValueError(f"@seeds: seeds {self.seeds} repeat a seed: each seed is one independent build || fix: list each seed once")
            if self.seed is not None and self.seed != self.seeds[0]:
                raise ValueError(f"@seeds: seed = {self.seed} and seeds = {self.seeds}: give one of them (with seeds, "
                                 f"the first one is the recipe's seed) || fix: remove seed")
        if self.model.checkpoint is not None and self.data.split_seed is None:
            raise ValueError(
                "@data.split_seed: the baseline is loaded from model.checkpoint, and the data's splits follow the "
                "run's seed, which --optcheck-seed and calibration vary: under another seed the test split would "
                "hold images the checkpoint was trained on, and its accuracy would be inflated || fix: set "
                "data.split_seed to the seed of the split the checkpoint was trained on (for a dataset function "
                "whose split ignores its seed, any value, e.g. split_seed = 0)")
        declared = {m.name: m for m in self.metrics}
        if len(declared) != len(self.metrics):
            twice = next(m.name for m in self.metrics if [x.name for x in self.metrics].count(m.name) > 1)
            raise ValueError(f"@metrics: two metrics are named {twice!r} || fix: give each its own name")
        if sum(m.primary for m in self.metrics) > 1:
            raise ValueError("@metrics: more than one metric has primary = true || fix: keep one headline metric")
        for stage, table in [("", self.budgets), *((f".{s}", t) for s, t in self.budgets.stages.items())]:
            for budget in METRIC_BUDGETS:
                for name in getattr(table, budget):
                    where = f"budgets{stage}.{budget}.{name}"
                    if name not in declared:
                        near = difflib.get_close_matches(name, list(declared), n=1)
                        raise ValueError(f"@{where}: there is no metric {name!r} in [[metrics]] || fix: "
                                         + (f"did you mean {near[0]!r}?" if near else
                                            "declare it in a [[metrics]] table (name, function, better)"))
                    better = declared[name].better
                    if (budget, better) in (("metric_at_least", "lower"), ("metric_at_most", "higher")):
                        other = "metric_at_most" if budget == "metric_at_least" else "metric_at_least"
                        raise ValueError(f"@{where}: {name} is {better}-is-better, so {budget} would hold a bound on "
                                         f"its good side || fix: use {other}.{name} (a "
                                         f"{'ceiling' if better == 'lower' else 'floor'})")
        names = [stage.name for stage in step_registry.plan(self)]
        for i, step in enumerate(self.steps):
            if step.name is not None and not file_safe(step.name, 60):
                raise ValueError(f"@steps[{i}].name: name {step.name!r} is not file-safe (it names the stage's files, "
                                 "node ids and [budgets.<name>]) || fix: use letters, digits, '.', '_' and '-'")
        for name in dict.fromkeys(names):
            if names.count(name) > 1:
                where = [f"steps[{i - 1}]" if i else "the baseline" for i, n in enumerate(names) if n == name]
                raise ValueError(f"@steps: two stages are named {name!r} ({' and '.join(where)}) || fix: give the "
                                 f"later step its own name, e.g. name = '{name}2'")
        for i, stage in enumerate(self.golden):
            if stage not in names:
                near = difflib.get_close_matches(stage, names, n=1)
                raise ValueError(f"@golden[{i}]: the recipe has no stage {stage!r}; its stages are {', '.join(names)} "
                                 f"|| fix: {f'did you mean {near[0]!r}?' if near else 'name one of them'}")
        if len(set(self.golden)) != len(self.golden):
            raise ValueError("@golden: a stage is listed twice || fix: list each stage once")
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
