"""``kind = "sparsify"``: 2:4 structured weight sparsity with ``mts.sparsify``, saved with ``mto.save``.

``sparse_magnitude`` keeps the two largest of every four weights; ``sparsegpt`` also updates the kept
weights from calibration data (Hessian-based). Right after sparsifying, accuracy collapses (21% on
digits, measured); a ``finetune`` step after it recovers it while the masks stay applied.
Model Optimizer skips layers its size rule excludes (ResNet20's first conv and its classifier).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..schema import StepConfig
from . import StepKind


class SparsifyStep(StepConfig):
    kind: Literal["sparsify"]
    method: Literal["sparse_magnitude", "sparsegpt"] = "sparse_magnitude"
    calib_batches: int = Field(16, ge=1, description="train-split batches sparsegpt calibrates on (unused "
                               "by sparse_magnitude)")


def build(ctx, parent, step: SparsifyStep, stages):
    import time

    from ..compat import import_modelopt
    from ..stages import Artifact
    from ..training import seed_everything

    _, mto, _ = import_modelopt()
    import modelopt.torch.sparsity as mts

    start = time.perf_counter()
    seed_everything(ctx.seed)
    model = parent.model.eval()
    config: dict = {"verbose": False}
    if step.method == "sparsegpt":
        batches = [x.to(ctx.device) for i, (x, _y) in zip(range(step.calib_batches), ctx.train_loader())]
        config.update({"data_loader": batches, "collect_func": lambda batch: batch})
    model = mts.sparsify(model, step.method, config=config)
    stage = step.name or KIND.stage
    path = ctx.workdir / f"{stage}_modelopt.pth"
    mto.save(model, path)
    metrics = ctx.measure(model, path, time.perf_counter() - start)
    if metrics.sparsity is None:  # the step checks its own promise: a sparsify that sparsified nothing
        from ..errors import StepError

        index = next(i for i, s in enumerate(ctx.recipe.steps) if s is step or s == step)
        raise StepError(str(ctx.recipe.path), f"steps[{index}] (kind = 'sparsify')",
                        f"mts.sparsify({step.method!r}) sparsified no layer of the model: Model Optimizer "
                        "sparsifies plain Conv / Linear layers above its size rule, not quantized (QuantConv) "
                        "layers or ones too small",
                        "put the sparsify step before any quantize step, or use a model with larger layers")
    ctx.log(f"sparsify: {step.method}, {metrics.sparsity:.1%} of the sparsified layers' weights are zero")
    return Artifact(stage, model, metrics, path, {"modelopt": path}, {"method": step.method})


KIND = StepKind(kind="sparsify", stage="sparsified", build=build, schema=SparsifyStep,
                summary="mts.sparsify 2:4 (sparse_magnitude, sparsegpt)")
