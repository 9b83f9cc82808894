"""Stage 0: the baseline (not a ``[[steps]]`` table). Either trained here, from ``[model]`` by ``[train]``
(optcheck's SGD loop, or the team's ``[train] function``), or a trained model the team already has: a
checkpoint file (``model.checkpoint``), a factory that returns a trained model (``model.pretrained``), or
torchvision's pretrained weights from the local hub cache (``model.options.weights``). A trained baseline
is loaded, never trained; its report says where it came from and the file's sha256.
"""

from __future__ import annotations

from optcheck.steps.base import StepKind


def build(run, parent):
    """The trained baseline, saved as a state dict."""
    import torch

    ctx, model_cfg = run.ctx, run.ctx.recipe.model
    run.seed()
    model = ctx.make_model()
    info: dict = {}
    if model_cfg.checkpoint is not None:
        from optcheck.build.weights import checkpoint_path, load_into, read_state_dict
        from optcheck.core.hashing import file_digest

        path = checkpoint_path(model_cfg.checkpoint, ctx.recipe.path)
        load_into(model, read_state_dict(path, model_cfg.checkpoint_key, run.path), path, run.path)
        model.to(ctx.device)
        info = {"loaded_from": model_cfg.checkpoint, "sha256": file_digest(path)}
        ctx.log(f"{run.name}: loaded from {model_cfg.checkpoint} (sha256 {info['sha256'][:16]}...), not trained")
    elif model_cfg.trained:
        info = {"loaded_from": f"{model_cfg.name} (a trained model from its factory)"}
        ctx.log(f"{run.name}: {info['loaded_from']}, not trained")
    else:
        info = {"history": train_baseline(run, model)}
    path = run.file("state_dict.pth")
    torch.save(model.state_dict(), path)
    return run.finish(model, {"state_dict": path}, info)


def train_baseline(run, model) -> dict:
    """``[train]``: the team's function when it names one, else optcheck's SGD loop."""
    from optcheck.build.training import Schedule, scaled_lr, train

    ctx, t = run.ctx, run.ctx.recipe.train
    lr = scaled_lr(t.lr, ctx.recipe.data.batch_size)
    if t.function is not None:
        from optcheck.steps.api import team_training

        return team_training(run, model, t.function, epochs=t.epochs, lr=lr, options=t.options)
    schedule = Schedule(t.epochs, lr, t.momentum, t.weight_decay, t.warmup_epochs)
    return train(model, ctx.train_loader(), ctx.val_loader, schedule, device=ctx.device, log=ctx.log, label=run.name)


def load(ctx, files, step=None):
    import torch

    model = ctx.make_model()
    model.load_state_dict(torch.load(files["state_dict"], map_location=ctx.device, weights_only=True))
    return model


def key(recipe, step, keys, root: str) -> dict:
    """The checkpoint's content (sha256), never its path or time: a changed file rebuilds every stage."""
    from optcheck.core.hashing import file_digest

    m = recipe.model
    if m.checkpoint is None:
        return {}
    from optcheck.build.weights import checkpoint_path

    path = checkpoint_path(m.checkpoint, recipe.path)
    return {"checkpoint_sha256": file_digest(path) if path.is_file() else f"missing: {path}",
            "checkpoint_key": m.checkpoint_key}


def preflight(check) -> None:
    """A checkpoint is there, reads as a state dict and fits the model, before anything else runs; a
    function named in ``[train]`` imports."""
    ctx, model_cfg = check.ctx, check.ctx.recipe.model
    if model_cfg.checkpoint is not None:
        from optcheck.build.weights import checkpoint_path, load_into, read_state_dict

        path = checkpoint_path(model_cfg.checkpoint, ctx.recipe.path)
        load_into(ctx.make_model(), read_state_dict(path, model_cfg.checkpoint_key, check.path), path, check.path)
    function = ctx.recipe.train.function
    if function is not None:
        from optcheck.core.factories import load_factory

        load_factory(function, "train.function", check.path)


KIND = StepKind(kind="baseline", stage="baseline", build=build, load=load, checkpoint="state_dict", key=key,
                preflight=preflight, summary="the model of [model], trained as [train] says, or loaded trained")
