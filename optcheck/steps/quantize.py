"""``kind = "quantize"``: post-training quantization with ``mtq.quantize``, calibrated on
``calib_batches`` batches of the train split, saved with ``mto.save``.

The model keeps fp32 tensors with fake quantizers (FLOPs unchanged); ``measure.weight_bytes`` counts
the weights at the quantizers' real bit-widths, the size a deployment would ship. A ``finetune``
step after it is quantization-aware training.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from optcheck.steps.base import StepConfig, factory_field
from optcheck.steps.base import StepKind

# recipe name -> Model Optimizer config; all of these run on CPU (measured: digits accuracy kept, exact
# mto.save / mto.restore round trip; ../shared/COMPRESSION-ON-CPU.md)
FORMATS = {
    "int8": "INT8_DEFAULT_CFG",
    "int8_weight_only": "INT8_WEIGHT_ONLY_CFG",
    "int8_smoothquant": "INT8_SMOOTHQUANT_CFG",
    "int4_blockwise_weight_only": "INT4_BLOCKWISE_WEIGHT_ONLY_CFG",
    "int4_awq": "INT4_AWQ_CFG",
    "fp8": "FP8_DEFAULT_CFG",
}
# these fail at the first forward on CPU (CUDA-only kernels), so a CPU run refuses them up front
GPU_FORMATS = {
    "mxfp8": "MXFP8_DEFAULT_CFG",    # "Skipping extension modelopt_cuda_ext_mx because CUDA is not available"
    "mxfp4": "MXFP4_DEFAULT_CFG",
    "nvfp4": "NVFP4_DEFAULT_CFG",    # "amax must be a CUDA tensor for dynamic block quantization"
    "nvfp4_awq": "NVFP4_AWQ_LITE_CFG",
    "w4a8_awq": "W4A8_AWQ_BETA_CFG",
}


class QuantizeStep(StepConfig):
    kind: Literal["quantize"]
    format: Literal[tuple(FORMATS) + tuple(GPU_FORMATS)] = Field(  # type: ignore[valid-type]
        "int8", description="int8 = INT8_DEFAULT_CFG (weights and activations, per-channel weights); "
        "mxfp8 / mxfp4 / nvfp4 / nvfp4_awq / w4a8_awq need a CUDA GPU")
    calib_batches: int = Field(16, ge=1, description="train-split batches the calibration forward loop sees")
    forward_loop: str | None = Field(None, description="your calibration loop, 'package.module:function', "
                                     "called as function(model, batches) with the calib_batches inputs "
                                     "(or function(model) to use your own data); default: every batch through "
                                     "the model under no_grad")

    _forward_loop = factory_field("forward_loop")


def config_of(step: QuantizeStep):
    """The ``mtq`` config of the step's format (a ``RecipeError`` if this Model Optimizer lacks it)."""
    from optcheck.core.compat import import_modelopt

    import_modelopt()
    import modelopt.torch.quantization as mtq

    name = {**FORMATS, **GPU_FORMATS}[step.format]
    if not hasattr(mtq, name):
        from importlib.metadata import version

        from optcheck.core.errors import Problem, RecipeError

        raise RecipeError("<recipe>", [Problem(
            "steps[].format", f"this Model Optimizer ({version('nvidia-modelopt')}) has no mtq.{name}",
            ", ".join(FORMATS), "use another format, or the Model Optimizer version optcheck is tested with")])
    return getattr(mtq, name)


def calibration_batches(ctx, step: QuantizeStep):
    """The inputs the calibration sees: the first ``calib_batches`` batches of the seeded train loader."""
    for i, (x, _y) in enumerate(ctx.train_loader()):
        if i >= step.calib_batches:
            return
        yield x


def team_forward_loop(spec: str, field: str, recipe: str):
    """``(model, batches) -> None`` around the team's ``forward_loop``: called with the calibration
    inputs when it takes two arguments, else with the model alone (it brings its own data)."""
    import inspect

    from optcheck.core.factories import load_factory

    fn = load_factory(spec, field, recipe)
    try:
        takes_batches = len(inspect.signature(fn).parameters) >= 2
    except (TypeError, ValueError):
        takes_batches = True
    return (lambda m, batches: fn(m, batches())) if takes_batches else (lambda m, batches: fn(m))


def build(run, parent):
    """``mtq.quantize`` the previous stage's model in eval mode, calibrated on train batches."""
    import torch

    from optcheck.core.compat import import_modelopt

    import_modelopt()
    import modelopt.torch.quantization as mtq

    ctx, step = run.ctx, run.step
    run.seed()
    model = parent.model.eval()  # calibration with BatchNorm's running statistics, as at inference
    seen = {"batches": 0}

    def batches():
        for x in calibration_batches(ctx, step):
            seen["batches"] += 1
            yield x.to(ctx.device)

    def forward_loop(m) -> None:
        with torch.no_grad():
            for x in batches():
                m(x)

    if step.forward_loop is not None:  # the team's calibration: Model Optimizer calls it with the model
        team = team_forward_loop(step.forward_loop, f"steps[{run.stage.index}].forward_loop", run.path)

        def forward_loop(m) -> None:  # noqa: F811 - the team's loop replaces optcheck's
            team(m, batches)

    model = mtq.quantize(model, config_of(step), forward_loop)
    check_quantizers(run, model)
    path = run.save_modelopt(model)
    artifact = run.finish(model, {"modelopt": path}, {"format": step.format, "calibration_batches": seen["batches"]})
    ctx.log(f"quantize: {step.format} calibrated on {seen['batches']} batches; weights "
            f"{artifact.metrics.size_bytes:,} bytes")
    return artifact


def check_quantizers(run, model) -> None:
    """The step's own promise, before anything is saved: Model Optimizer left quantizers enabled, and
    every calibrated scale is finite (the classes of Model-Optimizer #104, "all quantizers disabled",
    and #729, NaN after calibration). The ledger holds the counts exactly besides (``build.structure``)."""
    from optcheck.build.structure import amax_state, quantizers

    found = quantizers(model)
    enabled = [(name, q) for name, _, q in found if getattr(q, "is_enabled", False)]
    if not enabled:
        run.fail(f"mtq.quantize left none of the model's {len(found)} quantizers enabled: the model is not quantized",
                 f"check steps[{run.stage.index}].format and the layers it applies to")
    bad = [name for name, q in enabled if amax_state(q) == "nonfinite"]
    if bad:
        run.fail(f"calibration gave {len(bad)} of {len(enabled)} enabled quantizers a NaN or infinite amax "
                 f"({', '.join(bad[:4])}{', ...' if len(bad) > 4 else ''})",
                 "check the calibration data for NaN / infinite activations (and the forward_loop, if the team's)")


def preflight(check) -> None:
    """A format this device cannot run is a usage error before anything trains, never a crash after."""
    from optcheck.core.errors import Problem, RecipeError

    step = check.step
    if step.forward_loop is not None:
        team_forward_loop(step.forward_loop, check.field("forward_loop"), check.path)  # it imports
    if step.format in GPU_FORMATS and check.ctx.device.type != "cuda":
        cpu = ", ".join(FORMATS)
        raise RecipeError(check.path, [Problem(
            check.field("format"),
            f"format {step.format!r} ({GPU_FORMATS[step.format]}) needs a CUDA GPU: Model Optimizer runs its "
            f"quantizers with CUDA kernels; this run's device is {check.ctx.device.type}",
            cpu, f"use a CPU format ({cpu}), or run on a GPU machine (--optcheck-device=cuda)")])


KIND = StepKind(kind="quantize", stage="quantized", build=build, schema=QuantizeStep, preflight=preflight,
                summary="mtq.quantize post-training quantization, calibrated on train batches")
