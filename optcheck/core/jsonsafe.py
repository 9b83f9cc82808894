"""Values made JSON-safe: what cache manifests, reports and xdist messages may hold."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def jsonsafe(value: Any, *, finite: bool = False) -> Any:
    """``value`` with mappings as dicts of string keys, tuples as lists, NumPy / torch scalars as
    Python numbers (``.item()``), and anything else (paths, enums, objects) as its string. With
    ``finite``, a NaN or infinite float becomes its string too (strict JSON has no such number)."""
    if isinstance(value, Mapping):
        return {str(k): jsonsafe(v, finite=finite) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonsafe(v, finite=finite) for v in value]
    if isinstance(value, float):
        return value if not finite or math.isfinite(value) else str(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if hasattr(value, "item"):
        return jsonsafe(value.item(), finite=finite)
    return str(value)
