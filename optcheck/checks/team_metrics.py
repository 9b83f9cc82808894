"""Budgets on a team's own quality metric: a drop against the baseline (in the metric's bad direction,
with its paired interval when the metric gives one value per sample), and a floor or a ceiling.

Usable in any test: the metric is any ``function(model, loader, device) -> number | per-sample values``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from optcheck.checks.failure import fail

_HINT = ("the compressed model lost quality on this metric: fine-tune longer (or distil), relax the compression "
         "target, or, if the metric itself changed, check the metric function")


def _value(metric: Callable, model: Any, loader: Any, device: Any, better: str):
    from types import SimpleNamespace

    cfg = SimpleNamespace(function=f"{getattr(metric, '__module__', '?')}:{getattr(metric, '__name__', '?')}",
                          options={}, split="test", better=better)
    return _measure(cfg, metric, model, loader, device)


def _measure(cfg, fn, model, loader, device):
    import torch

    from optcheck.build.metrics import check_value

    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            got = fn(model, loader, device)
    finally:
        model.train(was)
    return check_value(got, cfg, "metric", len(loader.dataset), "<test>")


def assert_metric_drop_under(baseline: Any, candidate: Any, data: Any = None, max_drop: float | str = 0.0, *,
                             metric: Callable | None = None, better: str = "higher", name: str | None = None,
                             rule: str = "point", confidence: float = 0.95, device: Any = "cpu",
                             measured: Any = None, budget: str = "metric_drop_under") -> dict[str, Any]:
    """Fail when ``candidate`` is worse than ``baseline`` on ``metric`` by more than ``max_drop`` (an
    amount in the metric's units, or ``"N%"`` of the baseline's value), in the metric's bad direction
    (``better``: ``"higher"`` or ``"lower"``). ``measured``: a ``core.metric_stats.MetricDrop`` already
    computed (the recipe budgets pass it). Returns the measured values."""
    __tracebackhide__ = True
    from optcheck.core.limits import parse_percent
    from optcheck.core.metric_stats import decide_metric, metric_drop

    if better not in ("higher", "lower"):
        raise ValueError(f"better={better!r}: use 'higher' or 'lower'")
    drop = measured
    if drop is None:
        if metric is None or data is None:
            raise ValueError("give metric= and data=, or measured=")
        drop = metric_drop(name or getattr(metric, "__name__", "metric"), better,
                           _value(metric, baseline, data, device, better),
                           _value(metric, candidate, data, device, better), confidence)
    fraction = parse_percent(max_drop) if isinstance(max_drop, str) else None
    limit = fraction * abs(drop.base) if fraction is not None else float(max_drop)
    passed, explain = decide_metric(drop, limit, rule)
    out = {"metric": drop.name, "better": drop.better, "baseline": drop.base, "candidate": drop.cand,
           "drop": drop.drop, "limit": limit, "ci_low": drop.low, "ci_high": drop.high, "n": drop.n,
           "method": drop.method, "rule": rule, "explain": explain}
    if not passed:
        rows = [("metric", f"{drop.name} ({drop.better} is better)"),
                ("measured", f"baseline {drop.base:.6g}, candidate {drop.cand:.6g}: {drop.drop:+.4g} worse"),
                ("limit", f"{limit:.4g}" + (f" ({max_drop} of the baseline's value)" if fraction is not None else "")),
                ("interval", f"[{drop.low:+.4g}, {drop.high:+.4g}] ({drop.method})" if drop.low is not None
                 else drop.method),
                ("rule", explain.rsplit("; rule ", 1)[-1])]
        fail(budget, rows, _HINT)
    return out


def assert_metric_bound(candidate: Any, data: Any = None, bound: float = 0.0, *, metric: Callable | None = None,
                        better: str = "higher", name: str | None = None, device: Any = "cpu",
                        measured: float | None = None, budget: str | None = None) -> dict[str, Any]:
    """A floor of a higher-is-better metric (``metric_at_least``) or a ceiling of a lower-is-better one
    (``metric_at_most``), on the candidate's value (``measured``, or ``metric`` over ``data``)."""
    __tracebackhide__ = True
    if better not in ("higher", "lower"):
        raise ValueError(f"better={better!r}: use 'higher' or 'lower'")
    value = measured if measured is not None else _value(metric, candidate, data, device, better).value
    label = name or getattr(metric, "__name__", "metric")
    budget = budget or ("metric_at_least" if better == "higher" else "metric_at_most")
    passed = value >= bound if better == "higher" else value <= bound
    if not passed:
        side = "floor" if better == "higher" else "ceiling"
        fail(budget, [("metric", f"{label} ({better} is better)"), ("measured", f"{value:.6g}"),
                      (side, f"{bound:.6g}"), ("difference", f"{value - bound:+.4g}")], _HINT)
    return {"metric": label, "value": value, "bound": bound, "better": better}
