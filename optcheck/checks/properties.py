"""Properties every subnet of a FastNAS search space must have, one function each.

A property takes the converted model (a search space), one subnet config (``{hparam name: value}``,
as ``optcheck.strategies.subnet_configs`` draws them) and an example input, and raises
``PropertyFailure`` (an ``AssertionError``) when that subnet breaks it:

- ``restore_exact``: the exported subnet, ``mto.save``-d and ``mto.restore``-d into a fresh model,
  is the same model (architecture, state dict, ``modelopt_state``, eval outputs: exact);
- ``export_matches_converted``: ``mtn.export`` computes what the search space computed with that
  subnet active, and has the config's layer widths;
- ``flops_match``: optcheck's FLOPs count of the exported subnet equals Model Optimizer's
  ``inference_flops`` of the search space with that subnet active (the count FastNAS judges its
  constraint with);
- ``flops_monotone``: narrowing one layer never adds FLOPs.

The failure prints the subnet compactly (only the hparams that differ from the full model) and a
line that reproduces it. ``run_property`` lets Hypothesis search the subnets for a failure, shrinks
it to the simplest failing subnet, and can save it to replay first next time.

Every property leaves the model's active subnet as it found it. Model Optimizer is imported
through ``optcheck.compat`` (its torchprofile shim).
"""

from __future__ import annotations

from optcheck.checks.search_space import _modelopt

import hashlib
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from optcheck.checks.search_space import _layer_widths
from optcheck.checks.search_space import _quiet
from optcheck.checks.search_space import active_subnet
from optcheck.checks.search_space import describe_subnet
from optcheck.checks.search_space import export_subnet
from optcheck.checks.search_space import full_config
from optcheck.checks.search_space import search_space

__all__ = ["PropertyFailure", "PropertyRun", "export_matches_converted", "flops_match", "flops_monotone",
           "restore_exact", "run_property"]


class PropertyFailure(AssertionError):
    """A subnet breaks a property. ``property``, ``config`` (the full subnet config), ``changed``
    (the hparams that differ from the full model: ``{name: (value, full value)}``), ``rows`` and
    ``hint`` are kept for programs; ``run`` is set by ``run_property`` (its ``PropertyRun``)."""

    def __init__(self, prop: str, config: Mapping[str, Any], full: Mapping[str, Any],
                 rows: Sequence[tuple[str, str]], hint: str, reproduce: str):
        self.property, self.config, self.full = prop, dict(config), dict(full)
        self.changed = {k: (v, full.get(k)) for k, v in config.items() if full.get(k) != v}
        self.rows, self.hint, self.reproduce = list(rows), hint, reproduce
        self.run: PropertyRun | None = None
        super().__init__(self.render())

    def render(self) -> str:
        rows = [("subnet", describe_subnet(self.config, self.full)), *self.rows, ("hint", self.hint)]
        width = max(len(k) for k, _ in rows + [("reproduce", "")])
        lines = [f"optcheck property '{self.property}' failed"]
        lines += [f"  {k:<{width}} : {v}" for k, v in rows]
        lines.append(f"  {'reproduce':<{width}} : {self.reproduce}")
        return "\n".join(lines)

    def add_rows(self, rows: Sequence[tuple[str, str]]) -> None:
        self.rows += list(rows)
        self.args = (self.render(),)


def _fail(prop: str, converted_model: nn.Module, config: Mapping[str, Any], example_input: Any,
          rows: Sequence[tuple[str, str]], hint: str, extra_args: str = "") -> None:
    __tracebackhide__ = True
    shape = list(example_input.shape) if isinstance(example_input, torch.Tensor) else "..."
    reproduce = (f"{prop}(converted_model, {dict(config)!r}, example_input{extra_args})  "
                 f"# from optcheck.properties import {prop}; example_input: the same tensor, shape {shape}")
    raise PropertyFailure(prop, config, full_config(converted_model), rows, hint, reproduce)


def _args(example_input: Any) -> tuple:
    return example_input if isinstance(example_input, tuple) else (example_input,)


def _eval_outputs(model: nn.Module, example_input: Any) -> torch.Tensor:
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), _quiet():  # a converted model's forward warns about modelopt's own data queue
            return model(*_args(example_input))
    finally:
        model.train(was)


# -- the properties ---------------------------------------------------------------------------------

def _differing_tensors(a: nn.Module, b: nn.Module, limit: int = 4) -> str:
    """Up to ``limit`` state-dict entries of ``a`` that ``b`` lacks or holds differently, with shapes."""
    sd_a, sd_b = a.state_dict(), b.state_dict()
    out = []
    for key, ta in sd_a.items():
        tb = sd_b.get(key)
        if tb is None:
            out.append(f"{key} missing")
        elif ta.shape != tb.shape:
            out.append(f"{key} {list(ta.shape)} vs {list(tb.shape)}")
        elif not torch.equal(ta, tb.to(ta.device)):
            delta = (ta.double() - tb.double()).abs().max().item() if ta.numel() else 0.0
            out.append(f"{key} {list(ta.shape)} (max |diff| {delta:.3g})")
    more = f", and {len(out) - limit} more" if len(out) > limit else ""
    return ", ".join(out[:limit]) + more


def restore_exact(converted_model: nn.Module, config: Mapping[str, Any], example_input: Any, *,
                  make_model: Callable[[], nn.Module], atol: float = 0.0) -> None:
    """The subnet ``config`` of ``converted_model``, exported (``mtn.export``), saved with ``mto.save``
    and restored with ``mto.restore(make_model(), path)``, is the same model: architecture, state
    dict, ``mto.modelopt_state`` and eval-mode outputs on ``example_input``, exact unless ``atol``.

    ``make_model`` builds the model *before* conversion (what a user restores into). This catches
    restore paths that depend on the subnet: a model whose ``load_state_dict`` re-initialises a
    narrow layer, a factory that builds a layer from a config value, state outside the state dict.
    """
    __tracebackhide__ = True
    from optcheck.checks.restore import model_differences

    _, mto, _ = _modelopt()
    exported = export_subnet(converted_model, config)
    extra = ", make_model=make_model" + (f", atol={atol}" if atol else "")
    hint = ("mto.restore rebuilt this subnet differently from the one saved: look for code in make_model() or "
            "the model's load_state_dict / _load_from_state_dict that depends on a layer's width (a layer "
            "re-initialised or built from a config value), or state kept outside the state dict; the "
            "subnet line says which layers to start with")
    with tempfile.TemporaryDirectory(prefix="optcheck-property-") as tmp:
        path = Path(tmp) / "subnet.pth"
        try:
            with _quiet():
                mto.save(exported, path)
                restored = mto.restore(make_model(), path)
        except Exception as exc:  # noqa: BLE001 - a restore that raises is the finding
            detail = " ".join(line.strip() for line in str(exc).splitlines()[:2])[:300]
            _fail("restore_exact", converted_model, config, example_input,
                  [("restore", f"mto.save / mto.restore raised {type(exc).__name__}: {detail}")], hint, extra)
    with _quiet():
        problems = model_differences(exported, restored, example_input=example_input, atol=atol)
    if problems:
        rows = list(problems)
        if any(a in ("state_dict", "architecture") for a, _ in problems):
            rows.append(("tensors", _differing_tensors(exported, restored)))
        _fail("restore_exact", converted_model, config, example_input, rows, hint, extra)


def export_matches_converted(converted_model: nn.Module, config: Mapping[str, Any], example_input: Any, *,
                             atol: float = 1e-6) -> None:
    """``mtn.export`` of the subnet ``config`` has the config's layer widths, and its eval-mode
    outputs on ``example_input`` are those of ``converted_model`` with ``config`` active, within
    ``atol`` (measured: bit-identical on ResNet20 and the small CNNs here; the 1e-6 leaves room for
    kernels that pick another algorithm for a narrower layer)."""
    __tracebackhide__ = True
    exported = export_subnet(converted_model, config)
    widths = _layer_widths(exported, config)
    wrong = [f"{k} = {widths[k]} (config {v})" for k, v in config.items() if k in widths and widths[k] != v]
    if wrong:
        _fail("export_matches_converted", converted_model, config, example_input,
              [("widths", f"the exported model has {', '.join(wrong[:4])}")],
              "mtn.export did not keep the selected widths: select the subnet (mtn.select) right before "
              "exporting, on the same model object", f", atol={atol}")
    with active_subnet(converted_model, config):
        expected = _eval_outputs(converted_model, example_input)
    got = _eval_outputs(exported, example_input)
    diff = (expected.double() - got.double()).abs().max().item() if expected.shape == got.shape else float("inf")
    if not diff <= atol:  # NaN fails
        _fail("export_matches_converted", converted_model, config, example_input,
              [("outputs", f"max |exported - converted| = {diff:.3g} > atol {atol:g} "
                           f"(shapes {list(got.shape)} vs {list(expected.shape)}, eval mode)")],
              "mtn.export changed what the subnet computes: a custom layer whose exported weights slice "
              "other channels than its dynamic forward uses, or a forward that reads a width it cached "
              "before the subnet was selected", f", atol={atol}")


def _modelopt_flops(converted_model: nn.Module, example_input: Any) -> int:
    mtn, _, _ = _modelopt()
    # inference_flops returns 2 x torchprofile MACs, BatchNorm excluded, divided by ``unit``
    with _quiet():
        return int(round(mtn.inference_flops(converted_model, dummy_input=example_input, unit=1)))


def flops_match(converted_model: nn.Module, config: Mapping[str, Any], example_input: Any) -> None:
    """optcheck's FLOPs of the exported subnet (``measure.count_flops``) equal Model Optimizer's
    ``inference_flops`` of ``converted_model`` with ``config`` active, on ``example_input``: exactly.

    Both are FLOPs in the same convention, 2 x torchprofile's MACs in eval mode with BatchNorm left
    out (no factor between them): modelopt drops BatchNorm by editing torchprofile's handler table
    (``optcheck.compat`` keeps that working on torchprofile 0.1), optcheck by dropping the
    ``aten::batch_norm`` nodes. Counting the exported model also checks that export keeps the cost
    FastNAS judged its constraint with.
    """
    __tracebackhide__ = True
    from optcheck.build.measure import count_flops

    exported = export_subnet(converted_model, config)
    ours = count_flops(exported, example_input)
    with active_subnet(converted_model, config):
        theirs = _modelopt_flops(converted_model, example_input)
    if ours == theirs:
        return
    bn = _batchnorm_flops(exported, example_input)
    why = (f"; the difference is the model's BatchNorm FLOPs ({bn:,}): one count includes BatchNorm"
           if bn and abs(ours - theirs) == bn else "")
    _fail("flops_match", converted_model, config, example_input,
          [("optcheck", f"{ours:,} FLOPs (measure.count_flops of the exported subnet)"),
           ("modelopt", f"{theirs:,} FLOPs (inference_flops of the converted model, subnet active)"),
           ("difference", f"{ours - theirs:+,} ({(ours / theirs - 1) * 100 if theirs else float('inf'):+.2f}%){why}")],
          "both must be 2 x MACs in eval mode with BatchNorm left out: check that Model Optimizer is imported "
          "through optcheck.compat (torchprofile 0.1 needs its shim, or modelopt counts BatchNorm), and that the "
          "exported subnet computes what the search space did (export_matches_converted)")


def _batchnorm_flops(model: nn.Module, example_input: Any) -> int:
    """The FLOPs torchprofile gives the ``aten::batch_norm`` nodes (2 x MACs): what one count has
    more than the other when only one of them leaves BatchNorm out."""
    from optcheck.build.measure import macs_per_node

    per_node = macs_per_node(model, example_input)
    return 2 * int(sum(v for node, v in per_node.items() if node.operator == "aten::batch_norm"))


def flops_monotone(converted_model: nn.Module, config: Mapping[str, Any], example_input: Any,
                   layer: str | None = None) -> None:
    """Narrowing one hparam of ``config`` to its next smaller choice never increases the FLOPs
    (``measure.count_flops`` of ``converted_model`` with the subnet active, on ``example_input``).

    ``layer`` names the hparam to narrow; None narrows each in turn (one count per hparam that is
    not at its smallest choice: the cost of this property on a deep model). Steps to the next
    smaller choice suffice: every narrower choice is reached by a chain of them.
    """
    __tracebackhide__ = True
    from optcheck.build.measure import count_flops

    space = search_space(converted_model)
    if layer is not None and layer not in space:
        raise ValueError(f"layer {layer!r} is not a configurable hparam of this model; "
                         f"they are: {', '.join(space)}")
    with active_subnet(converted_model, config), _quiet():
        base = count_flops(converted_model, example_input)
    for name in [layer] if layer is not None else list(space):
        smaller = sorted(c for c in space[name][0] if c < config[name])
        if not smaller:
            continue
        narrower = {**config, name: smaller[-1]}
        with active_subnet(converted_model, narrower), _quiet():
            flops = count_flops(converted_model, example_input)
        if flops > base:
            _fail("flops_monotone", converted_model, config, example_input,
                  [("narrowed", f"{name}: {config[name]} -> {smaller[-1]}"),
                   ("FLOPs", f"{base:,} -> {flops:,} (+{flops - base:,})")],
                  "a narrower subnet must not cost more: the FLOPs count does not follow the active subnet "
                  "(a dynamic module whose forward ignores its active width, or a count taken on a stale "
                  "trace); compare count_flops of the two exported subnets",
                  f", layer={name!r}")


# -- running a property under Hypothesis ------------------------------------------------------------

@dataclass
class PropertyRun:
    """What ``run_property`` did for the property ``name``: ``examples`` subnets checked (shrinking
    included) in ``seconds`` (conversion excluded: ``setup_seconds``), ``first_failure`` (the example
    number that first failed, 1 = the first; None when none did) and the size of the search space."""

    name: str
    examples: int
    seconds: float
    setup_seconds: float
    search_space_size: int
    first_failure: int | None = None

    @property
    def examples_per_second(self) -> float:
        return self.examples / self.seconds if self.seconds > 0 else float("inf")

    def summary(self) -> str:
        found = f", first failure at example {self.first_failure}" if self.first_failure else ""
        return (f"{self.examples} subnets of {self.search_space_size:,} in {self.seconds:.1f} s "
                f"({self.examples_per_second:.2f}/s){found}")


def _name(check: Callable) -> str:
    func = getattr(check, "func", check)  # functools.partial
    return getattr(func, "__name__", type(func).__name__)


def run_property(check: Callable[[nn.Module, dict, Any], None], converted_factory: Callable[[], nn.Module], *,
                 example_input: Any, max_examples: int = 20, deadline: Any = None,
                 database_dir: str | Path | None = None, seed: int | None = None) -> PropertyRun:
    """Check ``check(converted_model, config, example_input)`` on up to ``max_examples`` subnet configs
    that Hypothesis draws (``strategies.subnet_configs``) from ``converted_factory()`` (called once).

    Pass extra arguments with ``functools.partial`` (``partial(restore_exact, make_model=resnet20)``).
    ``deadline`` is Hypothesis's per-example limit (None: none; an export and restore of ResNet20 takes
    about a second). ``database_dir``: Hypothesis's example database (``DirectoryBasedExampleDatabase``)
    under a key of the property and the search space: a failing config found once is tried first on
    the next run, before any new one; without it nothing is saved. ``seed`` fixes the search.

    Returns a ``PropertyRun`` when every subnet passed. On failure raises the ``PropertyFailure`` of
    the minimal failing subnet (Hypothesis shrinks toward the full model, so only the culprit
    hparams differ from it), with the search's numbers added and ``.run`` set. Hypothesis's explain
    phase is skipped: it reruns the failing subnet with each hparam varied, too slow here, and the
    subnet line already says which hparams differ from the full model.
    """
    from hypothesis import Phase, given, settings
    from hypothesis import seed as fix_seed
    from hypothesis.database import DirectoryBasedExampleDatabase

    from optcheck.checks.strategies import subnet_configs

    name = _name(check)
    start = time.perf_counter()
    model = converted_factory()
    space = search_space(model)
    strategy = subnet_configs(model)
    setup = time.perf_counter() - start
    count = {"examples": 0, "first_failure": None}

    def prop(config):
        count["examples"] += 1
        try:
            check(model, config, example_input)
        except PropertyFailure:
            count["first_failure"] = count["first_failure"] or count["examples"]
            raise

    # the database key is the test function's digest, the same for every property run from here:
    # add the property's name and its search space, as Hypothesis's pytest plugin does per parametrize case
    material = f"{name}|{[(k, list(c), o) for k, (c, o) in space.items()]}"
    prop._hypothesis_internal_add_digest = hashlib.sha256(material.encode()).digest()  # type: ignore[attr-defined]
    options: dict[str, Any] = {
        "max_examples": max_examples, "deadline": deadline, "report_multiple_bugs": False,
        "database": DirectoryBasedExampleDatabase(str(database_dir)) if database_dir is not None else None,
        "phases": (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink),
    }
    test = given(config=strategy)(prop)
    if seed is not None:  # @seed switches the database off; the settings applied after it switch it back on
        test = fix_seed(seed)(test)
    test = settings(**options)(test)
    size = 1
    for choices, _ in space.values():
        size *= len(choices)
    begin = time.perf_counter()
    try:
        test()
    except PropertyFailure as failure:
        run = PropertyRun(name, count["examples"], time.perf_counter() - begin, setup, size, count["first_failure"])
        failure.run = run
        replay = (f"saved in {database_dir}: the next run_property with this database_dir tries it first"
                  if database_dir is not None else "pass database_dir= to have the next run try it first")
        failure.add_rows([("search", f"{run.summary()}; shrunk to the simplest failing subnet above"),
                          ("replay", replay)])
        raise
    return PropertyRun(name, count["examples"], time.perf_counter() - begin, setup, size, count["first_failure"])
