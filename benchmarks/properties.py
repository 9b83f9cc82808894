"""Subnets per second that each property of ``optcheck.properties`` checks under ``run_property``.

    .venv/bin/python benchmarks/properties.py [--models resnet20,small_cnn] [--examples 20] [--threads 1]
                                              [--divisor 8] [--input 3,16,16] [--batch 2] [--seed 0]

Converts each model to its FastNAS search space (channel and feature divisor ``--divisor``), runs
every property on ``--examples`` subnets that Hypothesis draws (seeded, no database), and prints one
Markdown row per (model, property): subnets checked, seconds, subnets per second, and the time to
build the search space. A failure is printed as the property's message and counted. Nothing else may
run on the machine (the header gives the load average before the run): with two threads on two cores,
one other busy process makes each forward pass 30x slower (OpenMP threads waiting on each other), so
one thread is the default.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet20,small_cnn")
    ap.add_argument("--examples", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--divisor", type=int, default=8)
    ap.add_argument("--input", default="3,16,16")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    from optcheck.build.models import SmallCNN, resnet20
    from optcheck.checks.properties import (PropertyFailure, export_matches_converted, flops_match, flops_monotone, restore_exact, run_property)
    from optcheck.checks.search_space import fastnas_search_space
    from optcheck.core.quiet import library_noise

    torch.set_num_threads(args.threads)
    shape = tuple(int(d) for d in args.input.split(","))
    factories = {"resnet20": lambda: resnet20(10, shape[0]), "small_cnn": lambda: SmallCNN(10, shape[0])}
    example = torch.randn(args.batch, *shape, generator=torch.Generator().manual_seed(args.seed))
    failures = 0
    print(f"input {list(example.shape)}, divisor {args.divisor}, {args.threads} thread(s), torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.2f}\n")
    print("| model | property | subnets | seconds | subnets/s | search space | convert s |")
    print("|---|---|---|---|---|---|---|")
    for model_name in args.models.split(","):
        make = factories[model_name]

        def seeded(make=make):
            torch.manual_seed(0)
            return make()

        checks = [functools.partial(restore_exact, make_model=seeded), export_matches_converted, flops_match,
                  flops_monotone]
        for check in checks:
            try:
                with library_noise():
                    run = run_property(check, lambda: fastnas_search_space(seeded(), channel_divisor=args.divisor,
                                                                           feature_divisor=args.divisor),
                                       example_input=example, max_examples=args.examples, seed=args.seed)
            except PropertyFailure as failure:
                failures += 1
                print(f"\n{failure}\n")
                run = failure.run
            print(f"| {model_name} | {run.name} | {run.examples} | {run.seconds:.2f} | "
                  f"{run.examples_per_second:.2f} | {run.search_space_size:,} | {run.setup_seconds:.2f} |")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
