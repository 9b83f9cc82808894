"""Field rules every recipe file shares (pipeline and zoo recipes alike). No pydantic, no torch:
the plugin checks ``--optcheck-seed`` with them at configure time."""

from __future__ import annotations

import re

# scikit-learn's random_state takes [0, 2**32 - 1] and the val split uses seed + 1
SEED_MAX = 2**32 - 2
# file-safe: a recipe's name becomes part of folder names (working files, cache entries, reports, ledger tables)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
NAME_MAX = 100


def file_safe(value: str, limit: int = NAME_MAX) -> bool:
    return bool(NAME.match(value)) and len(value) <= limit


def check_recipe_name(value: str) -> str:
    """A recipe's ``name`` (without one, the file's name): file-safe, or a ``ValueError`` with a
    file-safe suggestion."""
    if file_safe(value):
        return value
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", value).strip("-.")[:NAME_MAX] or "recipe"
    raise ValueError(f"name {value!r} is not file-safe (it names folders, cache entries and ledger tables; "
                     f"without a name key it is the file's name); e.g. name = {safe!r}, or rename the file")
