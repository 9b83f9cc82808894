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

Each phase is a function ``phase(state: ModelState) -> details`` (measured values, kept in the result);
a failed check raises. ``TABLE`` lists them in order (``stepper.py`` adds ``recipe_path``).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from optcheck.checks.restore import shapes
from optcheck.core.compat import import_modelopt
from optcheck.recipes.zoo import ModelCase
from optcheck.steps.fastnas import search_space_config
from optcheck.zoo.common import (FACTORY_HINT, OUTPUT_ATOL, PRUNE_FLOPS, SAMPLE_TRIES, PhaseError,
                                 PhaseFailure, library_output)
from optcheck.zoo.results import trim_message

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


def _eval_output(model, x):
    """Eval-mode outputs. ``eval()`` of a FastNAS model right after ``mtn.sample`` re-estimates its
    BatchNorm statistics from the training batches it cached (a warning when it has none, as here)."""
    import torch

    from optcheck.core.quiet import library_noise

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


class ModelState:
    """What the phases hand on, from one to the next: the input, the models, the checkpoint."""

    def __init__(self, case: ModelCase, workdir: Path, seed: int, batch_size: int, restores: int = 1):
        import torch

        self.case, self.workdir, self.seed, self.batch, self.restores = case, workdir, seed, batch_size, restores
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(batch_size, 3, case.input_size, case.input_size, generator=g)
        self.mtn, self.mto, self.mtp = import_modelopt()
        self.model = self.exported = None
        self.restored: list[Any] = []
        self.outputs: dict[str, Any] = {}
        self.path = workdir / f"{case.slug}_exported.pth"

    def make_model(self):
        from optcheck.build.models import build_model
        from optcheck.recipes.schema import ModelConfig

        cfg = ModelConfig(name=self.case.name, options=dict(self.case.options))
        return build_model(cfg, self.case.num_classes, seed=self.seed, path=f"zoo:{self.case.name}")


def build(state: ModelState) -> dict[str, Any]:
    import torch.nn as nn

    from optcheck.build.measure import count_params

    model = state.make_model()
    if not isinstance(model, nn.Module):
        raise PhaseFailure(f"the factory returned {type(model).__name__}, not a torch.nn.Module")
    out = _eval_output(model, state.x)
    _check_logits(out, state.case, state.batch, "the model's eval-mode forward")
    state.model, state.outputs["build"], state.shapes = model, out, shapes(model)
    return {"params": count_params(model)}

def convert(state: ModelState) -> dict[str, Any]:
    config = search_space_config(state.case.channel_divisor, state.case.feature_divisor)
    with library_output():
        model = state.mtn.convert(state.model, mode=[("fastnas", config)])
    state.model = model  # a model with nothing to search: modelopt's ApplyModeError above
    searchable = state.mtn.get_subnet_config(model, configurable=True)
    out = _eval_output(model, state.x)
    diff = _same(state.outputs["build"], out, "the converted model's full-size outputs differ from the model's")
    return {"searchable_hparams": len(searchable), "max_abs_diff": diff}

def sample(state: ModelState) -> dict[str, Any]:
    from modelopt.torch.opt.utils import named_hparams

    from optcheck.build.measure import count_params

    full = count_params(state.model)
    for attempt in range(SAMPLE_TRIES):  # a small search space can draw the full model: draw again
        with library_output():
            config = state.mtn.sample(state.model, random.Random(state.seed + attempt).choice)
        shrunk = sum(1 for _n, hp in named_hparams(state.model, configurable=True) if hp.active != hp.max)
        if shrunk:
            break
    else:
        raise PhaseFailure(f"mtn.sample drew the full model {SAMPLE_TRIES} times (seeds {state.seed} to "
                           f"{state.seed + SAMPLE_TRIES - 1}, {len(config)} hparams): the subnet phases would "
                           "test nothing; lower the divisors")
    out = _eval_output(state.model, state.x)
    _check_logits(out, state.case, state.batch, "the sampled subnet's forward")
    state.outputs["sample"] = out
    return {"hparams_shrunk": shrunk, "params": count_params(state.model), "full_params": full,
            "sample_seed": state.seed + attempt}

def export(state: ModelState) -> dict[str, Any]:
    from modelopt.torch.opt.dynamic import DynamicModule

    from optcheck.build.measure import count_params

    params = count_params(state.model)
    with library_output():
        exported = state.mtn.export(state.model)
    dynamic = [n for n, m in exported.named_modules() if isinstance(m, DynamicModule)]
    if dynamic:
        raise PhaseFailure(f"{len(dynamic)} dynamic modules left after mtn.export (e.g. {dynamic[0] or '<root>'})")
    out = _eval_output(exported, state.x)
    diff = _same(state.outputs["sample"], out, "the exported subnet's outputs differ from the sampled subnet's")
    got = count_params(exported)
    if got != params:
        raise PhaseFailure(f"the exported subnet has {got:,} params, the sampled subnet {params:,}")
    state.exported, state.outputs["export"] = exported, out
    return {"params": got, "max_abs_diff": diff}

def save(state: ModelState) -> dict[str, Any]:
    from optcheck.checks.restore import modelopt_modes

    with library_output():
        state.mto.save(state.exported, state.path)
    size = state.path.stat().st_size if state.path.exists() else 0
    if not size:
        raise PhaseFailure(f"mto.save wrote no file at {state.path}")
    return {"bytes": size, "modes": modelopt_modes(state.exported)}

def restore(state: ModelState) -> dict[str, Any]:
    """``mto.restore`` into ``restores`` fresh models, all kept alive (distinct instances): Model
    Optimizer 0.47's restore of concatenated branches depends on the instance (see ``RESTORE_TRIES``)."""
    import torch.nn as nn

    state.restored = []
    for attempt in range(1, state.restores + 1):
        fresh = state.make_model()
        other = architecture_difference(state.shapes, shapes(fresh))
        try:
            with library_output():
                restored = state.mto.restore(fresh, state.path)
        except Exception as exc:
            if other is not None:
                raise PhaseError(type(exc).__name__, (
                    f"the factory built another model for restore than the one saved ({other}); mto.restore "
                    f"raised {type(exc).__name__}: {trim_message(exc, 150)}"), FACTORY_HINT) from exc
            if attempt == 1:
                raise
            raise PhaseError(type(exc).__name__, (
                f"restore {attempt} of {state.restores} (into another fresh model) raised "
                f"{type(exc).__name__} after {attempt - 1} passed: the result depends on the model instance | "
                f"{trim_message(exc)}")) from exc
        if not isinstance(restored, nn.Module):
            raise PhaseFailure(f"mto.restore returned {type(restored).__name__}, not a torch.nn.Module")
        state.restored.append(restored)
    return {"restores": state.restores}

def compare(state: ModelState) -> dict[str, Any]:
    from optcheck.checks.restore import model_differences

    worst = 0.0
    for i, restored in enumerate(state.restored, 1):
        rows = model_differences(state.exported, restored, example_input=state.x, atol=OUTPUT_ATOL)
        if rows:
            which = f"restore {i} of {len(state.restored)}: " if len(state.restored) > 1 else ""
            raise PhaseFailure(which + "; ".join(f"{aspect}: {what}" for aspect, what in rows))
        worst = max(worst, _max_diff(state.outputs["export"], _eval_output(restored, state.x)))
    return {"max_abs_diff": worst, "state_dict_tensors": len(state.restored[0].state_dict()),
            "restores": len(state.restored)}

def prune(state: ModelState) -> dict[str, Any]:
    """mtp.prune on a fresh model and random data; its subnet meets the target and round-trips."""
    import torch
    import torch.nn.functional as F

    from optcheck.checks.restore import modelopt_modes, model_differences
    from optcheck.core.limits import parse_percent
    from optcheck.build.measure import count_flops

    g = torch.Generator().manual_seed(state.seed + 1)
    s, k = state.case.input_size, state.case.num_classes
    batches = [(torch.randn(state.batch, 3, s, s, generator=g), torch.randint(0, k, (state.batch,), generator=g))
               for _ in range(2)]
    score_x = torch.cat([b[0] for b in batches])
    model = state.make_model()
    reference = _eval_output(model, score_x)

    # an untrained model has no accuracy to lose: the score is how close a subnet's logits stay to
    # the full model's (self-distillation), so smaller subnets score lower, as on a trained model
    def score(m) -> float:
        with torch.no_grad():
            return -float(F.mse_loss(m(score_x), reference).item())

    dummy = state.x[:1]
    full = count_flops(model, dummy)
    config = search_space_config(state.case.channel_divisor, state.case.feature_divisor)
    scored = {"n": 0}

    def counted(m) -> float:
        scored["n"] += 1
        return score(m)

    with library_output():
        model, search = state.mtp.prune(
            model=model, mode=[("fastnas", config)], constraints={"flops": PRUNE_FLOPS}, dummy_input=dummy,
            config={"data_loader": batches, "score_func": counted, "max_iter_data_loader": 2,
                    "checkpoint": str(state.workdir / f"{state.case.slug}_search.pth"), "verbose": False})
    got = count_flops(model, dummy)
    target = parse_percent(PRUNE_FLOPS) * full
    if got > target:  # exact: optcheck's count is Model Optimizer's (steps/fastnas.check_constraint)
        satisfied = (search.get("best") or {}).get("is_satisfied") if isinstance(search, dict) else None
        raise PhaseFailure(f"mtp.prune returned a subnet of {got:,} FLOPs ({got / full:.1%} of {full:,}), over its "
                           f"target {PRUNE_FLOPS} (Model Optimizer's best is_satisfied = {satisfied}): it returns "
                           "its binary search's last candidate when none it tried met the target")
    _check_logits(_eval_output(model, state.x), state.case, state.batch, "the pruned subnet's forward")
    path = state.workdir / f"{state.case.slug}_pruned.pth"
    with library_output():
        state.mto.save(model, path)
        restored = state.mto.restore(state.make_model(), path)
    rows = model_differences(model, restored, example_input=state.x, atol=OUTPUT_ATOL)
    if rows:
        raise PhaseFailure("the pruned subnet restored by mto.restore differs: "
                           + "; ".join(f"{aspect}: {what}" for aspect, what in rows))
    return {"flops": got, "full_flops": full, "ratio": round(got / full, 4), "subnets_scored": scored["n"],
            "bytes": path.stat().st_size, "modes": modelopt_modes(model)}


# phase name -> function, in order (``recipes.zoo_phases.PHASES`` then the optional ``prune``)
TABLE = {"build": build, "convert": convert, "sample": sample, "export": export, "save": save, "restore": restore,
         "compare": compare, "prune": prune}
