"""Public budget assertions, usable in any test without a recipe.

Each raises ``AssertionError`` whose message names the budget, the measured value, the limit, the
difference and a hint, and hides its own frames so the failure points at the caller's line.
"""

from __future__ import annotations

from optcheck.checks.failure import fail

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from optcheck.core.limits import check_limit, describe, parse_percent, resolve_limit
from optcheck.core.limits import human

Number = float | int


def _reference_value(reference: Any, measure: Callable[[Any], Number]) -> float | None:
    if reference is None:
        return None
    if isinstance(reference, (int, float)) and not isinstance(reference, bool):
        return float(reference)
    return float(measure(reference))


def _check_below(budget: str, unit: str, measured: Number, limit: object, reference: float | None,
                 hint: str) -> float:
    __tracebackhide__ = True
    try:
        bound = resolve_limit(limit, reference, budget)
    except ValueError as exc:
        raise ValueError(f"{budget}: {exc}") from None
    if measured <= bound:
        return float(measured)
    frac = parse_percent(limit)
    limit_text = f"{human(bound, unit)} ({bound:,.0f})"
    if frac is not None:
        limit_text += f" = {describe(limit)} of reference {human(reference, unit)}"
    rows = [("measured", f"{human(measured, unit)} ({measured:,.0f})"), ("limit", limit_text),
            ("over by", f"{human(measured - bound, unit)} (+{(measured / bound - 1) * 100:.1f}% of the limit)")]
    if reference:
        rows.append(("vs reference", f"{measured / reference * 100:.1f}% of {human(reference, unit)}"))
    fail(budget, rows, hint)


def assert_flops_below(model: Any, limit: object, *, dummy_input: Any, reference: Any = None) -> float:
    """Fail unless ``model``'s inference FLOPs (Model Optimizer's convention) are <= ``limit``.

    ``limit`` is a number, or ``"N%"`` of ``reference`` (a model, counted on the same
    ``dummy_input``, or a FLOPs number). Returns the measured FLOPs.
    """
    __tracebackhide__ = True
    from optcheck.build.measure import count_flops

    check_limit(limit)
    ref = _reference_value(reference, lambda m: count_flops(m, dummy_input))
    return _check_below("flops_below", " FLOPs", count_flops(model, dummy_input), limit, ref,
                        "prune harder (lower the FastNAS 'flops' target or the channel divisor), "
                        "or check that the model given is the pruned subnet and not the baseline")


def assert_params_below(model: Any, limit: object, *, reference: Any = None) -> float:
    """Fail unless ``model`` has at most ``limit`` parameters (a number or ``"N%"`` of
    ``reference``, a model or a number). Returns the measured count."""
    __tracebackhide__ = True
    from optcheck.build.measure import count_params

    check_limit(limit)
    ref = _reference_value(reference, count_params)
    return _check_below("params_below", " params", count_params(model), limit, ref,
                        "prune harder (a lower FastNAS target), or check that the model given is "
                        "the pruned subnet and not the baseline")


def assert_size_below(model: Any, limit: object, *, reference: Any = None) -> float:
    """Fail unless ``model``'s parameters take at most ``limit`` bytes at their real bit-widths
    (``measure.weight_bytes``: a Model Optimizer weight quantizer's ``num_bits`` plus its scales, fp32
    otherwise). ``limit`` is a number of bytes or ``"N%"`` of ``reference`` (a model or a byte count,
    usually the fp32 baseline). Returns the measured bytes."""
    __tracebackhide__ = True
    from optcheck.build.measure import weight_bytes

    check_limit(limit)
    ref = _reference_value(reference, weight_bytes)
    return _check_below("size_below", " B", weight_bytes(model), limit, ref,
                        "quantize more of the model (a weight quantizer disabled or missing counts as fp32), "
                        "prune it further, or check that the model given is the compressed one")


def assert_sparsity_at_least(model: Any, minimum: float) -> float:
    """Fail unless at least ``minimum`` (a fraction) of the weights of ``model``'s sparsified layers
    are zero (``measure.sparsity``; 0.5 for 2:4). A model with no sparsified layer fails: its masks
    were never applied, or were lost on save / restore. Returns the measured fraction."""
    __tracebackhide__ = True
    from optcheck.build.measure import sparsity

    if not 0 < minimum <= 1:
        raise ValueError(f"sparsity_at_least: {minimum!r} must be a fraction in (0, 1]")
    got = sparsity(model)
    if got is None:
        fail("sparsity_at_least", [("measured", "no sparsified layer (no Model Optimizer sparse module whose "
                                                  "mask removes a weight)"), ("limit", f">= {minimum:.1%} zeros")],
              "check that mts.sparsify ran on this model and that its masks survived mto.save / mto.restore "
              "(the modelopt_state must hold the sparsity mode)")
    if got + 1e-12 >= minimum:
        return got
    fail("sparsity_at_least", [("measured", f"{got:.2%} of the sparsified layers' weights are zero"),
                                ("limit", f">= {minimum:.2%}"), ("short by", f"{(minimum - got) * 100:.2f} pp")],
          "a 2:4 pattern gives 50%: check the sparsify step's method and that fine-tuning kept the masks")


def _accuracy(subject: Any, data: Any, role: str) -> tuple[float, int | None]:
    __tracebackhide__ = True
    if isinstance(subject, (int, float)) and not isinstance(subject, bool):
        if not 0 <= subject <= 1:
            raise ValueError(f"{role} accuracy {subject!r} must be a fraction in [0, 1]")
        return float(subject), None
    if data is None:
        raise ValueError(f"{role} is a model: pass data=<DataLoader or (inputs, labels)> to measure it")
    from optcheck.build.training import evaluate

    device = next((p.device for p in subject.parameters()), "cpu")
    return evaluate(subject, _as_loader(data), device)


def _as_loader(data: Any):
    from torch.utils.data import DataLoader, TensorDataset

    if isinstance(data, DataLoader):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return DataLoader(TensorDataset(data[0], data[1]), batch_size=512)
    # any loader that can be iterated again (optcheck's TensorBatches, a user's own): not a one-shot
    # iterator or generator, which the first pass would exhaust and the next would see empty
    if hasattr(data, "__iter__") and not hasattr(data, "__next__"):
        return data
    raise TypeError("data must be a DataLoader (or another loader that can be iterated more than once) "
                    "or an (inputs, labels) pair of tensors")


def _pct(acc: float, n: int | None) -> str:
    return f"{acc * 100:.2f}%" + (f" (n={n}, {round(acc * n)} correct)" if n else " (given)")


def assert_accuracy_at_least(model: Any, data: Any, floor: float | str = "auto", *,
                             confidence: float = 0.95, budget: str = "baseline_accuracy_at_least") -> dict[str, Any]:
    """Fail unless ``model``'s accuracy on ``data`` reaches ``floor`` (a fraction).

    ``floor = "auto"`` is halfway from chance to 100%, chance being the share of the most frequent
    label in ``data`` (what always answering that class scores). Meant for the trained baseline:
    below it the model learned too little for any budget relative to it to mean anything (a drop
    from a baseline near chance is no evidence of a good compressed model). Returns the accuracy,
    the floor, chance and a one-line explanation.
    """
    __tracebackhide__ = True
    import torch

    from optcheck.core.stats import wilson_interval
    from optcheck.build.training import correct_mask

    if floor != "auto" and (isinstance(floor, (bool, str)) or not 0 < float(floor) <= 1):
        raise ValueError(f"{budget}: floor {floor!r} must be 'auto' or a fraction in (0, 1] (0.9 = 90% accuracy)")
    loader = _as_loader(data)
    batches = [y.reshape(-1) for _, y in loader]  # torch.cat([]) raises before the check below
    labels = torch.cat(batches) if batches else torch.zeros(0, dtype=torch.long)
    if labels.numel() == 0:
        raise ValueError(f"{budget}: the data is empty; there is nothing to judge the model on")
    device = next((p.device for p in model.parameters()), "cpu")
    hits = correct_mask(model, loader, device)
    n, k = int(labels.numel()), int(hits.sum())
    chance = float(torch.bincount(labels.long()).max()) / n
    if floor == "auto":
        bound, how = chance + 0.5 * (1 - chance), f"auto: halfway from chance {chance * 100:.2f}% to 100%"
    else:
        bound, how = float(floor), "set in the recipe"
    acc = k / n
    low, high = wilson_interval(k, n, confidence)
    explain = (f"{acc * 100:.2f}% (n={n}, {confidence:.0%} CI [{low * 100:.2f}, {high * 100:.2f}]%) vs floor "
               f"{bound * 100:.2f}% ({how}; chance = the most frequent label's share)")
    if acc >= bound:
        return {"accuracy": acc, "floor": bound, "chance": chance, "explain": explain}
    fail(budget, [
        ("accuracy", f"{acc * 100:.2f}% (n={n}, {k} correct; {confidence:.0%} CI [{low * 100:.2f}, {high * 100:.2f}]%)"),
        ("floor", f"{bound * 100:.2f}% ({how})"),
        ("chance", f"{chance * 100:.2f}% (always answering the most frequent label)"),
        ("why it matters", "the baseline learned too little: every budget relative to it (accuracy drop, "
                           "FLOPs and params percentages) compares against a model that does not work"),
    ], "train the baseline longer or at another learning rate, and check the data and labels; if this "
       "accuracy is really what the task allows, set [budgets] baseline_accuracy_at_least to a fraction")


def paired_accuracy_drop(baseline: Any, candidate: Any, data: Any, confidence: float = 0.95):
    """The paired drop of ``candidate`` against ``baseline`` on the same ``data``, with its interval
    (``optcheck.stats.PairedDrop``). Both are models."""
    from optcheck.core.stats import paired_drop
    from optcheck.build.training import correct_mask

    loader = _as_loader(data)
    masks = []
    for model in (baseline, candidate):
        device = next((p.device for p in model.parameters()), "cpu")
        masks.append(correct_mask(model, loader, device).numpy())
    return paired_drop(masks[0], masks[1], confidence)


def assert_accuracy_drop_under(baseline: Any, candidate: Any, data: Any, max_drop: float, *,
                               rule: str = "point", confidence: float = 0.95) -> float:
    """Fail when ``baseline`` accuracy minus ``candidate`` accuracy exceeds ``max_drop``.

    ``baseline`` and ``candidate`` are each a model or an accuracy in [0, 1]; models are evaluated
    on ``data`` (a DataLoader or an ``(inputs, labels)`` pair). Lists of models (one pair per seed,
    same ``data``) are judged on the mean drop with a t-interval over seeds. ``max_drop`` is a
    fraction: 0.01 = 1 percentage point. Returns the measured (mean) drop.

    ``rule`` decides how the drop's ``confidence`` interval (paired: the same images for both
    models; ``optcheck.stats``) is used: ``"point"`` passes when the observed drop <= max_drop;
    ``"not_significantly_over"`` fails only when the whole interval lies above it;
    ``"assured_under"`` passes only when the whole interval lies at or below it. Given accuracies
    as numbers, only ``"point"`` is possible (there are no pairs to build an interval from).
    """
    __tracebackhide__ = True
    from optcheck.core.stats import RULES, mean_drop

    if not 0 <= max_drop <= 1:
        raise ValueError(f"max_drop {max_drop!r} must be a fraction in [0, 1] (0.01 = 1 percentage point)")
    if rule not in RULES:
        raise ValueError(f"rule {rule!r} is unknown: use one of {', '.join(RULES)}")
    if isinstance(baseline, (list, tuple)) or isinstance(candidate, (list, tuple)):
        if not (isinstance(baseline, (list, tuple)) and isinstance(candidate, (list, tuple))
                and len(baseline) == len(candidate) and baseline):
            raise ValueError("give one baseline and one candidate model per seed (two lists of equal length)")
        datas = data if isinstance(data, list) and len(data) == len(baseline) and all(
            _is_loader(d) for d in data) else [data] * len(baseline)
        drops = [paired_accuracy_drop(b, c, d, confidence) for b, c, d in zip(baseline, candidate, datas)]
        return assert_paired_drop_under(mean_drop(drops, confidence), max_drop, rule=rule)
    if any(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (baseline, candidate)):
        if rule != "point":
            raise ValueError(f"rule {rule!r} needs the two models (an interval comes from the paired "
                             "predictions); with accuracies given as numbers only rule 'point' applies")
        base, base_n = _accuracy(baseline, data, "baseline")
        cand, cand_n = _accuracy(candidate, data, "candidate")
        drop = base - cand
        if drop <= max_drop + 1e-12:
            return drop
        fail("accuracy_drop_under", [
            ("baseline", _pct(base, base_n)),
            ("candidate", _pct(cand, cand_n)),
            ("drop", f"{drop * 100:.2f} pp > allowed {max_drop * 100:.2f} pp "
                     f"(over by {(drop - max_drop) * 100:.2f} pp)"),
        ], _DROP_HINT)
    if data is None:
        raise ValueError("baseline and candidate are models: pass data=<DataLoader or (inputs, labels)>")
    return assert_paired_drop_under(paired_accuracy_drop(baseline, candidate, data, confidence), max_drop, rule=rule)


_DROP_HINT = ("fine-tune longer or at a better learning rate, or relax the compression target; "
              "a drop far above the budget before fine-tuning means the target is too aggressive")


def _is_loader(x: Any) -> bool:
    from torch.utils.data import DataLoader

    return isinstance(x, DataLoader)


def assert_paired_drop_under(drop: Any, max_drop: float, *, rule: str = "point",
                             budget: str = "accuracy_drop_under") -> float:
    """Judge an already measured drop (``optcheck.stats.PairedDrop`` or ``SeedsDrop``) under
    ``rule``; the failure message gives the accuracies, the interval, the disagreements and the rule.
    Returns the (mean) drop."""
    __tracebackhide__ = True
    from optcheck.core.stats import PairedDrop, decide

    verdict = decide(drop, max_drop, rule)
    if verdict.passed:
        return drop.drop
    ci = f"{drop.confidence:.0%} CI"
    if isinstance(drop, PairedDrop):
        rows = [("baseline", _pct(drop.base_acc, drop.n)), ("candidate", _pct(drop.cand_acc, drop.n)),
                ("drop", f"{drop.drop * 100:.2f} pp, allowed {max_drop * 100:.2f} pp"),
                (ci, f"[{drop.low * 100:+.2f}, {drop.high * 100:+.2f}] pp (paired: {drop.b} images only the "
                     f"baseline got right, {drop.c} only the candidate)")]
    else:
        per = ", ".join(f"{d.drop * 100:.2f}" for d in drop.per_seed)
        rows = [("drop", f"{drop.drop * 100:.2f} pp mean over {drop.seeds} seeds ({per} pp), allowed "
                         f"{max_drop * 100:.2f} pp"),
                (ci, f"[{drop.low * 100:+.2f}, {drop.high * 100:+.2f}] pp ({drop.method})")]
    rows.append(("rule", verdict.explain().rsplit("; rule ", 1)[-1]))
    fail(budget, rows, _DROP_HINT)


def assert_onnx_parity(model: Any, data: Any, *, max_abs_diff: float | None = None,
                       top1_agreement: float | None = None, example_input: Any = None,
                       path: str | Path | None = None, measured: Any = None) -> dict[str, Any]:
    """Export ``model`` to ONNX, run it with onnxruntime on every batch of ``data`` (a loader, or an
    ``(inputs, labels)`` pair of tensors) and compare with the model in PyTorch eval mode: fail when
    the largest absolute difference of the logits exceeds ``max_abs_diff``, or when fewer than
    ``top1_agreement`` (a fraction) of the samples get the same predicted class. An export or
    onnxruntime failure fails too (a parity that was not measured never passes). ``example_input`` is
    what the exporter traces (default: the first two samples); ``path`` keeps the ``.onnx`` file
    (default: a temporary one); ``measured`` (an ``onnx_parity.Parity`` or ``ExportError`` from an
    earlier call of ``onnx_parity.compare``) judges that comparison instead of exporting again.
    Returns the measurements (``Parity.as_dict``)."""
    __tracebackhide__ = True
    from optcheck.checks.onnx_parity import ExportError, compare

    if max_abs_diff is None and top1_agreement is None:
        raise ValueError("assert_onnx_parity: give max_abs_diff, top1_agreement or both")
    if max_abs_diff is not None and not (0 <= max_abs_diff < float("inf")):
        raise ValueError(f"max_abs_diff = {max_abs_diff!r}: a finite number >= 0 (inf can never fail)")
    if top1_agreement is not None and not 0 < top1_agreement <= 1:
        raise ValueError(f"top1_agreement = {top1_agreement!r}: a fraction in (0, 1] (0 can never fail)")
    budget = "onnx_max_abs_diff" if max_abs_diff is not None else "onnx_top1_agreement"
    got = measured
    if got is None:
        loader = _as_loader(data)
        if example_input is None:
            example_input = next(iter(loader))[0][:2]
        device = next((p.device for p in model.parameters()), None)
        if device is not None:
            example_input = example_input.to(device)
        with tempfile.TemporaryDirectory(prefix="optcheck-onnx-") as tmp:
            target = Path(path) if path is not None else Path(tmp) / "model.onnx"
            try:
                got = compare(model, loader, target, example_input)
            except ExportError as exc:
                got = exc
    if isinstance(got, ExportError):
        fail(budget, [("export", str(got))],
              "the parity of a model that does not export or run was not measured: fix the export (for a "
              "Model Optimizer quantized model the TorchScript exporter writes Q/DQ nodes; the dynamo exporter "
              "fails on them)")
    rows = [("max |diff|", f"{got.max_abs_diff:.3g} over {got.n} samples' logits"),
            ("top-1", f"{got.top1_agreement:.2%} agree ({got.disagreements} of {got.n} differ)"),
            ("graph", f"{got.nodes} nodes ({got.qdq_nodes} Q/DQ), {got.onnx_bytes:,} bytes; {got.exporter}")]
    hint = ("the exported graph computes something else than the PyTorch model: Python control flow in forward "
            "(an if on a flag, a tensor's value, torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()) is "
            "frozen at the traced batch, and a layer can drop out; a quantized model differs by its rounding")
    if max_abs_diff is not None and not got.max_abs_diff <= max_abs_diff:  # NaN fails
        fail("onnx_max_abs_diff", rows + [("limit", f"max |diff| <= {max_abs_diff:.3g}")], hint)
    if top1_agreement is not None and got.top1_agreement < top1_agreement:
        fail("onnx_top1_agreement", rows + [("limit", f"top-1 agreement >= {top1_agreement:.2%}")], hint)
    return got.as_dict()


def _latency(candidate: Any, reference: Any, example_input: Any, runtime: str, batch_size: int, threads: int,
             rounds: int, warmup_rounds: int, confidence: float, benchmark: Any, measured: Any, workdir: Any):
    from optcheck.checks.latency import Settings, measure

    if measured is not None:
        return measured
    if example_input is None:
        raise ValueError("give example_input: a batch of inputs (cut or tiled to batch_size)")
    from optcheck.checks.latency import LatencyOff

    settings = Settings(runtime=runtime, batch_size=batch_size, threads=threads, rounds=rounds,
                        warmup_rounds=warmup_rounds, confidence=confidence)
    try:
        return measure(reference, candidate, example_input, settings, benchmark=benchmark,
                       workdir=Path(workdir) if workdir is not None else None)
    except LatencyOff as exc:  # the user switched benchmarks off: a skip that says so, never a pass
        import pytest

        pytest.skip(str(exc))


def _latency_rows(got: Any) -> list[tuple[str, str]]:
    lo, hi = got.speedup_interval
    return [("candidate", f"{got.candidate_median * 1e3:.3f} ms median (IQR {got.candidate_iqr * 1e3:.3f} ms)"),
            ("baseline", f"{got.reference_median * 1e3:.3f} ms median (IQR {got.reference_iqr * 1e3:.3f} ms)"),
            ("ratio", f"{got.ratio:.3f} [{got.low:.3f}, {got.high:.3f}] ({got.confidence:.0%} interval of the median "
                      f"of {got.rounds} interleaved rounds' ratios)"),
            ("speed-up", f"{got.speedup:.2f}x [{lo:.2f}, {hi:.2f}]"),
            ("measured", f"{got.runtime}, batch {got.batch_size}, {got.threads} thread(s), {got.warmup_rounds} "
                         f"warm-up rounds; timed by {got.engine}")]


_LATENCY_HINT = ("fewer FLOPs are not less time on every runtime: check that the candidate is the compressed model "
                 "(fake quantization and Model Optimizer's sparse layers are slower in PyTorch; onnxruntime gains "
                 "from pruning when channel counts are multiples of 8), and that nothing else ran on the machine "
                 "meanwhile (the interval says how noisy the rounds were)")


def assert_speedup_at_least(candidate: Any, reference: Any, minimum: float, *, example_input: Any = None,
                            runtime: str = "torch", batch_size: int = 1, threads: int = 1, rounds: int = 200,
                            warmup_rounds: int = 20, confidence: float = 0.95, benchmark: Any = None,
                            measured: Any = None, workdir: Any = None) -> dict[str, Any]:
    """Fail unless ``candidate`` is at least ``minimum`` times faster than ``reference`` (models):
    both timed in the same process, interleaved round by round after ``warmup_rounds``, on
    ``runtime`` (``"torch"`` or ``"onnxruntime"``) at ``batch_size`` and ``threads``
    (``optcheck.checks.latency``). The speed-up is 1 / the median of the per-round ratios; the message
    shows both medians, the ratio and its interval. Pass pytest-benchmark's ``benchmark`` fixture to
    time with its timer and options and to put both series into its table and ``--benchmark-json``;
    under ``--benchmark-disable`` this then skips (``latency.LatencyOff``), under pytest-xdist it
    still measures and says so. ``measured`` (a ``latency.Latency``) judges an earlier measurement.
    Returns the measurements."""
    __tracebackhide__ = True
    if not (isinstance(minimum, (int, float)) and 0 < minimum < float("inf")):
        raise ValueError(f"speedup_at_least: {minimum!r} must be a finite number > 0 (1.2 = 20% faster)")
    got = _latency(candidate, reference, example_input, runtime, batch_size, threads, rounds, warmup_rounds,
                   confidence, benchmark, measured, workdir)
    if got.speedup < minimum:
        fail("speedup_at_least", _latency_rows(got) + [("limit", f"speed-up >= {minimum:g}x (ratio <= "
                                                                  f"{1 / minimum:.3f})")], _LATENCY_HINT)
    return got.as_dict()


def assert_latency_ratio_below(candidate: Any, reference: Any, maximum: float, *, example_input: Any = None,
                               runtime: str = "torch", batch_size: int = 1, threads: int = 1, rounds: int = 200,
                               warmup_rounds: int = 20, confidence: float = 0.95, benchmark: Any = None,
                               measured: Any = None, workdir: Any = None) -> dict[str, Any]:
    """Fail unless ``candidate``'s latency over ``reference``'s is at most ``maximum`` (0.8 = 20%
    faster; 5 = at most 5x slower). Measured as ``assert_speedup_at_least`` measures. Returns the
    measurements."""
    __tracebackhide__ = True
    if not (isinstance(maximum, (int, float)) and 0 < maximum < float("inf")):
        raise ValueError(f"latency_ratio_below: {maximum!r} must be a finite number > 0 (0.8 = 20% faster)")
    got = _latency(candidate, reference, example_input, runtime, batch_size, threads, rounds, warmup_rounds,
                   confidence, benchmark, measured, workdir)
    if got.ratio > maximum:
        fail("latency_ratio_below", _latency_rows(got) + [("limit", f"ratio <= {maximum:g}")], _LATENCY_HINT)
    return got.as_dict()
