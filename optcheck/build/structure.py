"""Structural facts of a compressed model: what an upgrade can change silently while accuracy holds.

Model Optimizer's users report these breakages (FIELD-NOTES): every quantizer disabled after a
restore (#104), NaN scales after QAT calibration (#729), a restore that lost ``_amax`` (a review of
PR #1550). None of them need move accuracy on a small test split at first, so optcheck records, per
stage, as plain counts that the regression ledger holds *exactly* and the upgrade diff shows:

    quant_input, quant_weight, quant_output   enabled quantizers of each kind
    quant_bits        their bit-widths, e.g. "input:8 weight:8" ("" when none is enabled)
    amax_missing      enabled quantizers with no calibrated ``amax``
    amax_nonfinite    enabled quantizers whose ``amax`` holds a NaN or an infinity
    sparse_masks      sparse layers whose mask removes weights (Model Optimizer's ``mts``)
    modes             the ``modelopt_state`` mode list, e.g. "fastnas export_nas quantize max_calibrate"
    onnx_qdq          QuantizeLinear + DequantizeLinear nodes of the model's ONNX graph (0 when no
                      quantizer is enabled; "export failed: <error>" when the export fails)

Quantizers are found by their module names (``*.input_quantizer``, ``*.weight_quantizer``,
``*.output_quantizer``: Model Optimizer's ``TensorQuantizer`` names), so a plain model costs no
Model Optimizer import. Each fact is a number or a short string, JSON- and TOML-safe.
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

KINDS = ("input", "weight", "output")
FACTS = ("quant_input", "quant_weight", "quant_output", "quant_bits", "amax_missing", "amax_nonfinite",
         "sparse_masks", "modes", "onnx_qdq")


def _bits(num_bits: Any) -> str:
    """``8`` -> "8"; a float format ``(4, 3)`` -> "e4m3"."""
    if isinstance(num_bits, (tuple, list)):
        return f"e{int(num_bits[0])}m{int(num_bits[1])}"
    return str(int(num_bits)) if num_bits is not None else "?"


def quantizers(model: nn.Module) -> list[tuple[str, str, nn.Module]]:
    """``(name, kind, quantizer)`` of every quantizer module (kind: input / weight / output)."""
    out = []
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        for kind in KINDS:
            if leaf == f"{kind}_quantizer":
                out.append((name, kind, module))
    return out


def amax_state(quantizer: nn.Module) -> str:
    """"ok", "missing" (no calibrated amax) or "nonfinite" (a NaN or an infinity in it)."""
    amax = getattr(quantizer, "amax", None)
    if amax is None:
        return "missing"
    values = amax if isinstance(amax, torch.Tensor) else torch.tensor(float(amax))
    return "ok" if bool(torch.isfinite(values).all()) else "nonfinite"


def modelopt_modes(model: nn.Module) -> str:
    """The model's ``modelopt_state`` modes in order ("" for a model Model Optimizer never converted,
    and for any model when Model Optimizer was never imported: then nothing converted it)."""
    if "modelopt.torch.opt" not in sys.modules:
        return ""
    import modelopt.torch.opt as mto

    return " ".join(name for name, _ in mto.modelopt_state(model)["modelopt_state_dict"])


def sparse_masks(model: nn.Module) -> int:
    """Sparse layers whose mask removes weights (a mask of ones, e.g. a layer the size rule skipped,
    does not count)."""
    return sum(1 for m in model.modules()
               if isinstance(getattr(m, "_weight_mask", None), torch.Tensor) and not bool(m._weight_mask.all()))


def qdq_nodes(model: nn.Module, example: torch.Tensor) -> int | str:
    """Q/DQ nodes of the model's ONNX graph (the exporter that writes them: ``build.onnx_export``)."""
    import onnx

    from optcheck.build.onnx_export import ExportError, export

    with tempfile.TemporaryDirectory(prefix="optcheck-qdq-") as tmp:
        try:
            path = export(model, example, Path(tmp) / "model.onnx")
        except ExportError as exc:
            return f"export failed: {str(exc)[:160]}"
        graph = onnx.load(str(path), load_external_data=False).graph
        return sum(1 for node in graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear"))


def structural_facts(model: nn.Module, example: torch.Tensor | None = None) -> dict[str, int | str]:
    """The facts above for ``model`` (``example``: one input batch for the ONNX count; without it, or
    with no enabled quantizer, ``onnx_qdq`` is 0)."""
    enabled = {kind: 0 for kind in KINDS}
    bits: dict[str, set[str]] = {kind: set() for kind in KINDS}
    amax = {"missing": 0, "nonfinite": 0, "ok": 0}
    for _, kind, q in quantizers(model):
        if not getattr(q, "is_enabled", False):
            continue
        enabled[kind] += 1
        bits[kind].add(_bits(getattr(q, "num_bits", None)))
        amax[amax_state(q)] += 1
    any_enabled = any(enabled.values())
    qdq: int | str = 0
    if any_enabled and example is not None:
        was_training = model.training
        try:
            qdq = qdq_nodes(model, example)
        finally:
            model.train(was_training)
    return {
        "quant_input": enabled["input"], "quant_weight": enabled["weight"], "quant_output": enabled["output"],
        "quant_bits": " ".join(f"{k}:{'/'.join(sorted(bits[k]))}" for k in KINDS if bits[k]),
        "amax_missing": amax["missing"], "amax_nonfinite": amax["nonfinite"],
        "sparse_masks": sparse_masks(model), "modes": modelopt_modes(model), "onnx_qdq": qdq,
    }


def describe(facts: dict[str, Any]) -> str:
    """One line: "quantizers input 18 / weight 18 / output 0 (input:8 weight:8), amax all finite, ..."."""
    if not facts:
        return "no structural facts"
    parts = []
    if any(facts.get(f"quant_{k}") for k in KINDS):
        parts.append("quantizers " + " / ".join(f"{k} {facts.get(f'quant_{k}', 0)}" for k in KINDS)
                     + f" ({facts.get('quant_bits', '')})")
        bad = [f"{facts[k]} {k.removeprefix('amax_')}" for k in ("amax_missing", "amax_nonfinite") if facts.get(k)]
        parts.append("amax " + (", ".join(bad) if bad else "all present and finite"))
        parts.append(f"ONNX Q/DQ nodes {facts.get('onnx_qdq')}")
    else:
        parts.append("no enabled quantizer")
    if facts.get("sparse_masks"):
        parts.append(f"{facts['sparse_masks']} sparse masks")
    parts.append(f"modes [{facts.get('modes', '')}]")
    return ", ".join(parts)


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
