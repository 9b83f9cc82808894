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
    from optcheck.core.hashing import digest

    stages = []
    for run in runs:
        keys = run.keys
        stages.append({stage: material["key"] for stage, material in sorted(keys.items())})
    recipe = runs[0].recipe
    material = {"budget": budget, "budgets": recipe.budgets.model_dump(mode="json"),
                "stages": stages, "seeds": [run.seed for run in runs], "judge": judge_id(), "format": 1}
    name = budget if isinstance(budget, str) else budget[1]
    from optcheck.recipes.budget_schema import LATENCY_BUDGETS

    if name in LATENCY_BUDGETS:  # a time ratio is a property of the machine too, and of how it was measured
        import os

        from optcheck.core.numerics import cpu_isa, cpu_model

        material["latency"] = {**recipe.latency.model_dump(mode="json"), "cpu": cpu_model(), "isa": cpu_isa(),
                               "cpus": os.cpu_count()}
    return digest(material)


# optcheck's code that measures and judges (the stage keys already hold the code that builds)
JUDGE_CODE = ("checks/assertions.py", "checks/restore.py", "checks/failure.py", "checks/latency.py",
              "checks/team_metrics.py", "core/metric_stats.py", "build/metrics.py",
              "checks/onnx_parity.py", "core/limits.py", "core/stats.py", "budgets/judges.py", "budgets/verdicts.py")


def judge_id() -> str:
    """A hash of the code that measures and judges a budget."""
    from optcheck.core.hashing import code_digest

    return code_digest(*JUDGE_CODE)[:16]


def replay(store, key: str) -> dict[str, Any] | None:
    """The stored verdict: ``{"outcome": "passed" | "failed", "measured": {...}, "message": str}``."""
    from optcheck.pipeline.store import MISSING

    entry = store.read(STAGE, key)
    return None if entry is MISSING else entry.meta["verdict"]


def store(store, key: str, outcome: str, measured: dict[str, Any], message: str = "") -> None:
    """Keep a judged verdict (best effort: a full disk only costs a re-judgement next time; one judged by
    another process meanwhile is kept)."""
    from optcheck.core.jsonsafe import jsonsafe

    verdict = jsonsafe({"outcome": outcome, "measured": measured, "message": message})
    store.put_once(STAGE, key, {"verdict": verdict, "recipe": store.owner})
