"""``kind = "sparsify"``: 2:4 structured weight sparsity with ``mts.sparsify``, saved with ``mto.save``.

``sparse_magnitude`` keeps the two largest of every four weights; ``sparsegpt`` also updates the kept
weights from calibration data (Hessian-based). Right after sparsifying, accuracy collapses (21% on
digits, measured); a ``finetune`` step after it recovers it while the masks stay applied.
Model Optimizer skips layers its size rule excludes (ResNet20's first conv and its classifier).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from optcheck.steps.base import StepConfig
from optcheck.steps.base import StepKind


class SparsifyStep(StepConfig):
    kind: Literal["sparsify"]
    method: Literal["sparse_magnitude", "sparsegpt"] = "sparse_magnitude"
    calib_batches: int = Field(16, ge=1, description="train-split batches sparsegpt calibrates on (unused "
                               "by sparse_magnitude)")


def build(run, parent):
    """``mts.sparsify`` the previous stage's model to 2:4 and check that something was sparsified."""
    from optcheck.core.compat import import_modelopt

    import_modelopt()
    import modelopt.torch.sparsity as mts

    ctx, step = run.ctx, run.step
    run.seed()
    model = parent.model.eval()
    config: dict = {"verbose": False}
    if step.method == "sparsegpt":
        batches = [x.to(ctx.device) for i, (x, _y) in zip(range(step.calib_batches), ctx.train_loader())]
        config.update({"data_loader": batches, "collect_func": lambda batch: batch})
    model = mts.sparsify(model, step.method, config=config)
    path = run.save_modelopt(model)
    artifact = run.finish(model, {"modelopt": path}, {"method": step.method})
    if artifact.metrics.sparsity is None:  # the step checks its own promise: a sparsify that sparsified nothing
        run.fail(f"mts.sparsify({step.method!r}) sparsified no layer of the model: Model Optimizer sparsifies "
                 "plain Conv / Linear layers above its size rule, not quantized (QuantConv) layers or ones too small",
                 "put the sparsify step before any quantize step, or use a model with larger layers")
    ctx.log(f"sparsify: {step.method}, {artifact.metrics.sparsity:.1%} of the sparsified layers' weights are zero")
    return artifact


KIND = StepKind(kind="sparsify", stage="sparsified", build=build, schema=SparsifyStep,
                summary="mts.sparsify 2:4 (sparse_magnitude, sparsegpt)")
