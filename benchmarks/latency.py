"""Latency ratio of every compressed stage of the shipped digits recipes against their baseline.

    .venv/bin/python benchmarks/latency.py [--batch 1,32] [--runtimes torch,onnxruntime] [--rounds 200]
                                           [--threads 1] [--recipes recipes/digits_*.toml] [--cache .optcheck/cache]

Builds (or takes from the artifact cache; the default is the plugin's own, so a prior
`pytest --optcheck` run makes this cheap) each recipe's stages at the seed and thread count the
README's main command uses serially (2 threads on 2 cores), then measures each stage against the
baseline with ``optcheck.checks.latency.measure``: interleaved rounds after warm-up, the median of the
per-round ratios and its 95% interval. Prints one Markdown row per (recipe, stage, runtime, batch):
candidate and baseline medians, ratio [interval], speed-up. Nothing else may run on the machine.
"""

from __future__ import annotations

import argparse
import glob
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", default="1,32")
    ap.add_argument("--runtimes", default="torch,onnxruntime")
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--build-threads", type=int, default=2)
    ap.add_argument("--recipes", default=str(ROOT / "recipes" / "digits_*.toml"))
    ap.add_argument("--cache", default=str(ROOT / ".optcheck" / "cache"))
    args = ap.parse_args()

    from optcheck.pipeline.cache import ArtifactCache
    from optcheck.checks.latency import Settings, measure
    from optcheck.checks.onnx_parity import ExportError
    from optcheck.pipeline.run import RecipeRun
    from optcheck.core.quiet import library_noise
    from optcheck.recipes.loader import load_recipe

    print(f"| recipe | stage | runtime | batch | candidate | baseline | ratio [95% interval] | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for path in sorted(glob.glob(args.recipes)):
        recipe = load_recipe(Path(path))
        run = RecipeRun(recipe, device="cpu", threads=args.build_threads, seed=recipe.seed or 0,
                        cache=ArtifactCache(Path(args.cache)))
        with library_noise():
            base = run.artifact(run.root_stage()).model
            example = next(iter(run.ctx.test_loader))[0]
            for stage in [s.name for s in run.plan[1:]]:
                model = run.artifact(stage).model
                for runtime in args.runtimes.split(","):
                    for batch in map(int, args.batch.split(",")):
                        settings = Settings(runtime=runtime, batch_size=batch, threads=args.threads,
                                            rounds=args.rounds, warmup_rounds=args.warmup)
                        try:
                            got = measure(base, model, example, settings, workdir=Path(tempfile.mkdtemp()))
                        except ExportError as exc:
                            print(f"| {recipe.name} | {stage} | {runtime} | {batch} | export failed: {exc} ||||")
                            continue
                        print(f"| {recipe.name} | {stage} | {runtime} | {batch} | "
                              f"{got.candidate_median * 1e3:.3f} ms | {got.reference_median * 1e3:.3f} ms | "
                              f"{got.ratio:.3f} [{got.low:.3f}, {got.high:.3f}] | {got.speedup:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
