"""``package.module:function`` factories named in recipes: imported with errors that teach."""

from __future__ import annotations

import importlib
from typing import Any


from optcheck.core.errors import Problem, RecipeError


def load_factory(spec: str, field: str, path: str) -> Any:
    """Import ``package.module:function``; a ``RecipeError`` naming ``field`` if that fails."""
    module_name, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise RecipeError(path, [Problem(field, f"cannot import {spec!r}: {exc}",
                                         "'package.module:function' importable from the test session",
                                         "check the spelling, and that the module is on sys.path "
                                         "(installed, or under pytest's rootdir)")]) from None
