"""A model to ONNX with the exporter that handles Model Optimizer's quantized models.

The exporter is torch's TorchScript-based one (``torch.onnx.export(..., dynamo=False)``, opset 17):
it exports Model Optimizer's fake-quantized models, writing QuantizeLinear / DequantizeLinear pairs;
the dynamo exporter fails on them (a data-dependent guard in modelopt's ``tensor_quant``; measured in
../shared/COMPRESSION-ON-CPU.md). It traces: Python control flow in ``forward`` is frozen at the
traced batch. Used by the ONNX parity check (``checks.onnx_parity``), the latency check's ONNX
runtime, and the structural facts' Q/DQ count (``build.structure``).
"""

from __future__ import annotations

from pathlib import Path

OPSET = 17


class ExportError(RuntimeError):
    """The model could not be exported or run: a parity budget then fails (never passes silently)."""


def export(model, example, path: Path) -> Path:
    """``model`` (eval mode) to ONNX at ``path`` with a dynamic batch dimension."""
    import warnings

    import torch

    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # the exporter's own deprecation notice concerns the API, not the user's model
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*dynamo=False.*")
            # an optimisation the exporter skips (strided slices), not a difference in what it computes
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
            # Model Optimizer's quantizers branch on tensors while traced (amax checks): its noise, not
            # the user's; a TracerWarning raised in the user's own forward still shows
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"modelopt\.")
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=OPSET,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    except Exception as exc:  # noqa: BLE001 - any failure to export is the finding
        raise ExportError(f"torch.onnx.export (TorchScript exporter, opset {OPSET}) raised "
                          f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from exc
    return path
