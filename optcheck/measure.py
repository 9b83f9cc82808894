"""What a model costs and how well it does: FLOPs, params, accuracy, checkpoint bytes.

FLOPs follow Model Optimizer's convention: 2 x MACs counted by torchprofile in eval mode, with
BatchNorm ignored (``modelopt.torch.nas.utils.inference_flops``). Counting drops the
``aten::batch_norm`` nodes from torchprofile's per-node breakdown, which works the same on
torchprofile 0.0.4 and 0.1.x and needs no modelopt import.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .limits import human  # noqa: F401  (re-exported: it was defined here)

IGNORED_OPS = frozenset({"aten::batch_norm"})


def _as_args(dummy_input: Any) -> tuple:
    return dummy_input if isinstance(dummy_input, tuple) else (dummy_input,)


def count_flops(model: nn.Module, dummy_input: Any) -> int:
    """Inference FLOPs of ``model`` on ``dummy_input`` (2 x MACs, BatchNorm excluded)."""
    from torchprofile import profile_macs

    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            per_node = profile_macs(model, args=_as_args(dummy_input), reduction=None)
    finally:
        model.train(was_training)
    return 2 * int(sum(macs for node, macs in per_node.items() if node.operator not in IGNORED_OPS))


def count_params(model: nn.Module) -> int:
    """Number of parameters (each shared tensor once)."""
    return sum(p.numel() for p in model.parameters())


def file_bytes(path: str | Path | None) -> int | None:
    return Path(path).stat().st_size if path is not None and Path(path).exists() else None
