"""Budget verdicts kept in the artifact cache, so a warm session re-judges nothing it judged already.

A budget's verdict is a function of the artifacts it measures (each under a content key that holds the
recipe's settings, the data, the model source, torch / Model Optimizer / optcheck versions and the
numerics: ``keys.py``) and of the budget table itself. With every one of those unchanged, measuring
again can only give the same numbers, so the verdict is stored under a key made of all of them and
replayed: a pass passes, a failure fails with the same message. What the replay cannot know it does
not pretend to: anything else (an error, a skip) is never stored, and ``--optcheck-rebuild`` (entries
of earlier sessions do not count) or ``--optcheck-no-cache`` measure everything live.

This is what makes a warm session cheap: replayed verdicts need no model, so Model Optimizer is not
even imported (``stages.Artifact`` loads a cached model only when something asks for it).
"""

from __future__ import annotations

from typing import Any

STAGE = "verdicts"  # the cache's folder for them: entries/verdicts/<key>


def verdict_key(runs: list[Any], budget: str) -> str | None:
    """The key of ``budget``'s verdict over ``runs`` (the recipe's run, then its other seeds), or
    None when a stage it may read is not cacheable (then it is judged live)."""
    from .keys import digest

    stages = []
    for run in runs:
        keys = run.keys
        stages.append({stage: material["key"] for stage, material in sorted(keys.items())})
    recipe = runs[0].recipe
    material = {"budget": budget, "budgets": recipe.budgets.model_dump(mode="json"),
                "stages": stages, "seeds": [run.seed for run in runs], "judge": judge_id(), "format": 1}
    name = budget if isinstance(budget, str) else budget[1]
    from .recipe import LATENCY_BUDGETS

    if name in LATENCY_BUDGETS:  # a time ratio is a property of the machine too, and of how it was measured
        import os

        from .numerics import cpu_isa, cpu_model

        material["latency"] = {**recipe.latency.model_dump(mode="json"), "cpu": cpu_model(), "isa": cpu_isa(),
                               "cpus": os.cpu_count()}
    return digest(material)


JUDGE_MODULES = ("assertions", "budgets", "latency", "limits", "onnx_parity", "stats", "verdicts")


def judge_id() -> str:
    """A hash of the modules that measure and judge (the stage keys already hold those that build)."""
    import hashlib
    from pathlib import Path

    here = Path(__file__).parent
    h = hashlib.sha256()
    for name in JUDGE_MODULES:
        h.update((here / f"{name}.py").read_bytes())
    return h.hexdigest()[:16]


def replay(cache, key: str) -> dict[str, Any] | None:
    """The stored verdict: ``{"outcome": "passed" | "failed", "measured": {...}, "message": str}``."""
    entry = cache.load(STAGE, key)
    return None if entry is None else entry.meta["verdict"]


def store(run, key: str, outcome: str, measured: dict[str, Any], message: str = "") -> None:
    """Keep a judged verdict (best effort: a full disk only costs a re-judgement next time)."""
    from .cache import entry_meta_safe

    verdict = entry_meta_safe({"outcome": outcome, "measured": measured, "message": message})
    if run.cache.load(STAGE, key) is not None:  # judged by another process meanwhile: keep that one
        return
    run._store(STAGE, key, {}, {"verdict": verdict, "recipe": run.recipe.name})
