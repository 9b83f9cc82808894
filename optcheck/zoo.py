"""The model-zoo compatibility matrix: does Model Optimizer's FastNAS round-trip this model?

Per model, a fixed sequence of phases, each one a pass / fail verdict on CPU at a small input size:

``build``    the factory's model; an eval-mode forward of a batch of two gives ``(2, num_classes)``
             finite logits
``convert``  ``mtn.convert`` to the FastNAS search space (the case's divisors; Model Optimizer refuses
             a model with nothing to search); the full-size subnet's outputs equal the model's
``sample``   ``mtn.sample`` with a seeded ``random.Random(seed).choice`` (seed + 1, ... while it draws
             the full model): a smaller subnet that runs
``export``   ``mtn.export``: no dynamic module left; outputs equal the sampled subnet's
``save``     ``mto.save`` to a file in the working folder
``restore``  ``mto.restore`` into a fresh model from the same factory, three times (three instances:
             see ``RESTORE_TRIES``)
``compare``  each restored model against the exported one: architecture, state dict (keys, shapes,
             values), ``mto.modelopt_state`` and eval outputs (max |diff| <= 1e-6)

and two optional phases after them (``ALL_PHASES``):

``prune``        ``mtp.prune`` (FastNAS, a FLOPs target) on a fresh model with a few random batches
                 and a self-distillation score: the subnet it returns (exported, its channels sorted
                 by importance, BatchNorm re-estimated) meets the target, runs, and ``mto.save`` /
                 ``mto.restore`` reproduces it
``recipe_path``  optcheck's own recipe pipeline (``RecipeRun``) on a tiny synthetic recipe: train a
                 few batches -> FastNAS -> save -> restore afresh -> fine-tune a few batches, then the
                 ``restore_roundtrip`` budget on the pruned and the fine-tuned stage. The single
                 assertions once passed while this path failed for every torchvision model.

The first failing phase records its exception (type, trimmed message, fix hint); every later phase is
"not run (after <phase> failed)". Known failures (``KnownFailure``) turn a failure where one is
expected into ``xfailed``, and a known failure that passes into ``xpassed``, which fails the gate
("fixed upstream? remove the known_failure entry"). Plain functions over plain data: no pytest here.
"""

from __future__ import annotations

import contextlib
import io
import math
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PHASES: tuple[str, ...] = ("build", "convert", "sample", "export", "save", "restore", "compare")
OPTIONAL_PHASES: tuple[str, ...] = ("prune", "recipe_path")
ALL_PHASES: tuple[str, ...] = PHASES + OPTIONAL_PHASES

PASSED, FAILED, NOT_RUN = "passed", "failed", "not run"
XFAILED, XPASSED = "xfailed", "xpassed"

OUTPUT_ATOL = 1e-6  # compare / convert / export: eval outputs equal up to this (0.0 measured everywhere)
PRUNE_FLOPS = "70%"  # the prune phase's and the recipe path's FastNAS target
PRUNE_SLACK = 1.05  # as steps/fastnas.CONSTRAINT_SLACK: Model Optimizer's count vs optcheck's
MESSAGE_LIMIT = 500
SAMPLE_TRIES = 20
# Restores per model, each into another fresh instance. Model Optimizer 0.47 pairs a concatenation's
# width with its inputs' widths in the order of ``list(set(inputs))`` (modelopt/torch/nas/hparams/
# concat.py, ``ConcatTracedHp._get_sum_to_combo``): an order of id()s, so a fresh model may split a
# saved width the other way round ("Inconsistent keys in config"). Measured 18-20 of 20 restores fail
# on squeezenet1_0 / 1_1; three make a restore that passes by chance (an xpass that is not a fix) ~1e-3.
RESTORE_TRIES = 3

# what to do when a phase fails: the house style of optcheck's errors (cause, then the fix)
PHASE_HINTS: dict[str, str] = {
    "build": "the factory must return an nn.Module whose eval-mode forward of a (2, 3, S, S) batch returns "
             "one (2, num_classes) logits tensor; raise input_size if the model downsamples the input away",
    "convert": "Model Optimizer cannot trace this architecture into a FastNAS search space (densenet's dense "
               "concatenations: 'Missing symbols!'); lower the divisors if no layer is searchable, or list the "
               "model as a known failure",
    "sample": "a sampled subnet does not run: Model Optimizer's search space allows widths the model cannot "
              "take; report it with the model and divisors, or list it as a known failure",
    "export": "mtn.export changed what the subnet computes or left dynamic modules behind; report it upstream",
    "save": "mto.save could not write the checkpoint: check the working folder (disk space, permissions)",
    "restore": "mto.restore replays the saved modes on a fresh model from the factory (which built the same "
               "architecture again); 'Inconsistent keys in config' on a concatenation's inputs is Model Optimizer "
               "0.47 splitting a saved width between them in the order of list(set(inputs)), which differs from "
               "instance to instance (nas/hparams/concat.py, _get_sum_to_combo): a Model Optimizer bug, list it "
               "as a known failure with a ticket",
    "compare": "the restored model is not the one saved: look for state outside the state dict, a factory that "
               "initialises differently, or modes restored in another order",
    "prune": "mtp.prune's FastNAS search (or the save / restore of its subnet) failed on this model: try other "
             "divisors, or list it as a known failure",
    "recipe_path": "optcheck's own recipe pipeline fails on a model whose single phases pass: a bug in optcheck "
                   "(report it with this message), or a model the recipe path cannot train (e.g. a forward "
                   "that returns a tuple in training mode: pass model options such as aux_logits=False)",
}

FACTORY_HINT = ("make the factory deterministic: mto.restore needs the same architecture on every call (widths and "
                "layers from arguments, not from a global counter, the clock or randomness)")


# -- cases -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelCase:
    """One model of the zoo: ``name`` is any optcheck model name (``torchvision:NAME``,
    ``package.module:function``, ``resnet20``, ``small_cnn``); ``options`` its keyword arguments
    (a mapping or pairs; stored as sorted pairs so a case stays hashable)."""

    name: str
    input_size: int = 32
    num_classes: int = 10
    channel_divisor: int = 32
    feature_divisor: int = 32
    options: Any = ()

    def __post_init__(self) -> None:
        opts = self.options
        pairs = tuple(sorted((opts.items() if isinstance(opts, Mapping) else opts)))
        object.__setattr__(self, "options", pairs)
        if self.input_size < 1 or self.num_classes < 2 or self.channel_divisor < 1 or self.feature_divisor < 1:
            raise ValueError(f"{self.name}: input_size >= 1, num_classes >= 2 and divisors >= 1 "
                             f"(got {self.input_size}, {self.num_classes}, {self.channel_divisor}, "
                             f"{self.feature_divisor})")

    @property
    def label(self) -> str:
        """``resnet18`` for ``torchvision:resnet18``; the name itself otherwise."""
        return self.name.split(":", 1)[1] if self.name.startswith("torchvision:") else self.name

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "-", self.name).strip("-.") or "model"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "input_size": self.input_size, "num_classes": self.num_classes,
                "channel_divisor": self.channel_divisor, "feature_divisor": self.feature_divisor,
                "options": dict(self.options)}


# torchvision's models at the smallest input size every phase works at. Measured, an eval and a training
# forward of a batch of two: from 1 px for the ResNet / MobileNet / ShuffleNet / EfficientNet / MnasNet /
# RegNet families, 15 px googlenet, 17 / 21 px squeezenet1_1 / 1_0, 29 px densenet121, 32 px vgg11_bn (five
# max-pools), 75 px inception_v3 (without its auxiliary head). One size, 32 px, for all but inception_v3:
# vgg11_bn needs it, the times compare, and below it the stride-32 stems shrink the maps to 1x1 before the
# last stages (at 32 px only the last stage is 1x1), so the 3x3 convolutions would see their centre taps only.
# googlenet / inception_v3 without their auxiliary heads (aux_logits=False): those run in training mode only
# and make the forward return a tuple, which optcheck's recipe path cannot train; the restore failure is the
# same with and without them (measured). init_weights=True is their default, said aloud to silence a warning.
_INCEPTION = (("aux_logits", False), ("init_weights", True))
TORCHVISION_ZOO: tuple[ModelCase, ...] = (
    ModelCase("torchvision:resnet18"),
    ModelCase("torchvision:mobilenet_v2"),
    ModelCase("torchvision:mobilenet_v3_small"),
    # its stages are 48 / 96 / 192 wide: with divisors of 32 the smallest subnet keeps 84% of the FLOPs
    ModelCase("torchvision:shufflenet_v2_x0_5", channel_divisor=16, feature_divisor=16),
    ModelCase("torchvision:efficientnet_b0"),
    ModelCase("torchvision:mnasnet0_5"),
    ModelCase("torchvision:regnet_x_400mf"),
    ModelCase("torchvision:vgg11_bn"),
    ModelCase("torchvision:squeezenet1_0"),
    ModelCase("torchvision:squeezenet1_1"),
    ModelCase("torchvision:googlenet", options=_INCEPTION),
    ModelCase("torchvision:inception_v3", input_size=75, options=_INCEPTION),
    ModelCase("torchvision:densenet121"),
)


def torchvision_classification_models() -> list[str]:
    """Every classification model torchvision registers (``torchvision.models.list_models``), as
    ``torchvision:NAME``: what a zoo recipe's ``"torchvision:*"`` stands for."""
    import torchvision.models

    return [f"torchvision:{m}" for m in torchvision.models.list_models(module=torchvision.models)]


@dataclass(frozen=True)
class KnownFailure:
    """``model`` (a case's name, or its label: ``squeezenet1_0`` for ``torchvision:squeezenet1_0``) is
    expected to fail at ``phase``; ``match`` (a regex searched in "Type: message") narrows it to one
    failure, so that another failure at the same phase stays a failure."""

    model: str
    phase: str
    ticket: str
    reason: str
    match: str | None = None

    def __post_init__(self) -> None:
        if self.phase not in ALL_PHASES:
            raise ValueError(f"known failure of {self.model}: unknown phase {self.phase!r} "
                             f"(phases: {', '.join(ALL_PHASES)})")

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "phase": self.phase, "ticket": self.ticket, "reason": self.reason,
                "match": self.match}


_CONCAT = ("Model Optimizer 0.47 splits a concatenation's width between its inputs in an order that differs "
           "between model instances (list(set(inputs)) in ConcatTracedHp._get_sum_to_combo)")
MODELOPT_047_KNOWN_FAILURES: tuple[KnownFailure, ...] = (
    *(KnownFailure(f"torchvision:{m}", "restore", "issue 10", _CONCAT, r"Inconsistent keys in config")
      for m in ("squeezenet1_0", "squeezenet1_1", "googlenet", "inception_v3")),
    KnownFailure("torchvision:densenet121", "convert", "issue 10",
                 "Model Optimizer 0.47 cannot build the FastNAS search space of dense concatenations",
                 r"Missing symbols"),
)


# -- results -----------------------------------------------------------------------------------------

@dataclass
class PhaseResult:
    phase: str
    status: str  # passed | failed | not run
    seconds: float = 0.0
    error_type: str = ""
    message: str = ""
    hint: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def error(self) -> str:
        """``Type: message`` of a failed phase; the "not run (after ...)" note of a skipped one."""
        if self.status == FAILED:
            return f"{self.error_type}: {self.message}" if self.message else self.error_type
        return self.message

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"phase": self.phase, "status": self.status, "seconds": round(self.seconds, 3)}
        if self.error_type:
            out["error_type"] = self.error_type
        if self.message:
            out["message"] = self.message
        if self.hint:
            out["hint"] = self.hint
        if self.details:
            out["details"] = _jsonable(self.details)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PhaseResult":
        return cls(d["phase"], d["status"], float(d.get("seconds", 0.0)), d.get("error_type", ""),
                   d.get("message", ""), d.get("hint", ""), dict(d.get("details", {})))


@dataclass
class ModelResult:
    case: ModelCase
    phases: list[PhaseResult]
    seconds: float
    seed: int = 0
    versions: dict[str, str | None] = field(default_factory=dict)

    @property
    def model(self) -> str:
        return self.case.name

    def phase(self, name: str) -> PhaseResult | None:
        return next((p for p in self.phases if p.phase == name), None)

    @property
    def failed_phase(self) -> str | None:
        return next((p.phase for p in self.phases if p.status == FAILED), None)

    @property
    def passed(self) -> bool:
        return all(p.status == PASSED for p in self.phases)

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.case.name, "case": self.case.as_dict(), "seed": self.seed,
                "seconds": round(self.seconds, 3), "passed": self.passed, "failed_phase": self.failed_phase,
                "phases": [p.as_dict() for p in self.phases], "versions": dict(self.versions)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelResult":
        """The inverse of ``as_dict`` (a result kept in the cache, or read from a JSON report)."""
        return cls(ModelCase(**d["case"]), [PhaseResult.from_dict(p) for p in d["phases"]], float(d["seconds"]),
                   int(d.get("seed", 0)), dict(d.get("versions", {})))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


_BOX = re.compile(r"[\u2500-\u257f]")  # box drawing: modelopt's profiling tables (rich)


def trim_message(exc: BaseException, limit: int = MESSAGE_LIMIT) -> str:
    """The exception's message on one line: its lines joined with " | ", tables' borders dropped (their
    cells kept), at most ``limit`` chars; a longer one keeps its last line (often the verdict)."""
    lines = [" ".join(_BOX.sub(" ", line).split()) for line in str(exc).splitlines()]
    lines = [line for line in lines if line.strip("-=_ ")]
    text = " | ".join(lines)
    if len(text) <= limit:
        return text
    last = lines[-1]
    room = limit - len(last) - 5
    if len(lines) > 1 and room >= limit // 2:
        return text[:room].rstrip() + " … | " + last
    return text[: limit - 1].rstrip() + "…"


# -- the phases ---------------------------------------------------------------------------------------

class PhaseFailure(AssertionError):
    """A phase's own check failed (the library call itself did not raise)."""


class PhaseError(Exception):
    """A library call failed and optcheck knows more about why: the original type is kept, the message
    says what optcheck found, and ``hint`` replaces the phase's hint."""

    def __init__(self, error_type: str, message: str, hint: str | None = None):
        super().__init__(message)
        self.error_type, self.hint = error_type, hint


def _shapes(model) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if hasattr(v, "shape")}


def architecture_difference(expected: Mapping[str, tuple], actual: Mapping[str, tuple]) -> str | None:
    """Where two state dicts' shapes first differ, in words, or None when they are the same."""
    if dict(expected) == dict(actual):
        return None
    only_a = [k for k in expected if k not in actual]
    only_b = [k for k in actual if k not in expected]
    parts = [f"{len(expected)} vs {len(actual)} tensors"] if len(expected) != len(actual) else []
    if only_b:
        parts.append(f"new: {', '.join(only_b[:2])}{' ...' if len(only_b) > 2 else ''}")
    if only_a:
        parts.append(f"missing: {', '.join(only_a[:2])}{' ...' if len(only_a) > 2 else ''}")
    shape = next((k for k in expected if k in actual and expected[k] != actual[k]), None)
    if shape is not None:
        parts.append(f"{shape} {list(expected[shape])} vs {list(actual[shape])}")
    return "; ".join(parts)


@contextlib.contextmanager
def _library_output() -> Iterator[io.StringIO]:
    """Model Optimizer prints its search's progress (tqdm bars, "Running forward loop...") to stdout
    and stderr; inside, both go to a buffer, and its internal warnings are silenced."""
    from .quiet import library_noise

    buffer = io.StringIO()
    with library_noise(), contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        yield buffer


def _fastnas_config(mtp, channel_divisor: int, feature_divisor: int):
    # as steps/fastnas.fastnas_config, without a recipe step
    config = mtp.fastnas.FastNASConfig()
    for rule in ("nn.Conv1d", "nn.Conv2d", "nn.Conv3d"):
        config[rule]["*"]["channel_divisor"] = channel_divisor
    for rule in ("nn.BatchNorm1d", "nn.BatchNorm2d", "nn.BatchNorm3d", "nn.Linear"):
        config[rule]["*"]["feature_divisor"] = feature_divisor
    return config


def _eval_output(model, x):
    """Eval-mode outputs. ``eval()`` of a FastNAS model right after ``mtn.sample`` re-estimates its
    BatchNorm statistics from the training batches it cached (a warning when it has none, as here)."""
    import torch

    from .quiet import library_noise

    was = model.training
    with library_noise():
        model.eval()
        try:
            with torch.no_grad():
                return model(x)
        finally:
            model.train(was)


def _max_diff(a, b) -> float:
    return float((a - b).abs().max().item()) if a.numel() else 0.0


def _check_logits(out, case: ModelCase, batch: int, what: str) -> None:
    import torch

    if not isinstance(out, torch.Tensor):
        raise PhaseFailure(f"{what} returns a {type(out).__name__}, not one logits tensor")
    if tuple(out.shape) != (batch, case.num_classes):
        raise PhaseFailure(f"{what} returns shape {tuple(out.shape)} for a batch of {batch}; expected "
                           f"({batch}, {case.num_classes})")
    if not torch.isfinite(out).all():
        raise PhaseFailure(f"{what} returns non-finite logits ({int((~torch.isfinite(out)).sum())} of "
                           f"{out.numel()})")


def _same(a, b, what: str) -> float:
    diff = _max_diff(a, b)
    if tuple(a.shape) != tuple(b.shape) or not diff <= OUTPUT_ATOL:
        raise PhaseFailure(f"{what}: max |diff| {diff:.3g} > {OUTPUT_ATOL:g}"
                           if tuple(a.shape) == tuple(b.shape) else
                           f"{what}: shapes {tuple(a.shape)} vs {tuple(b.shape)}")
    return diff


class _Run:
    """The state the phases hand on: the input, the models, the checkpoint."""

    def __init__(self, case: ModelCase, workdir: Path, seed: int, batch_size: int, restores: int = 1):
        import torch

        self.case, self.workdir, self.seed, self.batch, self.restores = case, workdir, seed, batch_size, restores
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(batch_size, 3, case.input_size, case.input_size, generator=g)
        self.mtn, self.mto, self.mtp = _modelopt()
        self.model = self.exported = None
        self.restored: list[Any] = []
        self.outputs: dict[str, Any] = {}
        self.path = workdir / f"{case.slug}_exported.pth"

    def make_model(self):
        from .models import build_model
        from .recipe import ModelConfig

        cfg = ModelConfig(name=self.case.name, options=dict(self.case.options))
        return build_model(cfg, self.case.num_classes, seed=self.seed, path=f"zoo:{self.case.name}")

    # each phase returns its details (measured values); a failed check raises
    def build(self) -> dict[str, Any]:
        import torch.nn as nn

        from .measure import count_params

        model = self.make_model()
        if not isinstance(model, nn.Module):
            raise PhaseFailure(f"the factory returned {type(model).__name__}, not a torch.nn.Module")
        out = _eval_output(model, self.x)
        _check_logits(out, self.case, self.batch, "the model's eval-mode forward")
        self.model, self.outputs["build"], self.shapes = model, out, _shapes(model)
        return {"params": count_params(model)}

    def convert(self) -> dict[str, Any]:
        config = _fastnas_config(self.mtp, self.case.channel_divisor, self.case.feature_divisor)
        with _library_output():
            model = self.mtn.convert(self.model, mode=[("fastnas", config)])
        self.model = model  # a model with nothing to search: modelopt's ApplyModeError above
        searchable = self.mtn.get_subnet_config(model, configurable=True)
        out = _eval_output(model, self.x)
        diff = _same(self.outputs["build"], out, "the converted model's full-size outputs differ from the model's")
        return {"searchable_hparams": len(searchable), "max_abs_diff": diff}

    def sample(self) -> dict[str, Any]:
        from modelopt.torch.opt.utils import named_hparams

        from .measure import count_params

        full = count_params(self.model)
        for attempt in range(SAMPLE_TRIES):  # a small search space can draw the full model: draw again
            with _library_output():
                config = self.mtn.sample(self.model, random.Random(self.seed + attempt).choice)
            shrunk = sum(1 for _n, hp in named_hparams(self.model, configurable=True) if hp.active != hp.max)
            if shrunk:
                break
        else:
            raise PhaseFailure(f"mtn.sample drew the full model {SAMPLE_TRIES} times (seeds {self.seed} to "
                               f"{self.seed + SAMPLE_TRIES - 1}, {len(config)} hparams): the subnet phases would "
                               "test nothing; lower the divisors")
        out = _eval_output(self.model, self.x)
        _check_logits(out, self.case, self.batch, "the sampled subnet's forward")
        self.outputs["sample"] = out
        return {"hparams_shrunk": shrunk, "params": count_params(self.model), "full_params": full,
                "sample_seed": self.seed + attempt}

    def export(self) -> dict[str, Any]:
        from modelopt.torch.opt.dynamic import DynamicModule

        from .measure import count_params

        params = count_params(self.model)
        with _library_output():
            exported = self.mtn.export(self.model)
        dynamic = [n for n, m in exported.named_modules() if isinstance(m, DynamicModule)]
        if dynamic:
            raise PhaseFailure(f"{len(dynamic)} dynamic modules left after mtn.export (e.g. {dynamic[0] or '<root>'})")
        out = _eval_output(exported, self.x)
        diff = _same(self.outputs["sample"], out, "the exported subnet's outputs differ from the sampled subnet's")
        got = count_params(exported)
        if got != params:
            raise PhaseFailure(f"the exported subnet has {got:,} params, the sampled subnet {params:,}")
        self.exported, self.outputs["export"] = exported, out
        return {"params": got, "max_abs_diff": diff}

    def save(self) -> dict[str, Any]:
        from .assertions import _modelopt_modes

        with _library_output():
            self.mto.save(self.exported, self.path)
        size = self.path.stat().st_size if self.path.exists() else 0
        if not size:
            raise PhaseFailure(f"mto.save wrote no file at {self.path}")
        return {"bytes": size, "modes": _modelopt_modes(self.exported)}

    def restore(self) -> dict[str, Any]:
        """``mto.restore`` into ``restores`` fresh models, all kept alive (distinct instances): Model
        Optimizer 0.47's restore of concatenated branches depends on the instance (see ``RESTORE_TRIES``)."""
        import torch.nn as nn

        self.restored = []
        for attempt in range(1, self.restores + 1):
            fresh = self.make_model()
            other = architecture_difference(self.shapes, _shapes(fresh))
            try:
                with _library_output():
                    restored = self.mto.restore(fresh, self.path)
            except Exception as exc:
                if other is not None:
                    raise PhaseError(type(exc).__name__, (
                        f"the factory built another model for restore than the one saved ({other}); mto.restore "
                        f"raised {type(exc).__name__}: {trim_message(exc, 150)}"), FACTORY_HINT) from exc
                if attempt == 1:
                    raise
                raise PhaseError(type(exc).__name__, (
                    f"restore {attempt} of {self.restores} (into another fresh model) raised "
                    f"{type(exc).__name__} after {attempt - 1} passed: the result depends on the model instance | "
                    f"{trim_message(exc)}")) from exc
            if not isinstance(restored, nn.Module):
                raise PhaseFailure(f"mto.restore returned {type(restored).__name__}, not a torch.nn.Module")
            self.restored.append(restored)
        return {"restores": self.restores}

    def compare(self) -> dict[str, Any]:
        from .assertions import model_differences

        worst = 0.0
        for i, restored in enumerate(self.restored, 1):
            rows = model_differences(self.exported, restored, example_input=self.x, atol=OUTPUT_ATOL)
            if rows:
                which = f"restore {i} of {len(self.restored)}: " if len(self.restored) > 1 else ""
                raise PhaseFailure(which + "; ".join(f"{aspect}: {what}" for aspect, what in rows))
            worst = max(worst, _max_diff(self.outputs["export"], _eval_output(restored, self.x)))
        return {"max_abs_diff": worst, "state_dict_tensors": len(self.restored[0].state_dict()),
                "restores": len(self.restored)}

    def prune(self) -> dict[str, Any]:
        """mtp.prune on a fresh model and random data; its subnet meets the target and round-trips."""
        import torch
        import torch.nn.functional as F

        from .assertions import _modelopt_modes, model_differences
        from .limits import parse_percent
        from .measure import count_flops

        g = torch.Generator().manual_seed(self.seed + 1)
        s, k = self.case.input_size, self.case.num_classes
        batches = [(torch.randn(self.batch, 3, s, s, generator=g), torch.randint(0, k, (self.batch,), generator=g))
                   for _ in range(2)]
        score_x = torch.cat([b[0] for b in batches])
        model = self.make_model()
        reference = _eval_output(model, score_x)

        # an untrained model has no accuracy to lose: the score is how close a subnet's logits stay to
        # the full model's (self-distillation), so smaller subnets score lower, as on a trained model
        def score(m) -> float:
            with torch.no_grad():
                return -float(F.mse_loss(m(score_x), reference).item())

        dummy = self.x[:1]
        full = count_flops(model, dummy)
        config = _fastnas_config(self.mtp, self.case.channel_divisor, self.case.feature_divisor)
        scored = {"n": 0}

        def counted(m) -> float:
            scored["n"] += 1
            return score(m)

        with _library_output():
            model, _ = self.mtp.prune(
                model=model, mode=[("fastnas", config)], constraints={"flops": PRUNE_FLOPS}, dummy_input=dummy,
                config={"data_loader": batches, "score_func": counted, "max_iter_data_loader": 2,
                        "checkpoint": str(self.workdir / f"{self.case.slug}_search.pth"), "verbose": False})
        got = count_flops(model, dummy)
        target = parse_percent(PRUNE_FLOPS) * full
        if got > target * PRUNE_SLACK:
            raise PhaseFailure(f"mtp.prune returned a subnet of {got:,} FLOPs ({got / full:.1%} of {full:,}), over its "
                               f"target {PRUNE_FLOPS} (+{PRUNE_SLACK - 1:.0%} slack): Model Optimizer returns the "
                               "binary search's first candidate when none it tried met the target")
        _check_logits(_eval_output(model, self.x), self.case, self.batch, "the pruned subnet's forward")
        path = self.workdir / f"{self.case.slug}_pruned.pth"
        with _library_output():
            self.mto.save(model, path)
            restored = self.mto.restore(self.make_model(), path)
        rows = model_differences(model, restored, example_input=self.x, atol=OUTPUT_ATOL)
        if rows:
            raise PhaseFailure("the pruned subnet restored by mto.restore differs: "
                               + "; ".join(f"{aspect}: {what}" for aspect, what in rows))
        return {"flops": got, "full_flops": full, "ratio": round(got / full, 4), "subnets_scored": scored["n"],
                "bytes": path.stat().st_size, "modes": _modelopt_modes(model)}

    def recipe_path(self) -> dict[str, Any]:
        return run_recipe_path(self.case, self.workdir / "recipe_path", self.seed)


def _modelopt():
    from .compat import import_modelopt

    return import_modelopt()


# -- the recipe path ----------------------------------------------------------------------------------

RECIPE_BATCH = 8
RECIPE_TRAIN_SAMPLES = 16  # two training batches per epoch, baseline and fine-tuning


def recipe_for(case: ModelCase, seed: int = 0) -> dict[str, Any]:
    """A tiny synthetic recipe for ``case``: train a few batches, FastNAS, fine-tune a few batches;
    the restore round trip judged on the pruned and the fine-tuned stage. ``min_test_samples`` is
    lowered knowingly: nothing here judges accuracy."""
    k = case.num_classes
    samples = max(100, 10 * k)  # a stratified 10% val split holds every class
    return {
        "name": f"zoo-{case.slug}"[:100],
        "description": f"optcheck zoo: the recipe path of {case.name}",
        "seed": seed,
        "data": {"dataset": "synthetic", "batch_size": RECIPE_BATCH, "eval_batch_size": 64, "augment": [],
                 "train_limit": RECIPE_TRAIN_SAMPLES,
                 "options": {"samples": samples, "classes": k, "image_size": case.input_size}},
        "model": {"name": case.name, "options": dict(case.options)},
        "train": {"epochs": 1, "lr": 0.05, "warmup_epochs": 0},
        "steps": [{"kind": "fastnas", "flops": PRUNE_FLOPS, "channel_divisor": case.channel_divisor,
                   "feature_divisor": case.feature_divisor, "calib_batches": 1, "score_samples": k},
                  {"kind": "finetune", "epochs": 1, "lr_scale": 0.1}],
        "budgets": {"restore_roundtrip": True, "min_test_samples": math.ceil(0.2 * samples),
                    "pruned": {"restore_roundtrip": True}},
    }


def run_recipe_path(case: ModelCase, workdir: Path, seed: int = 0,
                    log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build every stage of ``recipe_for(case)`` with optcheck's ``RecipeRun`` (no cache) and judge
    ``restore_roundtrip`` on the pruned and the final stage. Raises what the pipeline raises."""
    from .budgets import check_budget
    from .pipeline import RecipeRun
    from .recipe import parse_recipe

    workdir.mkdir(parents=True, exist_ok=True)
    recipe = parse_recipe(recipe_for(case, seed), workdir / f"zoo-{case.slug}.toml")
    lines: list[str] = []
    run = RecipeRun(recipe, device="cpu", seed=seed, workdir=lambda: workdir, log=log or lines.append)
    out: dict[str, Any] = {}
    with _library_output():
        run.preflight()
        for stage in run.available_stages():
            artifact = run.artifact(stage)
            out[f"{stage}_flops"] = artifact.metrics.flops
        check_budget(("pruned", "restore_roundtrip"), run)
        check_budget("restore_roundtrip", run)
    out["stages"] = run.available_stages()
    return out


# -- running a model ------------------------------------------------------------------------------------

def check_phases(phases: Iterable[str]) -> tuple[str, ...]:
    """The phases to run, in their fixed order. The phases of ``PHASES`` asked for must be a prefix
    of it (each needs the one before); the optional ones run after them."""
    asked = list(dict.fromkeys(phases))
    unknown = [p for p in asked if p not in ALL_PHASES]
    if unknown:
        raise ValueError(f"unknown phase {unknown[0]!r}: phases are {', '.join(ALL_PHASES)}")
    core = [p for p in PHASES if p in asked]
    if core != list(PHASES[: len(core)]) or not core:
        missing = next(p for p in PHASES if p not in asked)
        raise ValueError(f"phases {', '.join(core) or '(none)'}: each of {', '.join(PHASES)} needs the ones "
                         f"before it, and 'build' is always needed; add {missing!r}")
    return tuple(core) + tuple(p for p in OPTIONAL_PHASES if p in asked)


def versions() -> dict[str, str | None]:
    from .numerics import dist_version

    return {d: dist_version(d, None) for d in ("nvidia-modelopt", "torch", "torchvision", "torchprofile")}


def run_model(case: ModelCase, phases: Iterable[str] = PHASES, workdir: str | Path | None = None,
              seed: int = 0, *, batch_size: int = 2, restores: int = RESTORE_TRIES,
              log: Callable[[str], None] | None = None) -> ModelResult:
    """Run ``phases`` on ``case`` on CPU, in order; the first failure stops the rest. Files go to
    ``workdir`` (a temporary folder, removed after, when None). The imports (modelopt, torchvision)
    happen before the clock starts, so the first model's time is its own."""
    own = workdir is None
    root = Path(tempfile.mkdtemp(prefix="optcheck-zoo-")) if own else Path(workdir)
    try:
        stepper = ModelStepper(case, phases, root, seed, batch_size=batch_size, restores=restores, log=log)
        stepper.run_until(stepper.order[-1])
        return stepper.result()
    finally:
        if own:
            shutil.rmtree(root, ignore_errors=True)


class ModelStepper:
    """One model's phases run one at a time, on demand: ``run_until(phase)`` runs the phases up to and
    including ``phase`` that have not run yet (each needs the one before) and returns its result. The
    pytest items of a zoo recipe (one per model and phase) call it in turn, so each phase's time and
    verdict belong to its own item; a phase after a failed one is "not run". ``run_model`` is the
    same, all at once."""

    def __init__(self, case: ModelCase, phases: Iterable[str], workdir: str | Path, seed: int = 0, *,
                 batch_size: int = 2, restores: int = RESTORE_TRIES, log: Callable[[str], None] | None = None):
        self.order = check_phases(phases)
        if batch_size < 2:
            raise ValueError("batch_size >= 2: a training-mode BatchNorm needs two samples")
        if restores < 1:
            raise ValueError("restores >= 1")
        self.case, self.seed, self.batch_size, self.restores, self.log = case, seed, batch_size, restores, log
        self.root = Path(workdir)
        self.results: list[PhaseResult] = []
        self.seconds = 0.0
        self._state: _Run | None = None
        self._failed: str | None = None
        self._imported = False

    @property
    def done(self) -> bool:
        return len(self.results) == len(self.order)

    def run_until(self, phase: str) -> PhaseResult:
        if phase not in self.order:
            raise ValueError(f"{self.case.name}: phase {phase!r} is not one of this run's ({', '.join(self.order)})")
        if not self._imported:  # outside the clock: the first model's time is its own
            _modelopt()
            if self.case.name.startswith("torchvision:"):
                import torchvision.models  # noqa: F401
            self.root.mkdir(parents=True, exist_ok=True)
            self._imported = True
        while len(self.results) <= self.order.index(phase):
            self._step(self.order[len(self.results)])
        if self.done:
            self._state = None  # the models and tensors go; the results stay
        return self.results[self.order.index(phase)]

    def _step(self, phase: str) -> None:
        if self._failed is not None:
            self.results.append(PhaseResult(phase, NOT_RUN, message=f"not run (after {self._failed} failed)"))
            return
        t0 = time.perf_counter()
        try:
            if self._state is None:
                self._state = _Run(self.case, self.root, self.seed, self.batch_size, self.restores)
            details = getattr(self._state, phase)()
        except Exception as exc:  # noqa: BLE001 - any failure of a phase is the finding
            self._failed, self._state = phase, None
            self.results.append(PhaseResult(phase, FAILED, time.perf_counter() - t0,
                                            getattr(exc, "error_type", None) or type(exc).__name__,
                                            trim_message(exc), getattr(exc, "hint", None) or PHASE_HINTS[phase]))
        else:
            self.results.append(PhaseResult(phase, PASSED, time.perf_counter() - t0, details=details or {}))
        last = self.results[-1]
        self.seconds += last.seconds
        if self.log is not None:
            self.log(f"zoo: {self.case.label} {phase} {last.status} in {last.seconds:.2f} s"
                     + (f": {last.error}" if last.status == FAILED else ""))

    def result(self) -> ModelResult:
        return ModelResult(self.case, list(self.results), self.seconds, self.seed, versions())


def run_zoo(cases: Iterable[ModelCase], phases: Iterable[str] = PHASES, workdir: str | Path | None = None,
            seed: int = 0, **kwargs: Any) -> list[ModelResult]:
    """``run_model`` for each case, in order: each in its own subfolder of ``workdir`` (kept), or in its
    own temporary folder (removed after) when ``workdir`` is None."""
    out = []
    for case in cases:
        sub = None if workdir is None else Path(workdir) / case.slug
        out.append(run_model(case, phases, sub, seed, **kwargs))
    return out


# -- verdicts --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    """One (model, phase) cell judged against the known failures."""

    model: str
    phase: str
    outcome: str  # passed | failed | xfailed | xpassed | not run
    message: str = ""
    known: KnownFailure | None = None

    @property
    def ok(self) -> bool:
        """False for a failure nobody expected and for a known failure that passed."""
        return self.outcome not in (FAILED, XPASSED)

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "phase": self.phase, "outcome": self.outcome, "ok": self.ok,
                "message": self.message, "known": self.known.as_dict() if self.known else None}


def _names(case: ModelCase) -> tuple[str, str]:
    return case.name, case.label


def _find_known(known: Iterable[KnownFailure], case: ModelCase, phase: str) -> KnownFailure | None:
    return next((k for k in known if k.model in _names(case) and k.phase == phase), None)


def classify(results: Iterable[ModelResult], known: Iterable[KnownFailure] = ()) -> list[Verdict]:
    """Every (model, phase) of ``results`` as passed / failed / xfailed / xpassed / not run.

    A known failure that failed as described (its ``match``, if any, found in "Type: message") is
    ``xfailed``; one that failed otherwise is ``failed`` (another failure than the known one); one that
    passed is ``xpassed``, which is not ``ok``: Model Optimizer fixed it, and the entry must go."""
    known = list(known)
    out: list[Verdict] = []
    for result in results:
        for p in result.phases:
            entry = _find_known(known, result.case, p.phase)
            if p.status == NOT_RUN:
                out.append(Verdict(result.model, p.phase, NOT_RUN, p.message, entry))
            elif entry is None:
                msg = "" if p.status == PASSED else f"{p.error}\n  fix: {p.hint}"
                out.append(Verdict(result.model, p.phase, p.status, msg))
            elif p.status == PASSED:
                out.append(Verdict(result.model, p.phase, XPASSED, (
                    f"{result.model} {p.phase} passed, but it is listed as a known failure ({entry.ticket}: "
                    f"{entry.reason})\n  fix: fixed upstream? remove the known_failure entry for "
                    f"({result.model!r}, {p.phase!r}) and close {entry.ticket}"), entry))
            elif entry.match is not None and not re.search(entry.match, p.error):
                out.append(Verdict(result.model, p.phase, FAILED, (
                    f"{p.error}\n  known failure {entry.ticket} expects /{entry.match}/ here, and this is another "
                    f"failure\n  fix: {p.hint}"), entry))
            else:
                out.append(Verdict(result.model, p.phase, XFAILED,
                                   f"known failure ({entry.ticket}: {entry.reason}): {p.error}", entry))
    return out


def gate_failures(verdicts: Iterable[Verdict]) -> list[Verdict]:
    """The verdicts that fail the gate: unexpected failures and known failures that passed."""
    return [v for v in verdicts if not v.ok]


def stale_known_failures(results: Iterable[ModelResult], known: Iterable[KnownFailure]) -> list[KnownFailure]:
    """Known failures naming a model that none of ``results`` ran (a typo, or a model left out)."""
    models = {name for r in results for name in _names(r.case)}
    return [k for k in known if k.model not in models]


# -- the matrix --------------------------------------------------------------------------------------

CELLS = {PASSED: "✓", FAILED: "✗", XFAILED: "known failure", XPASSED: "✓ (xpass)", NOT_RUN: "–"}


def matrix_markdown(results: Sequence[ModelResult], known: Iterable[KnownFailure] = (), *,
                    title: str | None = None) -> str:
    """A Markdown table, model x phase (✓ passed, ✗ failed, known failure, ✓ (xpass) a known failure
    that passed, – not run), with seconds per model and in total, then one line per failure."""
    results, known = list(results), list(known)
    judged = [(r, {v.phase: v for v in classify([r], known)}) for r in results]
    cols = [p for p in ALL_PHASES if any(r.phase(p) is not None for r in results)]
    lines = [] if title is None else [title, ""]
    lines.append("| model | input | " + " | ".join(cols) + " | seconds |")
    lines.append("|---|---|" + "---|" * len(cols) + "---:|")
    for r, cell in judged:
        cells = [CELLS[cell[p].outcome] if p in cell else "–" for p in cols]
        lines.append(f"| {r.case.label} | {r.case.input_size} | " + " | ".join(cells) + f" | {r.seconds:.1f} |")
    total = sum(r.seconds for r in results)
    lines.append(f"| **total** ({len(results)} models) | | " + " | ".join("" for _ in cols) + f" | {total:.1f} |")
    notes = [(r, v) for r, cell in judged for v in cell.values() if v.outcome in (FAILED, XFAILED, XPASSED)]
    if notes:
        lines.append("")
        for r, v in notes:
            head = {FAILED: "✗", XFAILED: "known failure", XPASSED: "✓ (xpass)"}[v.outcome]
            lines.append(f"- **{r.case.label}** `{v.phase}` {head}: " + v.message.replace("\n  ", " — "))
    return "\n".join(lines)
