"""pydantic's validation errors turned into ``Problem``s (field, message, allowed, fix): the parts
both recipe loaders share. A model-level check writes its message as ``"@field: message || fix: fix"``
so that it can name the field it is about."""

from __future__ import annotations

import difflib
from typing import Any

from optcheck.core.errors import Problem


def unknown_key(field: str, key: str, owner: Any) -> Problem:
    """``key`` is not a field of the schema ``owner``: list the allowed keys and the nearest one."""
    allowed = sorted(k for k in owner.model_fields if k != "path") if owner is not None else []
    near = difflib.get_close_matches(key, allowed, n=1)
    return Problem(field, "unknown key", ", ".join(allowed), f"did you mean '{near[0]}'?" if near else "remove it")


def missing(field: str, key: str, what: str = "the recipe") -> Problem:
    return Problem(field, "missing required field", fix=f"add '{key}' to {what}")


def split_message(field: str, message: str) -> tuple[str, str, str]:
    """``(field, message, fix)`` of a validator's message: "Value error, " dropped, an ``@field: ``
    prefix names the field (below ``field`` unless that is the whole recipe), `` || fix: `` the fix."""
    message = message.removeprefix("Value error, ")
    if message.startswith("@"):
        sub, _, message = message[1:].partition(": ")
        field = f"{field}.{sub}" if field not in ("<recipe>", "") else sub
    message, _, fix = message.partition(" || fix: ")
    return field, message, fix


def dedupe(problems: list[Problem]) -> list[Problem]:
    """One problem per field: a union reports each member that failed (keep the first)."""
    seen, out = set(), []
    for p in problems:
        if p.field not in seen:
            seen.add(p.field)
            out.append(p)
    return out
