"""A recipe's ``[properties]`` table: each property run over its FastNAS step's search space."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from optcheck.checks.properties import PropertyRun
from optcheck.checks.properties import export_matches_converted
from optcheck.checks.search_space import fastnas_search_space
from optcheck.checks.properties import flops_match
from optcheck.checks.properties import flops_monotone
from optcheck.checks.properties import restore_exact
from optcheck.checks.properties import run_property


# -- a recipe's [properties] table ------------------------------------------------------------------

def for_recipe(name: str, run, database_dir: str | Path | None = None) -> PropertyRun:
    """Run the property ``name`` of a recipe's ``[properties]`` table over the search space of its
    first FastNAS step (the step's divisors), on the recipe's model as ``[model]`` builds it (untrained:
    these are properties of the architecture and of Model Optimizer's save / restore / export), with a
    random input of the data's shape seeded by the recipe's seed. Hypothesis is seeded by it too, so a
    run repeats; ``database_dir`` keeps a failing subnet to try first next time."""
    import datetime
    import functools

    ctx, cfg, step = run.ctx, run.recipe.properties, run.recipe.step("fastnas")
    make_model = ctx.make_model
    checks = {"restore_exact": functools.partial(restore_exact, make_model=make_model),
              "export_matches_converted": export_matches_converted, "flops_match": flops_match,
              "flops_monotone": flops_monotone}
    example = torch.randn(cfg.batch_size, *ctx.data.input_shape,
                          generator=torch.Generator().manual_seed(run.seed)).to(ctx.device)
    deadline = None if cfg.deadline_ms is None else datetime.timedelta(milliseconds=cfg.deadline_ms)

    def converted() -> nn.Module:
        return fastnas_search_space(make_model(), channel_divisor=step.channel_divisor,
                                    feature_divisor=step.feature_divisor)

    return run_property(checks[name], converted, example_input=example, max_examples=cfg.examples,
                        deadline=deadline, database_dir=database_dir, seed=run.seed)


def verdict_material(name: str, run) -> dict[str, Any]:
    """What a property's verdict depends on: the property, the [properties] table, the FastNAS step, the
    model and data (through the baseline's cache key: model source, data, versions, numerics), the
    code that draws and checks (this module, the strategies, the FLOPs count) and Hypothesis's version."""
    from importlib.metadata import version

    from optcheck.core.hashing import code_digest

    code = code_digest("checks/properties.py", "checks/search_space.py", "checks/strategies.py",
                       "build/measure.py", "core/compat.py", "steps/fastnas.py", "budgets/properties.py")
    baseline = run.plan[0].name
    return {"property": name, "properties": run.recipe.properties.model_dump(mode="json"),
            "step": run.recipe.step("fastnas").model_dump(mode="json"), "baseline": run.keys[baseline]["key"],
            "code": code, "hypothesis": version("hypothesis"), "format": 1}
