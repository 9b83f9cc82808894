"""What every step kind is made of: ``StepKind`` (the descriptor a kind module declares) and
``StepConfig`` (the base of its ``[[steps]]`` table). No torch here."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import Field, field_validator
from optcheck.core.schema import Strict


class StepConfig(Strict):
    """Fields every ``[[steps]]`` table has besides its own: ``kind`` (in each subclass, a Literal)
    and ``name``, the stage it produces (default: its kind's stage name)."""

    name: str | None = Field(None, description="the stage this step produces (default from its kind); "
                             "needed to have two steps of one kind; names [budgets.<name>] and fixtures")


@dataclass(frozen=True)
class StepKind:
    """One kind of step, as Model Optimizer's mode descriptors describe a mode (``steps.api`` has the
    objects its functions receive).

    build(run: StepRun, parent: Artifact | None) -> Artifact
        ``parent`` is the previous stage's artifact, its model restored afresh from its checkpoint (a
        build may change it in place); ``run`` has the context, the step's table, ``run.baseline()``
        and any earlier stage (``run.artifact(name)``), and the shared chores (``seed``,
        ``save_modelopt``, ``finish``, ``fail``).
    load(ctx, files, step) -> nn.Module
        the model of a cache entry / checkpoint, restored into a freshly built model (one with the
        architecture of an ``architecture`` kind upstream: ``pipeline.checkpoints.fresh_model``).
    checkpoint, searched
        a name / a flag, or a function of the step's table (a ``custom`` step declares both).
    key(recipe, step, keys, root) -> dict
        what the cache key adds besides the step's own table and its parent's key (``keys``: the
        keys computed so far, by stage name; ``root``: the baseline's stage name).
    preflight(check: StepCheck) -> None
        checks before anything trains (raise ``RecipeError`` naming ``check.field(...)``).
    """

    kind: str
    stage: str  # the stage name it produces unless the step sets ``name``
    build: Callable[..., Any]
    schema: type | None = None  # its [[steps]] table; None: not a step a recipe lists (the baseline)
    load: Callable[..., Any] | None = None  # None: ``mto.restore`` of the ``checkpoint`` file
    checkpoint: str | Callable[[Any], str] = "modelopt"  # the file (in ``Artifact.files``) that restores the stage
    searched: bool | Callable[[Any], bool] = False  # the architecture comes from a search: FLOPs / params not exact
    # its checkpoint defines an architecture a freshly built model lacks: later stages carry the file and
    # restore into ``load(ctx, files)`` instead of a fresh model (``stages.fresh_model``)
    architecture: bool = False
    key: Callable[..., dict] | None = None
    preflight: Callable[..., None] | None = None
    summary: str = ""  # one line for messages and docs

    def checkpoint_for(self, step: Any) -> str:
        return self.checkpoint(step) if callable(self.checkpoint) else self.checkpoint

    def searched_for(self, step: Any) -> bool:
        return bool(self.searched(step) if callable(self.searched) else self.searched)


FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def _factory(cls: type, value: Any) -> Any:
    if value is None or (isinstance(value, str) and FACTORY.match(value)):
        return value
    raise ValueError(f"{value!r} is not 'package.module:function'")


def factory_field(*names: str):
    """The validator of a step field that names the team's code: ``_f = factory_field("function")``."""
    return field_validator(*names)(classmethod(_factory))
