"""A team's quality metrics (``[[metrics]]``), measured on a model: one number, or one value per sample.

``function(model, loader, device, **options)`` runs with the model in eval mode under ``no_grad`` (its
mode restored after) on the split the metric names. What it returns is checked, and every way it can be
wrong is one ``RecipeError`` naming the function and what it returned: it raised, returned NaN or an
infinity, a value of another type, or per-sample values of another length than the split's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from optcheck.core.errors import Problem, RecipeError, summarize_exception


@dataclass(frozen=True)
class MetricValue:
    """A metric on one model: its value (the mean of the per-sample values, when there are some)."""

    value: float
    per_sample: np.ndarray | None = None  # float64, one per sample of the split; None for a single number


def measure_metric(cfg, index: int, model, loader, device, recipe: str) -> MetricValue:
    """``cfg`` (a ``[[metrics]]`` table, at ``metrics[index]``) on ``model`` over ``loader``."""
    from optcheck.core.factories import load_factory

    field = f"metrics[{index}].function"
    fn = load_factory(cfg.function, field, recipe)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            got = fn(model, loader, device, **cfg.options)
    except Exception as exc:  # noqa: BLE001 - the team's code raising is the finding, named as such
        cause, origin = summarize_exception(exc)
        raise RecipeError(recipe, [Problem(field, f"{cfg.function} raised {cause}" + (f" at {origin}" if origin else ""),
                                           fix=f"fix the metric (it is called as {cfg.function}(model, loader, "
                                               "device, **options))")]) from exc
    finally:
        model.train(was)
    return check_value(got, cfg, field, len(loader.dataset), recipe)


def check_value(got: Any, cfg, field: str, n: int, recipe: str) -> MetricValue:
    """What a metric returned, as a ``MetricValue``; anything else is a ``RecipeError``."""
    def refuse(what: str, fix: str) -> RecipeError:
        return RecipeError(recipe, [Problem(field, f"{cfg.function} returned {what}", fix=fix)])

    shape_fix = (f"return one number, or one value per sample ({n}: the {cfg.split} split's size) as a 1-D "
                 "tensor, array or list")
    if isinstance(got, bool) or got is None or isinstance(got, (str, bytes, dict)):
        raise refuse(f"{got!r} ({type(got).__name__})", shape_fix)
    if isinstance(got, (int, float)):
        value = float(got)
        if not math.isfinite(value):
            raise refuse(f"{value} (not a finite number)", "return a finite number (NaN usually means an empty "
                                                           "bin or a division by zero in the metric)")
        return MetricValue(value)
    try:
        array = (got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)).astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise refuse(f"a {type(got).__name__} that is not numbers ({exc})", shape_fix) from None
    if array.ndim == 0:
        return check_value(float(array), cfg, field, n, recipe)
    if array.ndim != 1 or len(array) != n:
        raise refuse(f"values of shape {tuple(array.shape)}", shape_fix)
    bad = int((~np.isfinite(array)).sum())
    if bad:
        raise refuse(f"{bad} of {n} per-sample values that are not finite (NaN or infinite)",
                     "make every sample's value finite")
    return MetricValue(float(array.mean()), array)
