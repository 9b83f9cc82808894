"""``kind = "torch_pruning"``: structured pruning by dependency graph with Torch-Pruning (DepGraph).

A second pruning engine beside Model Optimizer's FastNAS. ``tp.pruner.MagnitudePruner`` removes whole
channels (and everything that depends on them) by importance, in ``iterative_steps`` steps, either to a
channel ``pruning_ratio`` or until the model's FLOPs meet a ``flops`` / ``params`` target. Between
steps it can fine-tune (``finetune_epochs``); every step's FLOPs, params and val accuracy are kept
(the per-iteration table of the Torch-Pruning walkthrough) in the artifact's info.

The pruned model's shapes differ from a freshly built one, so it is saved with Torch-Pruning's own
``tp.state_dict`` (the pruned attributes + weights) and restored with ``tp.load_state_dict`` into a
freshly built model. That file is a pickle (``torch.load(weights_only=False)``): optcheck loads it only
from its own checksummed cache or the run's working folder. Every later stage carries the file along
(``StepKind.architecture``) so that its own ``mto.restore`` restores into the pruned architecture.
FLOPs are counted as for every other stage (``measure.count_flops``, Model Optimizer's convention).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from optcheck.core.schema import Limit, limit_fields
from optcheck.steps.base import StepConfig
from optcheck.steps.base import StepKind

FILE = "torch_pruning"  # the Artifact.files entry: tp.state_dict of the pruned model
MAX_RATIO = 0.9  # a flops / params target prunes along tp's schedule toward this channel ratio


class TorchPruningStep(StepConfig):
    kind: Literal["torch_pruning"]
    pruning_ratio: float | None = Field(None, gt=0, lt=1, description="share of each prunable layer's "
                                        "channels removed, reached after iterative_steps steps")
    flops: Limit | None = Field(None, description="prune step by step until FLOPs are at most this "
                                "('50%' of the parent's, or an absolute count)")
    params: Limit | None = None
    importance: Literal["magnitude", "l2", "taylor"] = Field(
        "l2", description="channel importance: the L1 ('magnitude') or L2 norm of the group's weights, or "
        "first-order Taylor (|weight x gradient|, gradients of one train batch before each step)")
    iterative_steps: int = Field(5, ge=1, le=100)
    round_to: int | None = Field(None, ge=1, description="keep channel counts multiples of this (8 keeps "
                                 "onnxruntime's fast kernels)")
    global_pruning: bool = False
    ignored_layers: list[str] | None = Field(None, description="names (fnmatch patterns) of modules never "
                                             "pruned, besides the model's last Linear layer (the classifier head)")
    finetune_epochs: int = Field(0, ge=0, description="epochs of training after each step but the last")
    lr_scale: float = Field(0.1, gt=0, description="times the baseline's learning rate, for finetune_epochs")

    _limits = limit_fields("flops", "params")

    @model_validator(mode="after")
    def _one_target(self) -> "TorchPruningStep":
        given = [n for n in ("pruning_ratio", "flops", "params") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'pruning_ratio', 'flops' or 'params'"
                             + (f" (got {', '.join(given)})" if given else ""))
        return self

    @property
    def target(self) -> tuple[str, Limit] | None:
        if self.flops is not None:
            return "flops", self.flops
        if self.params is not None:
            return "params", self.params
        return None


def ignored_modules(model, step: TorchPruningStep, where: str, path: str) -> list:
    """The modules Torch-Pruning must leave alone: the model's last Linear layer (the classifier head:
    its outputs are the classes) and every module whose name matches an ``ignored_layers`` pattern
    (``fnmatch``: ``"layer*.*.conv2"``). A pattern that matches nothing is an error."""
    import fnmatch

    import torch.nn as nn

    from optcheck.core.errors import StepError

    modules = dict(model.named_modules())
    heads = [m for m in modules.values() if isinstance(m, nn.Linear)][-1:]
    patterns = step.ignored_layers or []
    missing = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in modules if n)]
    if missing:
        names = ", ".join(n for n, m in modules.items() if n and not list(m.children()))
        raise StepError(path, where,
                        f"ignored_layers pattern(s) match no module of the model: {', '.join(missing)}",
                        f"use names (or fnmatch patterns) from model.named_modules(): {names[:300]}")
    chosen = [m for n, m in modules.items() if n and any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    return heads + [m for m in chosen if all(m is not h for h in heads)]


def _check_runs(run, model, example, i: int) -> None:
    """The pruned model still runs. Torch-Pruning follows channels through the ops it knows; an op that
    changes the channel count by itself (the zero-padding shortcut of the CIFAR ResNets:
    ``F.pad`` over channels) is not one of them, and pruning across it leaves layers that no longer fit."""
    import torch

    try:
        with torch.no_grad():
            model(example)
    except RuntimeError as exc:
        run.fail(f"after pruning step {i} the model no longer runs ({' '.join(str(exc).split())[:200]}): "
                 "Torch-Pruning's dependency graph did not follow an op that changes the channel count "
                 "(such as a shortcut that zero-pads channels with F.pad)",
                 "keep the channels that op touches: list the layers that feed it in ignored_layers (for "
                 "the built-in resnet20: ignored_layers = [\"conv1\", \"layer*.*.conv2\"], which prunes "
                 "each block's inner channels), or use a model whose shortcuts are 1x1 convolutions")


def _importance(name: str):
    import torch_pruning as tp

    if name == "magnitude":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    return tp.importance.GroupTaylorImportance()


def _taylor_gradients(model, ctx) -> None:
    """One train batch's gradients, which Taylor importance reads."""
    import torch.nn.functional as F

    x, y = next(iter(ctx.train_loader()))
    model.zero_grad()
    F.cross_entropy(model(x.to(ctx.device)), y.to(ctx.device)).backward()


def build(run, parent):
    """Prune the previous stage's model with Torch-Pruning, step by step, and ``tp.state_dict`` it."""
    import torch
    import torch_pruning as tp

    from optcheck.build.measure import count_flops, count_params
    from optcheck.build.training import Schedule, evaluate, scaled_lr, train
    from optcheck.core.limits import parse_percent

    ctx, step = run.ctx, run.step
    run.seed(1)
    model = parent.model
    example = ctx.dummy_input()
    full = {"flops": count_flops(model, example), "params": count_params(model)}
    target = step.target
    goal = None
    if target is not None:
        frac = parse_percent(target[1])
        goal = frac * full[target[0]] if frac is not None else float(target[1])
    ratio = step.pruning_ratio if step.pruning_ratio is not None else MAX_RATIO
    model.eval()  # tracing the dependency graph runs a forward pass: keep BatchNorm statistics
    pruner = tp.pruner.MagnitudePruner(
        model, example, importance=_importance(step.importance), pruning_ratio=ratio,
        iterative_steps=step.iterative_steps, ignored_layers=ignored_modules(model, step, run.stage.label, run.path),
        round_to=step.round_to, global_pruning=step.global_pruning)
    t = ctx.recipe.train
    lr = step.lr_scale * scaled_lr(t.lr, ctx.recipe.data.batch_size)
    iterations = []
    for i in range(1, step.iterative_steps + 1):
        if step.importance == "taylor":
            model.train()
            _taylor_gradients(model, ctx)
        pruner.step()
        model.zero_grad(set_to_none=True)
        model.eval()
        _check_runs(run, model, example, i)
        row = {"step": i, "flops": count_flops(model, example), "params": count_params(model)}
        row["val_acc"] = evaluate(model, ctx.val_loader, ctx.device)[0]
        met = goal is not None and row[target[0]] <= goal  # type: ignore[index]
        last = met or i == step.iterative_steps
        if step.finetune_epochs and not last:
            train(model, ctx.train_loader(), ctx.val_loader,
                  Schedule(step.finetune_epochs, lr, t.momentum, t.weight_decay, 0.0),
                  device=ctx.device, log=ctx.log, label=f"{run.name} step {i}")
            model.eval()
            row["val_acc_finetuned"] = evaluate(model, ctx.val_loader, ctx.device)[0]
        iterations.append(row)
        ctx.log(f"torch_pruning step {i}/{step.iterative_steps}: {row['flops']:,} FLOPs, {row['params']:,} "
                f"params, val acc {row['val_acc']:.2%}")
        if met:
            break
    if goal is not None and iterations[-1][target[0]] > goal:  # type: ignore[index]
        name = target[0]  # type: ignore[index]
        reached = iterations[-1][name] / full[name]
        run.fail(f"the {name} target {target[1]!r} ({goal:,.0f}) was not reached: after "  # type: ignore[index]
                 f"{step.iterative_steps} steps toward a channel ratio of {MAX_RATIO} the model has "
                 f"{iterations[-1][name]:,} {name} ({reached:.0%} of its parent's)",
                 f"raise iterative_steps, lower ignored_layers, or set steps[{run.stage.index}].{name} to "
                 f"at least {reached:.0%}")
    path = run.file("torch_pruning.pth")
    torch.save(tp.state_dict(model), path)
    return run.finish(model, {FILE: path}, {"iterations": iterations, "full": full})


def load(ctx, files, step=None):
    """The pruned model: ``tp.load_state_dict`` into a freshly built model (the file is a pickle:
    ``weights_only=False``; it comes from optcheck's checksummed cache or the run's own folder)."""
    import torch
    import torch_pruning as tp

    state = torch.load(files[FILE], map_location=ctx.device, weights_only=False)
    model = tp.load_state_dict(ctx.make_model(), state_dict=state)
    return model.to(ctx.device)


def preflight(check) -> None:
    """Torch-Pruning is installed, and the named ignored layers exist."""
    from optcheck.core.errors import Problem, RecipeError

    try:
        import torch_pruning  # noqa: F401
    except ImportError as exc:
        raise RecipeError(check.path, [Problem(check.field("kind"), f"torch-pruning is not installed ({exc})",
                                               fix="pip install 'torch-pruning>=1.6' (optcheck depends on it; "
                                                   "reinstall optcheck)")]) from exc
    if check.step.ignored_layers is not None:
        ignored_modules(check.ctx.make_model(), check.step, check.stage.label, check.path)


KIND = StepKind(kind="torch_pruning", stage="pruned", build=build, schema=TorchPruningStep, load=load,
                checkpoint=FILE, preflight=preflight, architecture=True,
                summary="Torch-Pruning (DepGraph) structured channel pruning, tp.state_dict checkpoints")
