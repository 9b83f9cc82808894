"""What every stage is made of: ``Context`` (the plain inputs), ``Metrics``, ``Artifact``, and the
generic cache-entry and checkpoint helpers. The stages themselves are built by the step kinds
(``optcheck/steps/``), each a plain function ``build(ctx, parent, step, stages) -> Artifact``.

Nothing here knows about pytest or caching; ``pipeline.RecipeRun`` decides what runs when.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from optcheck.build.data import DataBundle, make_loader
from optcheck.build.measure import count_flops, count_params, file_bytes, sparsity, weight_bytes
from optcheck.build.structure import structural_facts
from optcheck.build.models import build_model
from optcheck.build.training import Log, evaluate

if TYPE_CHECKING:  # annotations only: the build layer sits below the recipes
    from optcheck.recipes.schema import Recipe


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
    size_bytes: int | None = None  # parameters at their real bit-widths (``measure.weight_bytes``)
    sparsity: float | None = None  # zero share of the sparsified layers' weights; None: none sparsified
    extra: dict[str, float] = field(default_factory=dict)  # the team's [[metrics]], by name (their split's value)
    structure: dict[str, int | str] = field(default_factory=dict)  # build.structure: held exactly by the ledger

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
                       count_params(model), file_bytes(path), seconds, weight_bytes(model), sparsity(model),
                       self.team_metrics(model), structural_facts(model, self.dummy_input()))

    def team_metrics(self, model: nn.Module) -> dict[str, float]:
        """Every ``[[metrics]]`` of the recipe on ``model``, by name (``build.metrics``)."""
        from optcheck.build.metrics import measure_metric

        out = {}
        for index, cfg in enumerate(getattr(self.recipe, "metrics", [])):
            loader = self.test_loader if cfg.split == "test" else self.val_loader
            out[cfg.name] = measure_metric(cfg, index, model, loader, self.device, str(self.recipe.path)).value
        return out
