"""The pipeline stages: plain functions from inputs to an ``Artifact``.

    baseline  = train_baseline(ctx)
    pruned    = fastnas_prune(ctx, baseline, step)    mtp.prune + mto.save
    restored  = restore(ctx, pruned)                   mto.restore into a fresh model
    finetuned = finetune(ctx, restored, step)          train at lr_scale, mto.save

Nothing here knows about pytest or caching; ``pipeline.RecipeRun`` decides what runs when.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from .data import DataBundle, make_loader
from .measure import count_flops, count_params, file_bytes
from .models import build_model
from .recipe import FastNASStep, FinetuneStep, Recipe
from .training import (Log, Schedule, evaluate, mean_log_prob, recalibrate_batchnorm, scaled_lr,
                       seed_everything, train)


@dataclass
class Metrics:
    test_acc: float
    test_n: int
    val_acc: float
    val_n: int
    flops: int
    params: int
    ckpt_bytes: int | None
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Artifact:
    """What a stage produced: the model, its metrics and the files it wrote.

    From the cache, the model is loaded when something first asks for it (``load``): a check that
    reads only the metrics (the ledger) or a verdict replayed from the cache never restores it, so a
    warm session need not import Model Optimizer at all.
    """

    def __init__(self, stage: str, model: nn.Module | None, metrics: Metrics, path: Path | None = None,
                 files: dict[str, Path] | None = None, info: dict[str, Any] | None = None, *,
                 load: Callable[[], nn.Module] | None = None):
        if model is None and load is None:
            raise ValueError("an Artifact needs a model or a way to load it")
        self.stage, self._model, self.metrics, self.path = stage, model, metrics, path  # path: restores it
        self.files, self.info, self._load = dict(files or {}), dict(info or {}), load

    @property
    def model(self) -> nn.Module:
        if self._model is None:
            assert self._load is not None
            self._model, self._load = self._load(), None
        return self._model

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def __repr__(self) -> str:
        return f"Artifact({self.stage!r}, {'loaded' if self.loaded else 'not loaded yet'}, {self.metrics})"


@dataclass
class Context:
    """Plain inputs shared by the stages of one recipe."""

    recipe: Recipe
    data: DataBundle
    device: torch.device
    seed: int
    workdir: Path
    log: Log = lambda _msg: None  # noqa: E731

    def train_loader(self):
        """A new shuffling loader seeded from ``seed`` alone: each stage gets the same sample order
        whether or not the stages before it ran in this process (a cached stage consumes nothing)."""
        d = self.recipe.data
        return make_loader(self.data.train, d.batch_size, shuffle=True, seed=self.seed,
                           num_workers=d.num_workers, pin_memory=self.device.type == "cuda")

    def eval_loader(self, split: str, limit: int | None = None):
        dataset = getattr(self.data, split)
        if limit is not None and limit < len(dataset):
            dataset = torch.utils.data.Subset(dataset, range(limit))
        d = self.recipe.data
        return make_loader(dataset, d.eval_batch_size, shuffle=False, seed=self.seed,
                           num_workers=d.num_workers, pin_memory=self.device.type == "cuda")

    @cached_property
    def val_loader(self):
        return self.eval_loader("val")

    @cached_property
    def test_loader(self):
        return self.eval_loader("test")

    def dummy_input(self) -> torch.Tensor:
        return torch.zeros(1, *self.data.input_shape, device=self.device)

    def make_model(self) -> nn.Module:
        """A freshly built, untrained model of the recipe (what ``mto.restore`` restores into)."""
        return build_model(self.recipe.model, self.data.num_classes, self.data.input_shape[0],
                           seed=self.seed, path=str(self.recipe.path)).to(self.device)

    def measure(self, model: nn.Module, path: Path | None, seconds: float) -> Metrics:
        test_acc, test_n = evaluate(model, self.test_loader, self.device)
        val_acc, val_n = evaluate(model, self.val_loader, self.device)
        return Metrics(test_acc, test_n, val_acc, val_n, count_flops(model, self.dummy_input()),
                       count_params(model), file_bytes(path), seconds)


def train_baseline(ctx: Context) -> Artifact:
    start = time.perf_counter()
    seed_everything(ctx.seed)
    model = ctx.make_model()
    t = ctx.recipe.train
    schedule = Schedule(t.epochs, scaled_lr(t.lr, ctx.recipe.data.batch_size), t.momentum,
                        t.weight_decay, t.warmup_epochs)
    history = train(model, ctx.train_loader(), ctx.val_loader, schedule, device=ctx.device,
                    log=ctx.log, label="baseline")
    path = ctx.workdir / "baseline_state_dict.pth"
    torch.save(model.state_dict(), path)
    metrics = ctx.measure(model, path, time.perf_counter() - start)
    return Artifact("baseline", model, metrics, path, {"state_dict": path}, {"history": history})


def fastnas_config(step: FastNASStep):
    from .compat import import_modelopt

    _, _, mtp = import_modelopt()
    config = mtp.fastnas.FastNASConfig()
    for rule in ("nn.Conv1d", "nn.Conv2d", "nn.Conv3d"):
        config[rule]["*"]["channel_divisor"] = step.channel_divisor
    for rule in ("nn.BatchNorm1d", "nn.BatchNorm2d", "nn.BatchNorm3d", "nn.Linear"):
        config[rule]["*"]["feature_divisor"] = step.feature_divisor
    return config


def fastnas_prune(ctx: Context, baseline: Artifact, step: FastNASStep, recipe_path: str = "<recipe>") -> Artifact:
    """Search the best subnet under the step's constraint with ``mtp.prune`` and ``mto.save`` it.

    The step checks its own promise: a subnet over the constraint is an error here, not a model that
    a later budget may or may not catch."""
    _, mto, mtp = _modelopt()
    start = time.perf_counter()
    seed_everything(ctx.seed)
    model = copy.deepcopy(baseline.model)
    score_loader = ctx.eval_loader("val", step.score_samples)

    measure_score = mean_log_prob if step.score == "log_prob" else (
        lambda m, loader, device: evaluate(m, loader, device)[0])
    scored = {"n": 0, "best": -float("inf"), "all": []}

    def score_func(candidate: nn.Module) -> float:
        score = measure_score(candidate, score_loader, ctx.device)
        scored["n"] += 1
        scored["best"] = max(scored["best"], score)
        scored["all"].append(score)
        if scored["n"] % 10 == 0:
            ctx.log(f"fastnas: scored {scored['n']} subnets, best val {step.score} {scored['best']:.4f}")
        return score

    name, value = step.constraint
    search_ckpt = ctx.workdir / "fastnas_search_checkpoint.pth"
    ctx.log(f"fastnas: searching under {name} <= {value} "
            f"(channel_divisor={step.channel_divisor}, feature_divisor={step.feature_divisor})")
    model, search_state = mtp.prune(
        model=model,
        mode=[("fastnas", fastnas_config(step))],
        constraints={name: value},
        dummy_input=ctx.dummy_input(),
        config={"data_loader": ctx.train_loader(), "score_func": score_func,
                "checkpoint": str(search_ckpt), "max_iter_data_loader": step.calib_batches,
                "verbose": False},
    )
    if step.recalibrate_bn:  # the subnet's BatchNorm statistics are those of the full model
        seed_everything(ctx.seed)
        recalibrate_batchnorm(model, ctx.train_loader(), ctx.device)
    path = ctx.workdir / "pruned_modelopt.pth"
    mto.save(model, path)
    metrics = ctx.measure(model, path, time.perf_counter() - start)
    check_constraint(ctx, step, metrics, baseline.metrics, recipe_path)
    ctx.log(f"fastnas: {scored['n']} subnets scored; subnet has {metrics.flops:,} FLOPs")
    return Artifact("pruned", model, metrics, path, {"modelopt": path, "search_checkpoint": search_ckpt},
                    {"subnets_scored": scored["n"], "scores": scored["all"]})


CONSTRAINT_SLACK = 1.05


def check_constraint(ctx: Context, step: FastNASStep, metrics: Metrics, full: Metrics, path: str) -> None:
    """Raise ``StepError`` when the searched subnet misses the step's own FLOPs / params constraint."""
    from .errors import StepError
    from .limits import human, resolve_limit

    name, limit = step.constraint
    reference = full.flops if name == "flops" else full.params
    target = resolve_limit(limit, reference, name)
    got = metrics.flops if name == "flops" else metrics.params
    # Model Optimizer judges its constraint with its own count on the converted model; optcheck's count
    # of the exported subnet differs from it by up to 3.9% on ResNet20 at 16x16 (a 35% target: 7.37M
    # FLOPs measured vs 7.10M) -- not yet explained. The check is for gross misses (a "60%" search that
    # returned the full model), so it allows 5%.
    if got <= target * CONSTRAINT_SLACK:
        return
    index = next(i for i, s in enumerate(ctx.recipe.steps) if s is step or s == step)
    unit = " FLOPs" if name == "flops" else " params"
    raise StepError(
        path, f"steps[{index}] (kind = 'fastnas')",
        f"the searched subnet has {human(got, unit)} ({got / reference:.1%} of the baseline), over the step's "
        f"own constraint {name} = {limit!r} = {human(target, unit)}: Model Optimizer returned a subnet that "
        "misses its target",
        f"check steps[{index}] (a larger calib_batches, a data.batch_size of 8 or more for the BatchNorm "
        "calibration); the constraint is checked in Model Optimizer's convention (2 x MACs, BatchNorm excluded)")


def restore(ctx: Context, pruned: Artifact) -> Artifact:
    """Rebuild the pruned subnet from its ``mto.save`` checkpoint into a freshly built model."""
    _, mto, _ = _modelopt()
    start = time.perf_counter()
    model = mto.restore(ctx.make_model(), pruned.path, map_location=ctx.device)
    metrics = ctx.measure(model, pruned.path, time.perf_counter() - start)
    return Artifact("restored", model, metrics, pruned.path, {"modelopt": pruned.path})


def finetune(ctx: Context, restored: Artifact, step: FinetuneStep) -> Artifact:
    _, mto, _ = _modelopt()
    start = time.perf_counter()
    seed_everything(ctx.seed + 1)
    model = copy.deepcopy(restored.model)
    t = ctx.recipe.train
    lr = step.lr_scale * scaled_lr(t.lr, ctx.recipe.data.batch_size)
    schedule = Schedule(step.epochs, lr, t.momentum, t.weight_decay, step.warmup_epochs)
    history = train(model, ctx.train_loader(), ctx.val_loader, schedule, device=ctx.device,
                    log=ctx.log, label="finetune")
    path = ctx.workdir / "finetuned_modelopt.pth"
    mto.save(model, path)
    metrics = ctx.measure(model, path, time.perf_counter() - start)
    return Artifact("finetuned", model, metrics, path, {"modelopt": path}, {"history": history})


def _modelopt():
    from .compat import import_modelopt

    return import_modelopt()


# -- cache entries ---------------------------------------------------------------------------------

CACHED_STAGES = ("baseline", "pruned", "finetuned")  # "restored" is always rebuilt: it is the round trip


def entry_meta(artifact: Artifact) -> dict[str, Any]:
    """What a cache entry keeps besides the files: the metrics and the JSON-safe info."""
    from .cache import entry_meta_safe

    return {"metrics": artifact.metrics.as_dict(), "info": entry_meta_safe(artifact.info)}


def load_model(ctx: Context, stage: str, files: dict[str, Path]) -> nn.Module:
    """The model of a verified cache entry (a state dict into a fresh model, or ``mto.restore``)."""
    if stage == "baseline":
        model = ctx.make_model()
        model.load_state_dict(torch.load(files["state_dict"], map_location=ctx.device, weights_only=True))
        return model
    if stage in ("pruned", "finetuned"):
        _, mto, _ = _modelopt()
        return mto.restore(ctx.make_model(), files["modelopt"], map_location=ctx.device)
    raise KeyError(f"stage {stage!r} is not cached")


def load_artifact(ctx: Context, stage: str, files: dict[str, Path], meta: dict[str, Any],
                  load: Callable[[], nn.Module] | None = None) -> Artifact:
    """An ``Artifact`` from a verified cache entry (the inverse of ``entry_meta`` + files); its model
    is loaded on first use, by ``load`` (default: ``load_model``)."""
    if stage not in CACHED_STAGES:
        raise KeyError(f"stage {stage!r} is not cached")
    path = files["state_dict"] if stage == "baseline" else files["modelopt"]
    return Artifact(stage, None, Metrics(**meta["metrics"]), path, dict(files), meta.get("info", {}),
                    load=load or (lambda: load_model(ctx, stage, files)))
