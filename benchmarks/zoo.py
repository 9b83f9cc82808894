"""The model-zoo compatibility matrix of FastNAS on this machine's Model Optimizer.

    .venv/bin/python benchmarks/zoo.py [--models resnet18,googlenet] [--phases core|all|PHASE,...]
                                       [--json PATH] [--seed N]

Runs the models of the shipped zoo recipe (``zoo/torchvision.toml``: twelve torchvision models and densenet121,
each at the smallest input size every phase works at: 32 px, inception_v3 75 px) through every phase
(``build`` ... ``compare``, then ``prune`` and ``recipe_path``) on CPU, one model after the other in
this process, each in its own temporary folder (removed after). Prints one progress line per phase
to stderr, then the Markdown matrix (with Model Optimizer 0.47's known failures marked), the seconds
per model and in total, and the gate's verdict: unexpected failures and known failures that passed.
Exits 1 when the gate fails. ``--json`` writes every result (``ModelResult.as_dict``) and verdict.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from optcheck.recipes.zoo_phases import ALL_PHASES, PHASES
from optcheck.zoo.results import classify, gate_failures, matrix_markdown, versions
from optcheck.zoo.stepper import run_model  # noqa: E402


def shipped_zoo():
    """The shipped zoo recipe and the known failures its ledger records (``zoo/optcheck-ledger.toml``)."""
    from optcheck.ledger.entries import load_ledger
    from optcheck.plugin.settings import known_recipe_names
    from optcheck.recipes.loader import load_any
    from optcheck.zoo.session import known_failure

    folder = ROOT / "zoo"
    recipe = load_any(folder / "torchvision.toml")
    ledger = load_ledger(folder / "optcheck-ledger.toml", known_recipe_names([folder], folder / "optcheck-ledger.toml"))
    known = [k for c in recipe.cases() for phase in recipe.phases
             if (k := known_failure(ledger, recipe.name, c.label, phase)) is not None]
    return recipe, known


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="", help="comma-separated labels (resnet18, ...); default: all 13")
    ap.add_argument("--phases", default="all", help="core, all, or a comma-separated list of phases")
    ap.add_argument("--json", type=Path, help="write the results and verdicts here")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    phases = {"core": PHASES, "all": ALL_PHASES}.get(args.phases) or tuple(args.phases.split(","))
    wanted = [m for m in args.models.split(",") if m]
    recipe, known_all = shipped_zoo()
    cases = [c for c in recipe.cases() if not wanted or c.label in wanted]
    unknown = set(wanted) - {c.label for c in cases}
    if unknown:
        ap.error(f"unknown models {sorted(unknown)}; known: {', '.join(c.label for c in recipe.cases())}")

    import torch

    v = versions()
    print(f"# zoo: {len(cases)} models, phases {', '.join(phases)}; nvidia-modelopt {v['nvidia-modelopt']}, "
          f"torch {v['torch']}, torchvision {v['torchvision']}, torchprofile {v['torchprofile']}; "
          f"{torch.get_num_threads()} torch threads", file=sys.stderr)
    start = time.perf_counter()
    results = []
    for case in cases:
        results.append(run_model(case, phases, None, args.seed,
                                 log=lambda line: print(line, file=sys.stderr, flush=True)))
        r = results[-1]
        print(f"# {case.label}: {r.seconds:.1f} s ({'all passed' if r.passed else 'failed at ' + str(r.failed_phase)})",
              file=sys.stderr, flush=True)
    wall = time.perf_counter() - start

    known = known_all
    verdicts = classify(results, known)
    bad = gate_failures(verdicts)
    print(matrix_markdown(results, known, title=f"## FastNAS model-zoo matrix, nvidia-modelopt {v['nvidia-modelopt']} "
                                                 f"(CPU, torch {v['torch']}, torchvision {v['torchvision']})"))
    print()
    print("| model | seconds | " + " | ".join(ALL_PHASES) + " |")
    print("|---|---:|" + "---:|" * len(ALL_PHASES))
    for r in results:
        cells = [f"{p.seconds:.2f}" if (p := r.phase(name)) is not None and p.status != "not run" else "–"
                 for name in ALL_PHASES]
        print(f"| {r.case.label} | {r.seconds:.1f} | " + " | ".join(cells) + " |")
    print(f"\nwall time: {wall:.1f} s for {len(results)} models (the per-model seconds exclude the one-time "
          "imports of modelopt and torchvision)")
    if bad:
        print(f"\ngate: FAILED ({len(bad)})")
        for verdict in bad:
            print(f"- {verdict.model} {verdict.phase} {verdict.outcome}: {verdict.message}")
    else:
        print("\ngate: passed (every failure is a known failure, no known failure passed)")
    if args.json:
        args.json.write_text(json.dumps({"versions": v, "wall_seconds": round(wall, 2),
                                         "results": [r.as_dict() for r in results],
                                         "verdicts": [x.as_dict() for x in verdicts]}, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
