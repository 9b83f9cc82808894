"""Hypothesis strategies for property tests of FastNAS search spaces: subnet configs, input batches
and small random CNNs.

A FastNAS search space has far more subnets than any test can try (ResNet20 at channel divisor 8:
262,144), and the bugs that matter -- a restore that loses one layer's width, an export that
differs from the searched model, a FLOPs count that disagrees with Model Optimizer's -- show up
for *some* subnets only. These strategies let Hypothesis pick the subnets, and shrink a failure
to the simplest subnet that still fails. Use them in your own ``@given`` test::

    import torch
    from hypothesis import given, settings
    from optcheck.properties import fastnas_search_space, restore_exact
    from optcheck.strategies import subnet_configs
    from mypackage import MyNet

    SPACE = fastnas_search_space(MyNet(), channel_divisor=8)   # convert once, at import
    X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    @settings(max_examples=20, deadline=None)
    @given(config=subnet_configs(SPACE))
    def test_every_subnet_restores(config):
        restore_exact(SPACE, config, X, make_model=MyNet)

``optcheck.properties.run_property`` runs the same without writing a test function, and returns
how many subnets it tried per second.

This module imports Hypothesis (a test-only dependency) at its top: ``import optcheck`` never
imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import strategies as st

from optcheck.checks.search_space import search_space

__all__ = ["CNNSpec", "SpecCNN", "build_cnn", "cnn_specs", "input_batches", "small_cnns", "subnet_configs"]


# -- subnet configs ---------------------------------------------------------------------------------

def subnet_configs(converted_model: nn.Module) -> st.SearchStrategy[dict[str, Any]]:
    """Draw subnet configs of ``converted_model``: ``{hparam name: value}`` for every configurable
    hparam of its search space (e.g. ``"layer2.0.conv1.out_channels": 24``), each value one of that
    hparam's own ``choices``, so every drawn config is one ``mtn.select`` accepts.

    ``converted_model`` is a model already converted to a search space (``mtn.convert(model,
    mode=[("fastnas", config)])`` or ``optcheck.properties.fastnas_search_space``). Its hparams and
    choices are read once, when the strategy is built; drawing does not touch the model.

    Shrinking goes toward each hparam's *original* value (the unpruned width, which for FastNAS is
    the largest choice), then toward the next largest: a failure shrinks to the full model with only
    the culprit layers narrowed, each as little as still fails -- one line to read, e.g.
    ``layer3.0.conv1.out_channels = 48 (of 64); the other 8 at full width``. Shrinking toward the
    smallest choice would instead give a subnet in which every layer is narrowed, and hide which
    layer matters.
    """
    space = search_space(converted_model)
    if not space:
        raise ValueError(
            f"{type(converted_model).__name__} has no configurable hparam: convert it to a search space "
            "first, e.g. optcheck.properties.fastnas_search_space(model, channel_divisor=8) "
            "(mtn.convert(model, mode=[('fastnas', config)]))")
    names = list(space)
    # a tuple in model order, not st.fixed_dictionaries: that one draws the keys in a shuffled order, so
    # one config has many encodings and Hypothesis checks the same subnet again (16 runs for SmallCNN's 8)
    values = st.tuples(*(st.sampled_from(_simplest_first(choices, original)) for choices, original in space.values()))
    return values.map(lambda chosen: dict(zip(names, chosen)))


def _simplest_first(choices: Sequence[Any], original: Any) -> list[Any]:
    """The original value first, then the other choices from the largest down (``sampled_from``
    shrinks toward the front of its list)."""
    rest = [c for c in choices if c != original]
    try:
        rest.sort(reverse=True)
    except TypeError:  # choices that do not compare (none in FastNAS): keep modelopt's order
        pass
    return ([original] if original in choices else []) + rest


# -- input batches ----------------------------------------------------------------------------------

def input_batches(shape: Sequence[int], *, min_batch: int = 1, max_batch: int = 4,
                  scale: float = 1.0) -> st.SearchStrategy[torch.Tensor]:
    """Draw float32 input batches of shape ``(n, *shape)`` (``shape`` is one input's, e.g. ``(3, 16,
    16)``), ``min_batch <= n <= max_batch``, values standard normal times ``scale``: always finite.

    Hypothesis draws the batch size and a 32-bit seed; the values come from ``torch.randn`` with a
    ``torch.Generator`` on that seed: every batch is dense noise, 50 batches of 4 x 3 x 16 x 16 in
    0.13 s here. ``hypothesis.extra.numpy.arrays`` would let Hypothesis shrink single pixels, but it
    fills most of an array with one repeated value (measured: 50 such batches held a median of 20
    distinct values out of 3,072, 5 were constant), which says little about a network's outputs;
    the properties here depend on whole tensors, not on one pixel. A failing batch shrinks toward
    ``min_batch`` and seed 0 and is reproduced exactly (same torch version) from the printed seed:
    ``torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))``.
    """
    shape = tuple(int(d) for d in shape)
    if not shape or any(d < 1 for d in shape):
        raise ValueError(f"shape {shape!r} must be one input's shape, e.g. (3, 16, 16), every size >= 1")
    if not 1 <= min_batch <= max_batch:
        raise ValueError(f"need 1 <= min_batch <= max_batch (got min_batch={min_batch}, max_batch={max_batch})")
    return st.builds(_batch, st.integers(min_batch, max_batch), st.integers(0, 2**32 - 1),
                     st.just(shape), st.just(float(scale)))


def _batch(n: int, seed: int, shape: tuple[int, ...], scale: float) -> torch.Tensor:
    x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    return x * scale if scale != 1.0 else x


# -- small random CNNs ------------------------------------------------------------------------------

@dataclass(frozen=True)
class CNNSpec:
    """A small CNN as plain data: one 3x3 conv block per entry of ``widths`` (output channels) and
    ``strides``, each conv -> [BatchNorm] -> ReLU, with a shortcut around each block when
    ``residual`` (identity when the shape is kept, else a 1x1 conv [+ BatchNorm]); global average
    pooling and a linear head. ``bias`` gives the convs a bias."""

    widths: tuple[int, ...]
    strides: tuple[int, ...]
    batchnorm: bool = True
    bias: bool = False
    residual: bool = False

    def __post_init__(self) -> None:
        if not self.widths or len(self.widths) != len(self.strides):
            raise ValueError(f"widths {self.widths} and strides {self.strides} need the same length >= 1")
        if any(w < 1 for w in self.widths) or any(s not in (1, 2) for s in self.strides):
            raise ValueError(f"widths must be >= 1 and strides 1 or 2 (got {self.widths}, {self.strides})")

    def identity_shortcut(self, block: int, in_channels: int) -> bool:
        """Whether ``block``'s shortcut is the identity (residual, stride 1, width kept)."""
        before = self.widths[block - 1] if block else in_channels
        return self.residual and self.strides[block] == 1 and self.widths[block] == before

    def searchable_blocks(self, divisor: int, in_channels: int = 3) -> list[int]:
        """The blocks whose width a FastNAS search space with ``divisor`` makes searchable: one per
        group of blocks an identity shortcut ties together (the add needs equal widths), the group's
        first block, unless the group is tied to the input channels or holds the last block (whose
        output feeds the pooled linear head: never searchable), or its width has one choice (less
        than twice ``divisor``). Model Optimizer's ``mtn.convert`` refuses a model with none."""
        groups: list[list[int]] = []
        for block in range(len(self.widths)):
            if block and self.identity_shortcut(block, in_channels):
                groups[-1].append(block)
            else:
                groups.append([block])
        last = len(self.widths) - 1
        return [g[0] for g in groups if last not in g and not self.identity_shortcut(g[0], in_channels)
                and self.widths[g[0]] >= 2 * divisor]


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, spec: CNNSpec):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=spec.bias)
        self.bn = nn.BatchNorm2d(c_out) if spec.batchnorm else nn.Identity()
        self.shortcut: nn.Module | None = None
        if spec.residual:
            if stride == 1 and c_in == c_out:
                self.shortcut = nn.Identity()
            else:
                self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=spec.bias),
                                              nn.BatchNorm2d(c_out) if spec.batchnorm else nn.Identity())

    def forward(self, x):
        out = self.bn(self.conv(x))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)


class SpecCNN(nn.Module):
    """The model a ``CNNSpec`` describes (``build_cnn``); ``spec`` is kept on the model."""

    def __init__(self, spec: CNNSpec, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.spec = spec
        blocks, c = [], in_channels
        for width, stride in zip(spec.widths, spec.strides):
            blocks.append(_Block(c, width, stride, spec))
            c = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.head(F.adaptive_avg_pool2d(self.blocks(x), 1).flatten(1))

    def extra_repr(self) -> str:
        return repr(self.spec)


def build_cnn(spec: CNNSpec, in_channels: int = 3, num_classes: int = 10, *, seed: int = 0) -> SpecCNN:
    """Build ``spec``'s model with weights from ``seed`` (the same spec and seed give the same
    weights), without touching torch's global random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SpecCNN(spec, in_channels, num_classes)


def cnn_specs(*, min_depth: int = 1, max_depth: int = 4, width_multiple: int = 8, max_width: int = 32,
              searchable: bool = True, in_channels: int = 3) -> st.SearchStrategy[CNNSpec]:
    """Draw ``CNNSpec``s: ``min_depth..max_depth`` conv blocks, each width a multiple of
    ``width_multiple`` up to ``max_width``, strides 1 or 2, BatchNorm, bias and residual on or off.

    Pass the channel divisor you convert with as ``width_multiple``: FastNAS searches a width in
    steps of its divisor, so multiples of it give every layer a whole number of choices. With
    ``searchable`` (the default) only specs with at least one searchable block at that divisor
    (``CNNSpec.searchable_blocks``) are drawn, so each one converts under FastNAS (at least two
    blocks then); ``searchable=False`` also draws those ``mtn.convert`` refuses. The defaults (depth
    <= 4, widths 8..32) keep a FastNAS convert near 0.1 s. Shrinks toward the fewest blocks, the
    narrowest widths, stride 1, and BatchNorm, bias and residual off.
    """
    if not 1 <= min_depth <= max_depth:
        raise ValueError(f"need 1 <= min_depth <= max_depth (got {min_depth}, {max_depth})")
    if not 1 <= width_multiple <= max_width:
        raise ValueError(f"need 1 <= width_multiple <= max_width (got {width_multiple}, {max_width})")
    if searchable and (max_depth < 2 or max_width < 2 * width_multiple):
        raise ValueError("a searchable CNN needs max_depth >= 2 and max_width >= 2 * width_multiple "
                         f"(got max_depth={max_depth}, max_width={max_width}, width_multiple={width_multiple})")
    widths = st.sampled_from(range(width_multiple, max_width + 1, width_multiple))
    low = max(min_depth, 2) if searchable else min_depth

    @st.composite
    def specs(draw) -> CNNSpec:
        depth = draw(st.integers(low, max_depth))
        return CNNSpec(widths=tuple(draw(widths) for _ in range(depth)),
                       strides=tuple(draw(st.sampled_from((1, 2))) for _ in range(depth)),
                       batchnorm=draw(st.booleans()), bias=draw(st.booleans()), residual=draw(st.booleans()))

    if searchable:
        return specs().filter(lambda spec: bool(spec.searchable_blocks(width_multiple, in_channels)))
    return specs()


def small_cnns(in_channels: int = 3, num_classes: int = 10, **spec_options: Any) -> st.SearchStrategy[SpecCNN]:
    """Draw built models of ``cnn_specs(in_channels=in_channels, **spec_options)`` (``build_cnn``
    with seed 0); the drawn model's ``spec`` says what it is. Draw from ``cnn_specs`` instead when the
    test needs to build the same model again (a fresh model to restore into)."""
    return cnn_specs(in_channels=in_channels, **spec_options).map(
        lambda spec: build_cnn(spec, in_channels, num_classes))
