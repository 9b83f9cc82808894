"""Errors that teach: each names the file, the field, what is allowed and the fix."""

from __future__ import annotations

from dataclasses import dataclass, field


class OptcheckError(Exception):
    """Base class for every error optcheck raises on purpose."""


@dataclass
class Problem:
    """One thing wrong with a recipe."""

    field: str
    message: str
    allowed: str = ""
    fix: str = ""

    def render(self) -> str:
        lines = [f"  field '{self.field}': {self.message}"]
        if self.allowed:
            lines.append(f"    allowed: {self.allowed}")
        if self.fix:
            lines.append(f"    fix: {self.fix}")
        return "\n".join(lines)


@dataclass
class RecipeError(OptcheckError):
    """A recipe that cannot run as written."""

    path: str
    problems: list[Problem] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        n = len(self.problems)
        head = f"{self.path}: invalid optcheck recipe ({n} problem{'s' if n != 1 else ''})"
        return "\n".join([head, *(p.render() for p in self.problems)])


class DatasetMissing(OptcheckError):
    """A dataset's files are not on disk. Recipe items that need it are skipped, not failed."""
