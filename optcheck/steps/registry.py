"""The step registry: every compression step kind, and a recipe's plan of stages.

A recipe is an ordered list of steps. The trained baseline is stage 0 (built from ``[model]`` and
``[train]``); each ``[[steps]]`` table consumes the previous stage's model and produces a named stage
(its kind's default name, or ``name = "..."``). Each kind lives in one module of this package and
declares a ``StepKind``: its schema, how it builds, how its checkpoint is loaded, what its cache key
adds, and what it checks before anything trains. The pipeline, cache keys, ledger, items, reports and
plot are written over "stages in order" and never name a kind. Adding a kind = one module here, one
line in ``_MODULES``, and its tests (Model Optimizer's mode registry is the model: a descriptor per
mode, registered once).

Nothing here imports torch: the kinds import it inside their functions.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any
from optcheck.steps.base import StepKind

# the modules that define kinds; their order is the order kinds are listed in messages
_MODULES = ("baseline", "fastnas", "torch_pruning", "finetune", "quantize", "sparsify", "custom")


# kinds a recipe may name that this install cannot run: the message says what is missing
UNAVAILABLE = {
    "gradnas": "GradNAS was removed from Model Optimizer in 0.45 (mtp.prune modes now: fastnas, "
               "mcore_minitron); use kind = 'fastnas'",
    "minitron": "Minitron (mode 'mcore_minitron') prunes Megatron-Core LLMs: it needs megatron-core and a "
                "CUDA GPU, and works on Megatron/NeMo models, not torchvision CNNs; use kind = 'fastnas'",
    "mcore_minitron": "see kind = 'minitron': it needs megatron-core and a CUDA GPU; use kind = 'fastnas'",
}


ENTRY_POINTS = "optcheck.steps"  # a package registers its own kinds: [project.entry-points."optcheck.steps"]


def _load() -> dict[str, StepKind]:
    """The built-in kinds, then every kind an installed package registers in the ``optcheck.steps``
    entry-point group (``name = "package.module:KIND"``, a ``StepKind``, or a module that defines
    ``KIND``), as pytest finds plugins in ``pytest11``."""
    from importlib.metadata import entry_points

    out: dict[str, StepKind] = {}
    for name in _MODULES:
        kind = importlib.import_module(f"optcheck.steps.{name}").KIND
        if kind.kind in out:
            raise RuntimeError(f"step kind {kind.kind!r} registered twice")
        out[kind.kind] = kind
    for ep in sorted(entry_points(group=ENTRY_POINTS), key=lambda e: e.name):
        where = f"entry point {ep.name} = {ep.value!r} (group {ENTRY_POINTS!r}, package {_dist(ep)})"
        try:
            loaded = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin is named, not a crash without context
            raise RuntimeError(f"{where} does not import: {type(exc).__name__}: {exc}; fix or uninstall that "
                               "package") from exc
        kind = getattr(loaded, "KIND", loaded)
        if not isinstance(kind, StepKind) or kind.schema is None:
            raise RuntimeError(f"{where} is a {type(kind).__name__}, not a StepKind with a schema: point it at "
                               "your step kind (see optcheck.steps.base.StepKind and docs/own-pipeline.md)")
        if kind.kind in out or kind.kind in UNAVAILABLE:
            raise RuntimeError(f"{where} registers step kind {kind.kind!r}, which optcheck or another package "
                               "already has: give the kind another name")
        out[kind.kind] = kind
    return out


def _dist(ep) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else "unknown"


KINDS: dict[str, StepKind] = _load()
ROOT = KINDS["baseline"]  # stage 0: the trained model every other stage descends from


def schemas() -> tuple[type, ...]:
    """The ``[[steps]]`` table schemas, one per listable kind."""
    return tuple(k.schema for k in KINDS.values() if k.schema is not None)


def listable() -> list[str]:
    return [k.kind for k in KINDS.values() if k.schema is not None]


@dataclass(frozen=True)
class Stage:
    """One stage of a recipe's plan: what it is called, which step builds it, from which stage."""

    name: str
    kind: StepKind
    index: int | None  # position in the recipe's ``steps``; None for the baseline
    step: Any  # the step's validated table; None for the baseline
    parent: str | None

    @property
    def checkpoint(self) -> str:
        """The file (in ``Artifact.files``) that restores this stage."""
        return self.kind.checkpoint_for(self.step)

    @property
    def searched(self) -> bool:
        """Whether this stage's architecture comes from a search (its FLOPs / params are not exact)."""
        return self.kind.searched_for(self.step)

    @property
    def label(self) -> str:
        """What builds it, as a recipe author reads it: "steps[0] (kind = 'fastnas')"."""
        if self.index is None:
            return "the baseline's training ([model], [train])"
        return f"steps[{self.index}] (kind = {self.kind.kind!r})"


def plan(recipe) -> list[Stage]:
    """The stages ``recipe`` produces, in order: the baseline, then one per step."""
    stages = [Stage(ROOT.stage, ROOT, None, None, None)]
    for index, step in enumerate(recipe.steps):
        kind = KINDS[step.kind]
        stages.append(Stage(step.name or kind.stage, kind, index, step, stages[-1].name))
    return stages


def searched_upstream(stages: list[Stage], name: str) -> bool:
    """Whether ``name`` or a stage it descends from was searched (its architecture is not exact)."""
    by_name = {s.name: s for s in stages}
    stage: Stage | None = by_name[name]
    while stage is not None:
        if stage.searched:
            return True
        stage = by_name.get(stage.parent) if stage.parent else None
    return False
