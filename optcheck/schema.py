"""The base of every recipe table's schema (no torch here: recipes are validated without it)."""

from __future__ import annotations

from typing import Union

from pydantic import BaseModel, ConfigDict, Field

Limit = Union[float, str]


class Strict(BaseModel):
    # strict: no coercion between strings, numbers and booleans (`batch_size = "32"`, `restore_roundtrip
    # = "off"` and `accuracy_drop_under = "0.2"` are errors, not silently converted values)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class StepConfig(Strict):
    """Fields every ``[[steps]]`` table has besides its own: ``kind`` (in each subclass, a Literal)
    and ``name``, the stage it produces (default: its kind's stage name)."""

    name: str | None = Field(None, description="the stage this step produces (default from its kind); "
                             "needed to have two steps of one kind; names [budgets.<name>] and fixtures")
