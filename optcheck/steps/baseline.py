"""Stage 0: the baseline, trained from ``[model]`` and ``[train]`` (not a ``[[steps]]`` table)."""

from __future__ import annotations

from optcheck.steps.base import StepKind


def build(run, parent):
    """Train a freshly built ``[model]`` as ``[train]`` says and save its state dict."""
    import torch

    from optcheck.build.training import Schedule, scaled_lr, train

    ctx = run.ctx
    run.seed()
    model = ctx.make_model()
    t = ctx.recipe.train
    schedule = Schedule(t.epochs, scaled_lr(t.lr, ctx.recipe.data.batch_size), t.momentum,
                        t.weight_decay, t.warmup_epochs)
    history = train(model, ctx.train_loader(), ctx.val_loader, schedule, device=ctx.device,
                    log=ctx.log, label=run.name)
    path = run.file("state_dict.pth")
    torch.save(model.state_dict(), path)
    return run.finish(model, {"state_dict": path}, {"history": history})


def load(ctx, files):
    import torch

    model = ctx.make_model()
    model.load_state_dict(torch.load(files["state_dict"], map_location=ctx.device, weights_only=True))
    return model


KIND = StepKind(kind="baseline", stage="baseline", build=build, load=load, checkpoint="state_dict",
                summary="the model of [model], trained as [train] says")
