"""A FastNAS search space as plain data: convert a model, list its hparams, activate or export a
subnet, describe a subnet compactly."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch.nn as nn


def _modelopt():
    from optcheck.core.compat import import_modelopt

    return import_modelopt()


def _quiet():
    """Model Optimizer's and torch's warnings about their own internals (``optcheck.quiet``)."""
    from optcheck.core.quiet import library_noise

    return library_noise()


# -- the search space as plain data -----------------------------------------------------------------

def fastnas_search_space(model: nn.Module, *, channel_divisor: int = 8, feature_divisor: int = 8) -> nn.Module:
    """Convert ``model`` (in place) to its FastNAS search space, with the divisors a recipe's
    ``kind = "fastnas"`` step uses (``optcheck.steps.fastnas.search_space_config``). Returns the model."""
    from optcheck.steps.fastnas import search_space_config

    mtn, _, _ = _modelopt()
    with _quiet():
        return mtn.convert(model, mode=[("fastnas", search_space_config(channel_divisor, feature_divisor))])


def search_space(converted_model: nn.Module) -> dict[str, tuple[tuple[Any, ...], Any]]:
    """``{hparam name: (choices, original)}`` of every configurable hparam of ``converted_model``,
    in Model Optimizer's order; empty for a model that was not converted (or has one subnet).

    The names are those ``mtn.select`` takes (``"layer1.0.conv1.out_channels"``); ``original`` is
    the unpruned value (for FastNAS the largest choice). Hparams tied together by the graph (the
    two sides of a residual add) appear once, under the first name.
    """
    mtn, _, _ = _modelopt()
    space = mtn.search_space.SearchSpace(converted_model)
    return {name: (tuple(hp.choices), hp.original) for name, hp in space.named_hparams(configurable=True)}


def full_config(converted_model: nn.Module) -> dict[str, Any]:
    """The subnet config of the unpruned model: every configurable hparam at its original value."""
    return {name: original for name, (_, original) in search_space(converted_model).items()}


@contextmanager
def active_subnet(converted_model: nn.Module, config: Mapping[str, Any]) -> Iterator[nn.Module]:
    """Select ``config`` (``mtn.select``, strict: every configurable hparam, valid choices) for the
    duration of the block, then the subnet that was active before."""
    mtn, _, _ = _modelopt()
    before = mtn.get_subnet_config(converted_model, configurable=True)
    mtn.select(converted_model, dict(config))
    try:
        yield converted_model
    finally:
        mtn.select(converted_model, before)


def export_subnet(converted_model: nn.Module, config: Mapping[str, Any]) -> nn.Module:
    """``mtn.export`` of a copy of ``converted_model`` with ``config`` active: a plain model."""
    mtn, _, _ = _modelopt()
    with active_subnet(converted_model, config), _quiet():
        return mtn.export(copy.deepcopy(converted_model))


def _layer_widths(model: nn.Module, config: Mapping[str, Any]) -> dict[str, Any]:
    """The value each hparam of ``config`` has as a plain attribute of ``model`` (an exported subnet:
    ``"blocks.1.conv.out_channels"`` -> ``model.blocks[1].conv.out_channels``), for the hparams that
    are one (all of FastNAS's; not, say, an AutoNAS ``depth``, which export turns into fewer modules)."""
    out = {}
    for name in config:
        module, _, attr = name.rpartition(".")
        try:
            out[name] = getattr(model.get_submodule(module), attr)
        except AttributeError:
            continue
    return out


# -- the failure ------------------------------------------------------------------------------------

def describe_subnet(config: Mapping[str, Any], full: Mapping[str, Any]) -> str:
    """One line: the hparams where ``config`` differs from ``full`` (``name = value (of full)``), and
    how many are at full width."""
    changed = [f"{name} = {value} (of {full.get(name, '?')})" for name, value in config.items()
               if full.get(name) != value]
    same = len(config) - len(changed)
    if not changed:
        return f"the full model (all {len(config)} hparams at full width)"
    tail = f"; the other {same} hparam{'s' if same != 1 else ''} at full width" if same else ""
    return ", ".join(changed) + tail
