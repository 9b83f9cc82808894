"""The boundary between the pipeline and a step kind: what a kind's functions are handed.

    def build(run: StepRun, parent: Artifact) -> Artifact        # builds the stage
    def preflight(check: StepCheck) -> None                      # before anything trains
    def load(ctx: Context, files: dict[str, Path]) -> nn.Module  # a checkpoint back into a model

``StepRun`` is one stage being built: the recipe's context (data loaders, device, seed, working
folder, ``make_model``), the step's validated table, any earlier stage's artifact, and the chores
every kind shares (seeding, saving with ``mto.save``, measuring, a ``StepError`` that names the
step). ``StepCheck`` is the same stage before anything is built: the context, an error boundary, a
cached value, and the search bounds a searching kind reports. A kind never touches the pipeline's
own objects; the pipeline never names a kind. No torch at import.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from optcheck.build.artifacts import Artifact, Context
    from optcheck.steps.registry import Stage


@dataclass
class StepRun:
    """One stage being built by its kind (``StepKind.build(run, parent)``)."""

    ctx: Context
    stage: Stage
    artifacts: Callable[[str], Artifact]  # any earlier stage's artifact, by stage name
    root: str  # the baseline's stage name (every relative limit and drop is against it)
    started: float = field(default_factory=time.perf_counter)

    @property
    def step(self) -> Any:
        """The step's validated ``[[steps]]`` table (its kind's schema)."""
        return self.stage.step

    @property
    def name(self) -> str:
        """The stage this step produces (``name = "..."`` or its kind's default)."""
        return self.stage.name

    @property
    def path(self) -> str:
        """The recipe file, as messages name it."""
        return str(self.ctx.recipe.path)

    def baseline(self) -> Artifact:
        """The trained baseline's artifact (a distillation teacher, the reference of a constraint)."""
        return self.artifacts(self.root)

    def artifact(self, stage: str) -> Artifact:
        return self.artifacts(stage)

    def seed(self, offset: int = 0) -> None:
        """Seed Python, NumPy and torch from the recipe's seed (+ ``offset``), as every build starts."""
        from optcheck.build.training import seed_everything

        seed_everything(self.ctx.seed + offset)

    def file(self, suffix: str) -> Path:
        """``<workdir>/<stage>_<suffix>``: where this stage writes its files."""
        return self.ctx.workdir / f"{self.name}_{suffix}"

    def save_modelopt(self, model: Any) -> Path:
        """``mto.save`` the model to ``<stage>_modelopt.pth`` (what ``mto.restore`` restores)."""
        from optcheck.core.compat import import_modelopt

        _, mto, _ = import_modelopt()
        path = self.file("modelopt.pth")
        mto.save(model, path)
        return path

    def finish(self, model: Any, files: dict[str, Path], info: dict[str, Any] | None = None, *,
               checkpoint: Path | None = None) -> Artifact:
        """The stage's ``Artifact``: the model measured on the val and test splits (accuracy, FLOPs,
        params, size, sparsity, the checkpoint's bytes) with the seconds since the build started."""
        from optcheck.build.artifacts import Artifact

        path = checkpoint if checkpoint is not None else next(iter(files.values()), None)
        metrics = self.ctx.measure(model, path, time.perf_counter() - self.started)
        return Artifact(self.name, model, metrics, path, files, info or {})

    def fail(self, cause: str, fix: str, where: str = "") -> NoReturn:
        """Raise the ``StepError`` that names the recipe and this step: "steps[1] (kind = 'fastnas')
        failed / cause: ... / fix: ..."."""
        from optcheck.core.errors import StepError

        raise StepError(self.path, self.stage.label + (f", {where}" if where else ""), cause, fix)


@dataclass
class StepCheck:
    """One stage before anything trains (``StepKind.preflight(check)``): refuse what cannot work."""

    ctx: Context
    stage: Stage
    boundary: Callable[[str, str], contextlib.AbstractContextManager]  # (where, fix): errors named
    cached: Callable[[str, dict, Callable[[], Any]], Any]  # (name, material, compute): a cached small value
    report_bounds: Callable[[dict[str, float]], None]  # a searching kind's smallest / full model

    @property
    def step(self) -> Any:
        return self.stage.step

    @property
    def path(self) -> str:
        return str(self.ctx.recipe.path)

    def field(self, name: str) -> str:
        """``steps[<i>].<name>``: how an error names this step's field."""
        return f"steps[{self.stage.index}].{name}"


@dataclass
class Training:
    """What a team's training function receives besides the model: ``fit(model, training)``.

    ``fit`` trains the model in place and may return a dict of its history (kept in the stage's info).
    optcheck seeds before it, times it, measures, checkpoints and restores around it. ``criterion`` is
    the loss optcheck would train: cross-entropy, or, in a step that distills, Model Optimizer's
    distillation loss (``model.compute_kd_loss``: the balanced sum of the labels' cross-entropy and the
    KD loss from the baseline teacher); a loop with its own loss ``l`` gets the KD total with
    ``model.compute_kd_loss(student_loss=l)``.
    """

    stage: str  # the stage being trained
    epochs: int  # [train] epochs, or the finetune step's
    lr: float  # the recipe's learning rate for this stage (batch-size scaled): a default to use or ignore
    device: Any
    seed: int
    options: dict[str, Any]  # [train] options, or the finetune step's options, as written
    train_loader: Callable[[], Any]  # a fresh, seeded, shuffling train loader per call
    val_loader: Any
    criterion: Callable[[Any, Any], Any]  # (logits, labels) -> loss
    distilling: bool
    log: Callable[[str], None]


def team_training(run: StepRun, model: Any, function: str, *, epochs: int, lr: float, options: dict[str, Any],
                  criterion: Callable[[Any, Any], Any] | None = None) -> dict[str, Any]:
    """Train ``model`` in place with the team's ``package.module:function``; its returned dict (if
    any) is the history. What it returns otherwise, or raises, is named with the function."""
    import torch.nn.functional as F

    from optcheck.core.factories import load_factory

    fit = load_factory(function, "function", run.path)
    ctx = run.ctx
    training = Training(stage=run.name, epochs=epochs, lr=lr, device=ctx.device, seed=ctx.seed, options=dict(options),
                        train_loader=ctx.train_loader, val_loader=ctx.val_loader,
                        criterion=criterion or F.cross_entropy, distilling=criterion is not None, log=ctx.log)
    model.train()
    history = fit(model, training)
    if history is not None and not isinstance(history, dict):
        run.fail(f"{function} returned {type(history).__name__}: a training function trains the model in place "
                 "and returns None or a dict (its history)", "return None, or a dict such as {'val_acc': [...]}")
    return dict(history or {})
