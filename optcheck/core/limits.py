"""Budget limits: an absolute number, or ``"N%"`` of a reference value."""

from __future__ import annotations

import re

_PERCENT = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*%\s*$")


def parse_percent(limit: object) -> float | None:
    """``"60%"`` -> 0.6; ``None`` when ``limit`` is not a percentage string.

    Raises ``ValueError`` for a malformed string or a percentage outside (0, 100].
    """
    if not isinstance(limit, str):
        return None
    match = _PERCENT.match(limit)
    if not match:
        raise ValueError(f"{limit!r} is neither a number nor a percentage like '60%'")
    value = float(match.group(1))
    if not 0 < value <= 100:
        raise ValueError(f"{limit!r} must be a percentage in (0%, 100%]")
    return value / 100


def check_limit(limit: object) -> object:
    """Validate a limit as written in a recipe or passed to an assertion; returns it unchanged."""
    if isinstance(limit, bool):
        raise ValueError(f"{limit!r} is a boolean, not a limit")
    if isinstance(limit, (int, float)):
        if not limit > 0:
            raise ValueError(f"{limit!r} must be a positive number")
        return limit
    if isinstance(limit, str):
        parse_percent(limit)
        return limit
    raise ValueError(f"{limit!r} must be a positive number or a percentage like '60%'")


def resolve_limit(limit: object, reference: float | None, what: str) -> float:
    """Turn a limit into an absolute number; a percentage needs ``reference``."""
    check_limit(limit)
    fraction = parse_percent(limit)
    if fraction is None:
        return float(limit)  # type: ignore[arg-type]
    if reference is None:
        raise ValueError(
            f"{what} limit {limit!r} is relative: pass reference=<the model it is a percentage of>"
        )
    return fraction * reference


def describe(limit: object) -> str:
    return limit if isinstance(limit, str) else f"{float(limit):.6g}"  # type: ignore[arg-type]


def human(n: float | int | None, unit: str = "") -> str:
    """3 significant digits with k/M/G: 40_567_808 -> '40.6M'."""
    if n is None:
        return "-"
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.3g}{suffix}{unit}"
    return f"{n:.3g}{unit}" if isinstance(n, float) else f"{n}{unit}"
