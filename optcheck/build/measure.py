"""What a model costs and how well it does: FLOPs, params, accuracy, checkpoint bytes.

FLOPs follow Model Optimizer's convention: 2 x MACs counted by torchprofile in eval mode, with
BatchNorm ignored (``modelopt.torch.nas.utils.inference_flops``). Counting drops the
``aten::batch_norm`` nodes from torchprofile's per-node breakdown, which works the same on
torchprofile 0.0.4 and 0.1.x and needs no modelopt import.

Params follow Model Optimizer's convention too, the count behind the FastNAS ``params`` constraint
and the search-space bounds (``modelopt.torch.utils.network.param_num_from_forward``): the direct
parameters of every module except BatchNorm (``torch.nn.modules.batchnorm._BatchNorm`` and its
subclasses, modelopt's dynamic BatchNorm included), each module once, read with ``getattr`` so a
modelopt dynamic module counts only its active slice. A tensor shared by two counted modules counts
twice, as in modelopt. ResNet20 (10 classes) has 268,346 params this way; all its tensors, BatchNorm
included, would be 269,722. modelopt counts only the modules that a forward pass reaches;
``count_params`` counts every module unless it is given ``dummy_input``, which is the same number
whenever the forward uses every module (plain CNNs, FastNAS subnets, exported subnets; not, say, a
dynamic-depth AutoNAS subnet or a model with an unused head).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm


IGNORED_OPS = frozenset({"aten::batch_norm"})


def _as_args(dummy_input: Any) -> tuple:
    return dummy_input if isinstance(dummy_input, tuple) else (dummy_input,)


def macs_per_node(model: nn.Module, dummy_input: Any) -> dict:
    """torchprofile's MACs per traced node of ``model`` in eval mode (its training flag restored)."""
    from torchprofile import profile_macs

    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            return profile_macs(model, args=_as_args(dummy_input), reduction=None)
    finally:
        model.train(was_training)


def count_flops(model: nn.Module, dummy_input: Any) -> int:
    """Inference FLOPs of ``model`` on ``dummy_input`` (2 x MACs, BatchNorm excluded): what a
    deployment computes, so a 2:4-sparsified layer counts its dense MACs without Model Optimizer's
    ``weight * mask`` multiply (``without_masks``; halving them takes sparse kernels)."""
    per_node = macs_per_node(without_masks(model), dummy_input)
    return 2 * int(sum(macs for node, macs in per_node.items() if node.operator not in IGNORED_OPS))


def without_masks(model: nn.Module) -> nn.Module:
    """``model``, or when Model Optimizer sparsified some layers a copy whose sparse modules skip the
    mask multiply in their forward (``mts.sparsify`` multiplies each weight by its 2:4 mask on every
    call: 2:4 ResNet20 counted 20.8M FLOPs against its dense 20.3M). The shapes, and so the MACs of
    each layer, are the same; the mask is not part of a deployed model's compute."""
    if not any(isinstance(getattr(m, "_weight_mask", None), torch.Tensor) for m in model.modules()):
        return model
    import copy

    twin = copy.deepcopy(model)
    for module in twin.modules():
        if isinstance(getattr(module, "_weight_mask", None), torch.Tensor):
            module._weight_mask = None  # modelopt's SparseModule then returns the weight as stored
    return twin


def count_params(model: nn.Module, dummy_input: Any = None) -> int:
    """Parameters of ``model`` under Model Optimizer's convention (``param_num_from_forward``).

    Sums ``getattr(m, name).numel()`` over the direct parameters (``recurse=False``) of every
    module ``m`` that is not a BatchNorm, each module once. ``getattr`` returns a modelopt dynamic
    module's active slice, so a converted model counts its sampled subnet, like its ``mtn.export``.
    With ``dummy_input``, only the modules that a forward pass on it calls are counted (run in eval
    mode under ``torch.no_grad``, the model's mode restored; modelopt runs it in the current mode),
    which matters only for models whose forward skips modules. No modelopt import.
    """
    modules = [m for m in model.modules() if not isinstance(m, _BatchNorm)]
    if dummy_input is not None:
        modules = _called_modules(model, modules, dummy_input)
    return sum(getattr(m, name).numel() for m in modules for name, _ in m.named_parameters(recurse=False))


def _called_modules(model: nn.Module, modules: list[nn.Module], dummy_input: Any) -> list[nn.Module]:
    called: dict[nn.Module, None] = {}
    hooks = [m.register_forward_hook(lambda m, *_: called.setdefault(m)) for m in modules]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*_as_args(dummy_input))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return list(called)


def file_bytes(path: str | Path | None) -> int | None:
    return Path(path).stat().st_size if path is not None and Path(path).exists() else None


def _bits(num_bits: Any) -> int:
    """Bits per value of a Model Optimizer quantizer's ``num_bits``: 8, 4, or (exponent, mantissa) of
    a float format plus its sign bit ((4, 3) = FP8 E4M3 = 8 bits)."""
    if isinstance(num_bits, (tuple, list)):
        return 1 + int(num_bits[0]) + int(num_bits[1])
    return int(num_bits)


def weight_bytes(model: nn.Module) -> int:
    """The bytes a deployment stores for ``model``'s parameters, at their real bit-widths.

    Every parameter once (BatchNorm included), 32 bits unless its module quantizes it: a weight
    whose Model Optimizer ``weight_quantizer`` is enabled counts ``num_bits`` per value, plus its
    scales (``amax``: one fp32 per channel or block). A disabled quantizer counts fp32: a
    quantizer lost after calibration shows as a model that did not shrink. 2:4 sparsity does not
    change this count (the zeros are stored; compressed 2:4 storage is a deployment's choice).
    Dynamic (FastNAS) modules count their active slice.
    """
    total_bits = 0
    for module in model.modules():
        quantizer = getattr(module, "weight_quantizer", None)
        quantized = quantizer is not None and getattr(quantizer, "is_enabled", False) \
            and getattr(quantizer, "num_bits", None) is not None
        for name, _ in module.named_parameters(recurse=False):
            values = getattr(module, name).numel()
            if name == "weight" and quantized:
                total_bits += values * _bits(quantizer.num_bits)
                amax = getattr(quantizer, "amax", None)
                total_bits += 32 * (amax.numel() if isinstance(amax, torch.Tensor) else 1)
            else:
                total_bits += 32 * values
    return (total_bits + 7) // 8


def sparsity(model: nn.Module) -> float | None:
    """Fraction of zero weights in the layers that were sparsified (Model Optimizer sparse modules
    whose mask removes something), or None when no layer was. Read from the weights as the forward
    uses them (the mask applied)."""
    zeros = total = 0
    for module in model.modules():
        mask = getattr(module, "_weight_mask", None)
        if not isinstance(mask, torch.Tensor) or bool(mask.all()):
            continue
        weight = module.weight.detach()
        zeros += int((weight * mask == 0).sum())
        total += weight.numel()
    return zeros / total if total else None
