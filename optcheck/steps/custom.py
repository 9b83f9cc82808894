"""``kind = "custom"``: the team's own compression function, ``function(model, run) -> model``.

The function gets the previous stage's model (restored afresh from its checkpoint: it may change it in
place) and the ``steps.api.StepRun`` (the context's loaders and device, the step's ``options``,
``run.baseline()``, ``run.log``), and returns the compressed model: its own ``mtq.quantize`` with a
config dict, its own ``mtp.prune`` with its score, anything. optcheck seeds before it, saves the model as
the step declares (``checkpoint``: ``mto.save`` state, a plain state dict, or Torch-Pruning's
``tp.state_dict`` for a model whose layer shapes changed), measures it, and judges every budget on it
like on the built-in kinds; ``searched = true`` says its architecture comes from a search, so its FLOPs
and params are calibrated in the ledger rather than exact.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from optcheck.steps.base import StepConfig, StepKind, factory_field

ENGINES = ("modelopt", "state_dict", "torch_pruning")


class CustomStep(StepConfig):
    kind: Literal["custom"]
    function: str = Field(description="your compression function, 'package.module:function', called as "
                          "function(model, run) and returning the compressed model")
    checkpoint: Literal[ENGINES] = Field(  # type: ignore[valid-type]
        "modelopt", description="how its model is saved and restored: modelopt (mto.save / mto.restore: any "
        "Model Optimizer mode), state_dict (the architecture of the model it was given), torch_pruning "
        "(tp.state_dict: layer shapes changed outside Model Optimizer)")
    searched: bool = Field(False, description="the function searches the architecture: FLOPs and params are "
                           "calibrated in the ledger, not exact")
    options: dict[str, Any] = Field({}, description="for your function, as run.step.options")

    _function = factory_field("function")


def build(run, parent):
    """The team's function on the previous stage's model, saved as the step declares."""
    import torch
    import torch.nn as nn

    from optcheck.core.factories import load_factory

    step = run.step
    fn = load_factory(step.function, f"steps[{run.stage.index}].function", run.path)
    run.seed()
    model = fn(parent.model, run)
    if not isinstance(model, nn.Module):
        run.fail(f"{step.function} returned {type(model).__name__}, not the compressed torch.nn.Module",
                 "return the model (Model Optimizer's calls return it: return mtq.quantize(model, ...))")
    if step.checkpoint == "modelopt":
        path = run.save_modelopt(model)
    elif step.checkpoint == "state_dict":
        path = run.file("state_dict.pth")
        torch.save(model.state_dict(), path)
    else:
        import torch_pruning as tp

        path = run.file("torch_pruning.pth")
        torch.save(tp.state_dict(model), path)
    return run.finish(model, {step.checkpoint: path}, {"function": step.function})


def load(ctx, files, step):
    """A Torch-Pruning checkpoint's model (its layer shapes are in the file); None otherwise: the
    pipeline restores ``modelopt`` / ``state_dict`` checkpoints into the architecture upstream."""
    if step.checkpoint == "torch_pruning":
        from optcheck.steps.torch_pruning import load as tp_load

        return tp_load(ctx, files)
    return None


def preflight(check) -> None:
    """The function imports (named by its field)."""
    from optcheck.core.factories import load_factory

    load_factory(check.step.function, check.field("function"), check.path)


KIND = StepKind(kind="custom", stage="compressed", build=build, schema=CustomStep, load=load,
                checkpoint=lambda step: step.checkpoint, searched=lambda step: step.searched, preflight=preflight,
                summary="your own compression function(model, run) -> model, saved as it declares")
