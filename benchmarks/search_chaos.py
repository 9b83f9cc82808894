"""Where does the FastNAS subnet's spread across machines come from: the search, or the baseline?

    .venv/bin/python benchmarks/search_chaos.py recipes/digits_resnet20_fastnas.toml

Takes ONE trained baseline (the recipe's, from .optcheck/cache or built once), then runs only the
FastNAS search on those exact weights under each numerics path this machine can reach (default
kernels / ATEN_CPU_CAPABILITY=avx2 + ONEDNN_MAX_CPU_ISA=AVX2, 1 / 2 threads), once with the score
optcheck used before (val accuracy: steps of 1/n, ties) and once with the current one (mean
log-probability of the true class), each in its own subprocess. Prints the subnet each run picked.
With identical weights, any spread is the search's own sensitivity to last-bit differences.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KERNELS = {"default": {}, "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}


def child(recipe_path: str, state: str, score: str, threads: int) -> None:
    import torch

    from optcheck.core.numerics import fingerprint
    from optcheck.pipeline.run import RecipeRun
    from optcheck.recipes.loader import load_recipe
    from optcheck.build.artifacts import Artifact
    from optcheck.steps.fastnas import build as fastnas_build

    recipe = load_recipe(recipe_path)
    with tempfile.TemporaryDirectory() as tmp:
        run = RecipeRun(recipe, device="cpu", seed=recipe.seed or 0, threads=threads, workdir=lambda: Path(tmp))
        ctx = run.ctx
        model = ctx.make_model()
        model.load_state_dict(torch.load(state, weights_only=True))
        base = Artifact("baseline", model, ctx.measure(model, None, 0.0))
        step = recipe.step("fastnas").model_copy(update={"score": score})
        pruned = fastnas_build(ctx, base, step, lambda _stage: base)
        print(json.dumps({"flops": pruned.metrics.flops, "params": pruned.metrics.params,
                          "test_acc": pruned.metrics.test_acc, "fp": fingerprint()}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("recipe")
    p.add_argument("--child", nargs=3, metavar=("STATE", "SCORE", "THREADS"))
    a = p.parse_args()
    if a.child:
        child(a.recipe, a.child[0], a.child[1], int(a.child[2]))
        return
    import torch

    from optcheck.pipeline.cache import ArtifactCache
    from optcheck.pipeline.run import RecipeRun
    from optcheck.recipes.loader import load_recipe

    recipe = load_recipe(a.recipe)
    run = RecipeRun(recipe, device="cpu", seed=recipe.seed or 0, threads=1,
                    cache=ArtifactCache(ROOT / ".optcheck" / "cache"))
    state = Path(tempfile.mkdtemp()) / "baseline.pth"
    torch.save(run.artifact("baseline").model.state_dict(), state)
    rows = []
    for score in ("accuracy", "log_prob"):
        for kernels, env in KERNELS.items():
            for threads in (1, 2):
                e = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
                proc = subprocess.run([sys.executable, __file__, a.recipe, "--child", str(state), score, str(threads)],
                                      env={**e, **env}, cwd=ROOT, capture_output=True, text=True)
                line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
                if not line:
                    print(proc.stderr[-3000:])
                    continue
                r = json.loads(line[-1])
                rows.append((score, kernels, threads, r))
                print(f"score={score:<9} kernels={kernels:<8} threads={threads}  subnet {r['flops']:,} FLOPs, "
                      f"{r['params']:,} params, pruned test acc {r['test_acc'] * 100:.2f}%", flush=True)
    for score in ("accuracy", "log_prob"):
        subnets = {(r["flops"], r["params"]) for s, _, _, r in rows if s == score}
        print(f"{score}: {len(subnets)} distinct subnet(s) over {sum(1 for s, *_ in rows if s == score)} numerics paths")


if __name__ == "__main__":
    main()
