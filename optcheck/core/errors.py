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


class StepError(OptcheckError):
    """A pipeline step (or the check before anything trains) raised: one short message naming the
    recipe, the step, the cause in one sentence, where in the user's code it happened, and the fix.

    The original exception stays chained (``__cause__``); ``pytest --fulltrace`` prints it.
    """

    def __init__(self, path: str, where: str, cause: str, fix: str, origin: str = ""):
        self.path, self.where, self.cause, self.fix, self.origin = path, where, cause, fix, origin
        super().__init__(str(self))

    def __str__(self) -> str:
        lines = [f"{self.path}: {self.where} failed", f"  cause: {self.cause}"]
        if self.origin:
            lines.append(f"  raised at: {self.origin}")
        lines.append(f"  fix: {self.fix}")
        lines.append("  (pytest --fulltrace shows the full traceback)")
        return "\n".join(lines)


class EvaluationError(OptcheckError):
    """An evaluation that would produce a meaningless number: an empty split, labels the model
    cannot predict."""


def summarize_exception(exc: BaseException, limit: int = 300) -> tuple[str, str]:
    """``(cause, origin)`` of an exception in one line each: the type and the first line of its
    message, and where it was raised — the innermost frame in the user's own code when there is one
    (a model or dataset factory), else the innermost frame at all, as ``file:line in function``."""
    import os
    import sys
    import traceback

    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if len(first) > limit:
        first = first[: limit - 3] + "..."
    cause = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    frames = traceback.extract_tb(exc.__traceback__)
    package = os.path.dirname(os.path.abspath(__file__))
    libs = {os.path.abspath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}

    def is_user(filename: str) -> bool:
        path = os.path.abspath(filename)
        return not (path.startswith(package + os.sep) or "site-packages" in path or "dist-packages" in path
                    or any(path.startswith(p + os.sep) for p in libs) or filename.startswith("<"))

    user = [f for f in frames if is_user(f.filename)]
    if user:
        frame = user[-1]
        return cause, f"{frame.filename}:{frame.lineno} in {frame.name}"
    if not frames:
        return cause, ""
    frame = frames[-1]  # inside a library: name the library, not its file (no traceback)
    parts = os.path.abspath(frame.filename).split(os.sep)
    lib = next((parts[i + 1] for i, p in enumerate(parts[:-1]) if p in ("site-packages", "dist-packages")),
               os.path.basename(frame.filename))
    return cause, f"inside {lib} ({os.path.basename(frame.filename)}:{frame.lineno} in {frame.name})"
