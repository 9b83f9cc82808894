"""``kind = "finetune"``: train the previous stage's model further, optionally distilling from the
baseline (``distill``, Model Optimizer's ``mtd``), and ``mto.save`` it.

After a ``fastnas`` step it recovers the pruned subnet's accuracy; after ``quantize`` it is
quantization-aware training (the fake quantizers pass gradients straight through); after
``sparsify`` the 2:4 masks stay applied while the remaining weights train.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from optcheck.steps.base import StepConfig, factory_field
from optcheck.core.schema import Strict
from optcheck.steps.base import StepKind


class Distill(Strict):
    """Logits knowledge distillation from the trained baseline (the teacher, frozen, eval mode)."""

    temperature: float = Field(4.0, gt=0, description="softens both distributions (Hinton et al.)")
    kd_loss_weight: float = Field(0.5, gt=0, le=1, description="the KD loss's share of the total; the "
                                  "rest is the cross-entropy with the labels (mtd.StaticLossBalancer)")


class FinetuneStep(StepConfig):
    kind: Literal["finetune"]
    epochs: int = Field(3, ge=1)
    lr_scale: float = Field(0.5, gt=0, description="times the baseline's learning rate")
    warmup_epochs: float = Field(0.0, ge=0)
    distill: Distill | None = None
    function: str | None = Field(None, description="your training loop, 'package.module:function', called as "
                                 "function(model, training) (steps.api.Training); default: [train] function, "
                                 "else optcheck's SGD loop")
    options: dict[str, Any] = Field({}, description="passed to your training function as training.options")

    _function = factory_field("function")


def build(run, parent):
    """Train the previous stage's model further (distilling from the baseline when ``distill`` is set)."""
    from optcheck.build.training import Schedule, scaled_lr, train

    ctx, step = run.ctx, run.step
    run.seed(1)
    model = parent.model
    t = ctx.recipe.train
    lr = step.lr_scale * scaled_lr(t.lr, ctx.recipe.data.batch_size)
    schedule = Schedule(step.epochs, lr, t.momentum, t.weight_decay, step.warmup_epochs)
    criterion = None
    if step.distill is not None:
        teacher = run.baseline().model
        model, criterion = distillation(model, teacher, step.distill)
    function = step.function or t.function
    if function is not None:  # the team's loop: optcheck seeds, times, measures and saves around it
        from optcheck.steps.api import team_training

        options = step.options if step.function else {**t.options, **step.options}
        history = team_training(run, model, function, epochs=step.epochs, lr=lr, options=options,
                                criterion=criterion)
    else:
        history = train(model, ctx.train_loader(), ctx.val_loader, schedule, device=ctx.device,
                        log=ctx.log, label=run.name, criterion=criterion)
    if step.distill is not None:
        import modelopt.torch.distill as mtd

        check_teacher_unchanged(run, teacher, model)
        model = mtd.export(model)  # the student alone, as a deployment ships it
    path = run.save_modelopt(model)
    return run.finish(model, {"modelopt": path}, {"history": history})


def distillation(student, teacher, cfg: Distill):
    """The student wrapped for logits KD (``mtd.convert``) and the training criterion: the balanced
    sum of the labels' cross-entropy and the KD loss. The teacher is a frozen copy in eval mode."""
    import copy

    import modelopt.torch.distill as mtd
    import torch.nn.functional as F

    teacher = copy.deepcopy(teacher).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    model = mtd.convert(student, mode=[("kd_loss", {
        "teacher_model": teacher,
        "criterion": mtd.LogitsDistillationLoss(temperature=cfg.temperature),
        "loss_balancer": mtd.StaticLossBalancer(kd_loss_weight=cfg.kd_loss_weight),
    })])

    def criterion(logits, y):
        return model.compute_kd_loss(student_loss=F.cross_entropy(logits, y))

    return model, criterion


def check_teacher_unchanged(run, teacher, distilled) -> None:
    """The step checks its own promise: distillation reads the teacher and never changes it. A teacher
    run in train mode updates its BatchNorm statistics on every student batch (and answers with batch
    statistics): its logits are then not the baseline's. (``mtd`` puts the teacher in eval mode before
    each of its forward passes, although ``.train()`` on the distillation model reaches it too.)"""
    import torch

    used = distilled._teacher_model if hasattr(distilled, "_teacher_model") else None
    if used is None:
        return
    changed = []
    mine = used.state_dict()
    for name, ref in teacher.state_dict().items():
        now = mine.get(name)
        if now is not None and ref.is_floating_point() and not torch.equal(ref.to(now.device), now):
            changed.append((name, float((now - ref.to(now.device)).abs().max())))
    if changed:
        worst = max(changed, key=lambda c: c[1])
        run.fail(f"the teacher changed during distillation: {len(changed)} tensors differ from the baseline's"
                 + (f" (largest: {worst[0]} by {worst[1]:.3g})" if worst else ""),
                 "the teacher must be frozen in eval mode (teacher.eval(), requires_grad False); "
                 "check code that calls .train() on the distillation model", where="distill")


def key(recipe, step: FinetuneStep, keys, root: str) -> dict:
    extra = {"train": recipe.train.model_dump(), "batch_size": recipe.data.batch_size}
    if step.distill is not None:
        extra["teacher"] = keys[root]["key"]
    return extra


KIND = StepKind(kind="finetune", stage="finetuned", build=build, schema=FinetuneStep, key=key,
                summary="train further at lr_scale (QAT after quantize; distill = KD from the baseline)")
