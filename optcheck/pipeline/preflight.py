"""Checks before anything trains: what a recipe asks of its data, model and search space, tested up
front so that a mistake is one ``RecipeError`` naming the field and the fix, not a traceback from
deep inside scikit-learn, torch or Model Optimizer minutes later.

Each check is a plain function over the stage context (``stages.Context``); ``pipeline.RecipeRun.
preflight`` calls them in order. The schema (``recipes/schema.py``) already checked what needs no data.
"""

from __future__ import annotations

from typing import Any

from optcheck.core.errors import Problem, RecipeError
from optcheck.core.stats import agreement_halfwidth

BUILT_IN_MODELS = ("resnet20", "small_cnn")


def _labels(dataset: Any):
    """The labels of a dataset when it holds them as a tensor or list (no sample is loaded), else None."""
    import torch
    from torch.utils.data import Subset

    if isinstance(dataset, Subset):
        inner = _labels(dataset.dataset)
        return None if inner is None else inner[torch.as_tensor(list(dataset.indices), dtype=torch.long)]
    tensors = getattr(dataset, "tensors", None)  # torch.utils.data.TensorDataset(x, y)
    if isinstance(tensors, tuple) and len(tensors) == 2:
        return tensors[1].view(-1)
    for attr in ("labels", "targets"):
        value = getattr(dataset, attr, None)
        if value is not None:
            try:
                return torch.as_tensor(value).view(-1)
            except (TypeError, ValueError, RuntimeError):
                return None
    return None


def check_data(ctx, path: str) -> None:
    """Every split holds samples, the test split enough for a verdict, and every label known to the
    data is one the model can predict."""
    recipe, data = ctx.recipe, ctx.data
    factory = recipe.data.dataset not in ("digits", "cifar10", "synthetic")
    sizes = data.sizes()
    for split, n in sizes.items():
        if n == 0:
            fix = (f"make {recipe.data.dataset} return a non-empty '{split}' split" if factory else
                   f"raise data.{'test' if split == 'test' else 'val'}_fraction or the dataset's samples")
            raise RecipeError(path, [Problem("data.dataset", f"the {split} split is empty ({sizes}): "
                                             "nothing can be trained or judged on it", fix=fix)])
    need = recipe.budgets.min_test_samples
    if sizes["test"] < need:
        raise RecipeError(path, [Problem(
            "data.test_limit" if recipe.data.test_limit else "data.test_fraction",
            f"the test split holds {sizes['test']} samples, fewer than budgets.min_test_samples = {need}: a "
            f"verdict on so few samples means little (identical predictions on {sizes['test']} samples all right "
            f"leave a 95% interval of the drop of +-{agreement_halfwidth(max(1, sizes['test'])) * 100:.2f} pp)",
            fix="give the test split more samples (test_fraction, test_limit, or the dataset), or lower "
                "budgets.min_test_samples knowingly")])
    if data.num_classes < 2:
        raise RecipeError(path, [Problem("data.dataset", f"the data has {data.num_classes} class: a classifier "
                                         "needs at least 2", fix="check the dataset's labels")])
    for split in ("train", "val", "test"):
        labels = _labels(getattr(data, split))
        if labels is None or labels.numel() == 0:
            continue
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= data.num_classes:
            bad = sorted({int(v) for v in labels[(labels < 0) | (labels >= data.num_classes)].tolist()})[:5]
            raise RecipeError(path, [Problem(
                "data.dataset",
                f"the {split} split has labels {bad} outside the model's {data.num_classes} classes "
                f"(0..{data.num_classes - 1}): they could never be predicted, and accuracy on them means nothing",
                fix="make the labels 0..num_classes-1, or give the dataset factory's num_classes the true "
                    "number of classes")])


def check_forward(ctx, model, path: str) -> None:
    """One forward pass of a batch of two samples' shape: a tensor of logits, one per class."""
    import torch

    shape = tuple(ctx.data.input_shape)
    field = "model.name" if ctx.recipe.model.name not in BUILT_IN_MODELS else "data.dataset"
    hint = ""
    if ctx.recipe.model.name in BUILT_IN_MODELS and len(shape) != 3:
        hint = (f"; {ctx.recipe.model.name} takes images (channels, height, width), the dataset's samples "
                f"have shape {shape}")
    x = torch.zeros(2, *shape, device=ctx.device)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:
        from optcheck.core.errors import summarize_exception

        cause, origin = summarize_exception(exc)
        raise RecipeError(path, [Problem(
            field, f"the model's forward pass on a batch of samples of shape {shape} raised {cause}"
                   f"{'' if not origin else ' (' + origin + ')' if origin.startswith('inside') else ' (at ' + origin + ')'}"
                   f"{hint}",
            fix="make the model accept the dataset's samples (or the dataset produce what the model takes)")]) from None
    finally:
        model.train(was)
    if not isinstance(out, torch.Tensor):
        raise RecipeError(path, [Problem(
            "model.name", f"the model's forward returns a {type(out).__name__}, not a tensor of logits",
            fix="return the logits tensor alone (e.g. wrap the model: `return self.net(x)[0]`); optcheck's "
                "accuracy, FLOPs and round-trip checks compare one output tensor")])
    if out.dim() != 2 or out.shape[0] != 2 or out.shape[1] != ctx.data.num_classes:
        raise RecipeError(path, [Problem(
            "model.name", f"the model's forward returns shape {tuple(out.shape)} for a batch of 2; expected "
            f"(2, {ctx.data.num_classes}): one logit per class of the data",
            fix="build the classifier head with num_classes outputs (optcheck passes num_classes= to a factory "
                "that takes it)")])
    check_training_forward(model, x, path)


def check_training_forward(model, x, path: str) -> None:
    """Training runs the model in training mode, where some models return more than the logits
    (torchvision's googlenet and inception_v3 with aux_logits=True return a named tuple with their
    auxiliary heads' outputs). Checked on a copy, so no BatchNorm statistic of the model moves."""
    import copy

    import torch

    probe = copy.deepcopy(model).train()
    try:
        with torch.no_grad():
            out = probe(x)
    except Exception:  # noqa: BLE001 - training itself reports a failing training forward with its cause
        return
    if not isinstance(out, torch.Tensor):
        aux = any(hasattr(probe, a) for a in ("aux1", "AuxLogits", "aux_logits"))
        raise RecipeError(path, [Problem(
            "model.options", f"the model's forward returns a {type(out).__name__} in training mode (a tensor of "
            "logits in eval mode): optcheck trains on one logits tensor",
            fix=("pass model options = { aux_logits = false } (torchvision's googlenet and inception_v3 return "
                 "their auxiliary heads' outputs in training mode)" if aux else
                 "return the logits tensor alone in training mode too (e.g. wrap the model: `return self.net(x)[0]`)"))])






def check_budgets_can_fail(recipe, bounds: dict[str, float] | None, path: str) -> None:
    """An absolute FLOPs / params budget at or above the full model's can never fail."""
    from optcheck.core.limits import human, parse_percent

    if bounds is None:
        return
    budgets = recipe.budgets
    for stage in [None, *budgets.stages]:
        table = budgets.table(stage)
        where = "budgets" if stage is None else f"budgets.{stage}"
        for name, metric, unit in (("flops_below", "flops", " FLOPs"), ("params_below", "params", " params")):
            limit = getattr(table, name)
            if limit is None or parse_percent(limit) is not None or name in table.report_only:
                continue
            full = bounds[f"max_{metric}"]
            if float(limit) >= full:
                raise RecipeError(path, [Problem(
                    f"{where}.{name}",
                    f"{name} = {limit} can never fail: the full, unpruned model has {human(full, unit)} "
                    f"({int(full):,})",
                    fix=f"set a limit below {int(full):,} (or a percentage under 100%), or list it in "
                        f"{where}.report_only to measure it without judging")])
