"""The zoo's phases, in order (plain constants: the report and ``python -m optcheck.merge`` read
them without pydantic or torch)."""

from __future__ import annotations

from collections.abc import Iterable

PHASES: tuple[str, ...] = ("build", "convert", "sample", "export", "save", "restore", "compare")
OPTIONAL_PHASES: tuple[str, ...] = ("prune", "recipe_path")
ALL_PHASES: tuple[str, ...] = PHASES + OPTIONAL_PHASES


# -- running a model ------------------------------------------------------------------------------------

def check_phases(phases: Iterable[str]) -> tuple[str, ...]:
    """The phases to run, in their fixed order. The phases of ``PHASES`` asked for must be a prefix
    of it (each needs the one before); the optional ones run after them."""
    asked = list(dict.fromkeys(phases))
    unknown = [p for p in asked if p not in ALL_PHASES]
    if unknown:
        raise ValueError(f"unknown phase {unknown[0]!r}: phases are {', '.join(ALL_PHASES)}")
    core = [p for p in PHASES if p in asked]
    if core != list(PHASES[: len(core)]) or not core:
        missing = next(p for p in PHASES if p not in asked)
        raise ValueError(f"phases {', '.join(core) or '(none)'}: each of {', '.join(PHASES)} needs the ones "
                         f"before it, and 'build' is always needed; add {missing!r}")
    return tuple(core) + tuple(p for p in OPTIONAL_PHASES if p in asked)
