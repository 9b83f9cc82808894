"""The base of every recipe table's schema (no torch here: recipes are validated without it)."""

from __future__ import annotations

from typing import Any, Union

from pydantic import BaseModel, ConfigDict, field_validator

from optcheck.core.limits import check_limit

Limit = Union[float, str]  # an absolute number, or "N%" of a reference (``core.limits``)


class Strict(BaseModel):
    # strict: no coercion between strings, numbers and booleans (`batch_size = "32"`, `restore_roundtrip
    # = "off"` and `accuracy_drop_under = "0.2"` are errors, not silently converted values)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _limit(cls: type, value: Any) -> Any:
    return value if value is None else check_limit(value)


def limit_fields(*names: str):
    """The validator of ``Limit`` fields, for a schema class body: ``_limits = limit_fields("flops")``.
    It runs before the union is tried, so a bad limit is one problem with one message."""
    return field_validator(*names, mode="before")(classmethod(_limit))
