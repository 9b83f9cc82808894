"""The ``recipe_path`` phase: optcheck's own recipe pipeline on a tiny synthetic recipe of the model."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any
from optcheck.recipes.zoo import ModelCase
from optcheck.zoo.common import PRUNE_FLOPS, library_output


# -- the recipe path ----------------------------------------------------------------------------------

RECIPE_BATCH = 8
RECIPE_TRAIN_SAMPLES = 16  # two training batches per epoch, baseline and fine-tuning


def recipe_for(case: ModelCase, seed: int = 0) -> dict[str, Any]:
    """A tiny synthetic recipe for ``case``: train a few batches, FastNAS, fine-tune a few batches;
    the restore round trip judged on the pruned and the fine-tuned stage. ``min_test_samples`` is
    lowered knowingly: nothing here judges accuracy."""
    k = case.num_classes
    samples = max(100, 10 * k)  # a stratified 10% val split holds every class
    return {
        "name": f"zoo-{case.slug}"[:100],
        "description": f"optcheck zoo: the recipe path of {case.name}",
        "seed": seed,
        "data": {"dataset": "synthetic", "batch_size": RECIPE_BATCH, "eval_batch_size": 64, "augment": [],
                 "train_limit": RECIPE_TRAIN_SAMPLES,
                 "options": {"samples": samples, "classes": k, "image_size": case.input_size}},
        "model": {"name": case.name, "options": dict(case.options)},
        "train": {"epochs": 1, "lr": 0.05, "warmup_epochs": 0},
        "steps": [{"kind": "fastnas", "flops": PRUNE_FLOPS, "channel_divisor": case.channel_divisor,
                   "feature_divisor": case.feature_divisor, "calib_batches": 1, "score_samples": k},
                  {"kind": "finetune", "epochs": 1, "lr_scale": 0.1}],
        "budgets": {"restore_roundtrip": True, "min_test_samples": math.ceil(0.2 * samples),
                    "pruned": {"restore_roundtrip": True}},
    }


def run_recipe_path(case: ModelCase, workdir: Path, seed: int = 0,
                    log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build every stage of ``recipe_for(case)`` with optcheck's ``RecipeRun`` (no cache) and judge
    ``restore_roundtrip`` on the pruned and the final stage. Raises what the pipeline raises."""
    from optcheck.budgets.judges import check_budget
    from optcheck.pipeline.run import RecipeRun
    from optcheck.recipes.loader import parse_recipe

    workdir.mkdir(parents=True, exist_ok=True)
    recipe = parse_recipe(recipe_for(case, seed), workdir / f"zoo-{case.slug}.toml")
    lines: list[str] = []
    run = RecipeRun(recipe, device="cpu", seed=seed, workdir=lambda: workdir, log=log or lines.append)
    out: dict[str, Any] = {}
    with library_output():
        run.preflight()
        for stage in run.available_stages():
            artifact = run.artifact(stage)
            out[f"{stage}_flops"] = artifact.metrics.flops
        check_budget(("pruned", "restore_roundtrip"), run)
        check_budget("restore_roundtrip", run)
    out["stages"] = run.available_stages()
    return out


def recipe_path(state) -> dict[str, Any]:
    """The ``recipe_path`` phase: ``run_recipe_path`` in the model's working folder."""
    return run_recipe_path(state.case, state.workdir / "recipe_path", state.seed)
