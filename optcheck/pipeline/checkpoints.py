"""A stage's checkpoint files, turned back into a model or an ``Artifact``: what a cache entry
keeps, what ``mto.restore`` restores into (a fresh model, or an upstream architecture)."""

from __future__ import annotations

from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch.nn as nn

from optcheck.build.artifacts import Artifact
from optcheck.build.artifacts import Context
from optcheck.build.artifacts import Metrics


# -- cache entries and checkpoints ---------------------------------------------------------------------

def entry_meta(artifact: Artifact) -> dict[str, Any]:
    """What a cache entry keeps besides the files: the metrics and the JSON-safe info."""
    from optcheck.core.jsonsafe import jsonsafe

    return {"metrics": artifact.metrics.as_dict(), "info": jsonsafe(artifact.info)}


def load_model(ctx: Context, stage, files: dict[str, Path]) -> nn.Module:
    """A stage's model (``stage``: its ``steps.registry.Stage``) from its files, restored into a freshly
    built model: the kind's own loader when it has one (and it returns a model), else by the stage's
    checkpoint: a state dict loaded, or ``mto.restore`` (into the architecture it descends from)."""
    if stage.kind.load is not None:
        model = stage.kind.load(ctx, files, stage.step)
        if model is not None:
            return model
    fresh = fresh_model(ctx, files, stage.kind)
    if stage.checkpoint == "state_dict":
        import torch

        fresh.load_state_dict(torch.load(files["state_dict"], map_location=ctx.device, weights_only=True))
        return fresh
    from optcheck.core.compat import import_modelopt

    _, mto, _ = import_modelopt()
    return mto.restore(fresh, files[stage.checkpoint], map_location=ctx.device)


def architecture_files(files: dict[str, Path]) -> dict[str, Path]:
    """The files among ``files`` that define an architecture (``StepKind.architecture``): a stage built
    from a Torch-Pruning subnet keeps its ``tp.state_dict``, so its own checkpoint can be restored."""
    from optcheck.steps.registry import KINDS

    names = {k.checkpoint for k in KINDS.values() if k.architecture}
    return {name: path for name, path in files.items() if name in names}


def fresh_model(ctx: Context, files: dict[str, Path], kind=None) -> nn.Module:
    """What a stage's ``mto.restore`` restores into: a freshly built model, or, below a stage that
    changed the architecture outside Model Optimizer, that stage's model loaded from its file."""
    from optcheck.steps.registry import KINDS

    for other in KINDS.values():
        if other.architecture and other is not kind and other.checkpoint in files:
            return other.load(ctx, files, None)
    return ctx.make_model()


def load_artifact(ctx: Context, stage, files: dict[str, Path], meta: dict[str, Any],
                  load: Callable[[], nn.Module] | None = None) -> Artifact:
    """An ``Artifact`` of ``stage`` (its ``Stage``) from a verified cache entry (the inverse of
    ``entry_meta`` + files); its model is loaded on first use, by ``load`` (default: ``load_model``)."""
    return Artifact(stage.name, None, Metrics(**meta["metrics"]), files[stage.checkpoint], dict(files),
                    meta.get("info", {}), load=load or (lambda: load_model(ctx, stage, files)))
