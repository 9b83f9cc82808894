"""Restore stage checkpoints in this environment and record their logits (run inside each side of an
upgrade comparison: ``python -m optcheck.upgrade.probe <jobs.json> <out folder>``).

Each job names a recipe, a stage, the stage's checkpoint files (written by either environment) and a
tag. The model is restored as the pipeline restores it (``checkpoints.load_model``: ``mto.restore`` for
a Model Optimizer stage) into a fresh model of the recipe, and its eval-mode logits on a fixed batch
are saved as ``<tag>.safetensors``. The batch is the recipe's first test images (``golden.fixed_inputs``),
or, when the job names an ``inputs`` file, the batch stored there, so that both environments feed the
same tensors even if a data library differs between them. One JSON line per job goes to stdout:
``{"tag", "ok": true}`` or ``{"tag", "error"}``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path


def run_jobs(jobs: list[dict], out: Path) -> None:
    from safetensors.torch import load_file, save_file

    from optcheck.core.quiet import library_noise
    from optcheck.pipeline.checkpoints import load_model
    from optcheck.pipeline.golden import fixed_inputs, logits
    from optcheck.pipeline.run import RecipeRun
    from optcheck.recipes.loader import load_recipe

    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, RecipeRun] = {}
    with tempfile.TemporaryDirectory(prefix="optcheck-probe-") as tmp:
        for job in jobs:
            try:
                recipe_path = job["recipe"]
                if recipe_path not in runs:
                    runs[recipe_path] = RecipeRun(load_recipe(Path(recipe_path)), device="cpu", threads=1,
                                                  workdir=lambda: Path(tempfile.mkdtemp(dir=tmp)))
                run = runs[recipe_path]
                if job.get("inputs") and Path(job["inputs"]).exists():
                    inputs = load_file(job["inputs"])["inputs"]
                else:
                    inputs = fixed_inputs(run.ctx)
                    if job.get("inputs"):
                        save_file({"inputs": inputs}, job["inputs"])
                files = {name: Path(path) for name, path in job["files"].items()}
                with library_noise():
                    model = load_model(run.ctx, run.stages[job["stage"]], files)
                    result = logits(model, inputs)
                save_file({"logits": result, "inputs": inputs}, str(out / f"{job['tag']}.safetensors"))
                line = {"tag": job["tag"], "ok": True}
            except Exception as exc:  # noqa: BLE001 - a checkpoint that does not restore is the finding
                line = {"tag": job["tag"], "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}"}
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    run_jobs(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
