"""Deployment parity: a stage's model exported to ONNX and run with onnxruntime on the test split,
compared with the PyTorch model in eval mode (logits' largest absolute difference, top-1 agreement).

The exporter is ``build.onnx_export``'s (TorchScript, opset 17: the one that exports Model Optimizer's
fake-quantized models). It traces: Python control flow in ``forward`` is frozen at the traced batch,
which is what this check exists to catch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from optcheck.build.onnx_export import OPSET, ExportError, export  # noqa: F401 - this check's API


@dataclass(frozen=True)
class Parity:
    """What a comparison measured."""

    max_abs_diff: float  # over every logit of every test sample
    top1_agreement: float  # share of test samples whose predicted class is the same
    n: int  # test samples compared
    disagreements: int
    onnx_bytes: int
    qdq_nodes: int  # QuantizeLinear + DequantizeLinear nodes in the graph
    nodes: int
    exporter: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(model, loader, path: Path, example) -> Parity:
    """Export ``model`` to ``path``, run both on every batch of ``loader``, and compare."""
    import onnx
    import onnxruntime as ort
    import torch

    export(model, example, path)
    graph = onnx.load(str(path)).graph
    qdq = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node)
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"onnxruntime could not load the exported graph: {type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:300]}") from exc
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    worst, agree, n = 0.0, 0, 0
    model.eval()
    with torch.no_grad():
        for x, _ in loader:
            ours = model(x.to(device)).float().cpu()
            try:
                theirs = torch.from_numpy(session.run(["logits"], {"input": x.cpu().numpy()})[0])
            except Exception as exc:  # noqa: BLE001
                raise ExportError(f"onnxruntime failed on a test batch: {type(exc).__name__}: "
                                  f"{' '.join(str(exc).split())[:300]}") from exc
            if theirs.shape != ours.shape:
                raise ExportError(f"the ONNX model's output has shape {tuple(theirs.shape)}, PyTorch's "
                                  f"{tuple(ours.shape)}")
            diff = float((theirs - ours).abs().max()) if ours.numel() else 0.0
            worst = diff if math.isnan(diff) else max(worst, diff)
            agree += int((theirs.argmax(1) == ours.argmax(1)).sum())
            n += len(x)
    return Parity(worst, agree / n if n else 0.0, n, n - agree, path.stat().st_size, qdq, len(graph.node),
                  f"torch.onnx.export(dynamo=False, opset {OPSET})")
