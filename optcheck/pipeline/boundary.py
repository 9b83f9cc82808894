"""The pipeline's error boundary: anything a build raises becomes one ``StepError`` that names the
recipe, the step and a fix; optcheck's own errors pass through with the recipe's path filled in."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from optcheck.core.errors import EvaluationError, OptcheckError, RecipeError, StepError, summarize_exception


@contextlib.contextmanager
def boundary(path: str, where: str, fix: str, workdir: Path | None = None) -> Iterator[None]:
    """Turn anything but optcheck's own errors raised inside into one ``StepError`` naming ``path``
    (the recipe) and ``where`` (what was running); ``fix`` unless the machine is the cause."""
    try:
        yield
    except RecipeError as exc:
        if exc.path in ("<recipe>", "", None):
            exc.path = path
        raise
    except EvaluationError as exc:  # a meaningless number refused: say in which recipe and stage
        raise StepError(path, where, f"{type(exc).__name__}: {exc}",
                        "see the cause: the data and the model disagree") from exc
    except (OptcheckError, KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        cause, origin = summarize_exception(exc)
        raise StepError(path, where, cause, fix_for(exc, fix, workdir), origin) from exc


def fix_for(exc: BaseException, fix: str, workdir: Path | None = None) -> str:
    """A more specific fix for failures whose cause is the machine, not the recipe."""
    import errno

    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = workdir or "the working directory"
        return (f"the disk is full: free space where optcheck writes ({where}, pytest's --basetemp, and the "
                f"cache dir); models already built stay in the cache")
    if isinstance(exc, MemoryError):
        return "out of memory: lower data.batch_size / data.eval_batch_size, or use a smaller model"
    return fix
