"""How much a recipe's numbers move across CPU numerics paths, thread counts and seeds.

Runs the recipe once per variant, each in its own subprocess and cache folder, through the
plugin itself (`pytest --optcheck <recipe> --optcheck-report ...`), and prints per stage the
range of test accuracy, FLOPs and params, plus how many distinct subnets the variants produced.

    .venv/bin/python benchmarks/numerics_spread.py recipes/digits_resnet20_fastnas.toml --variants 8 -j 2

Variants, in order: for each seed (recipe seed, +1, ...): {default kernels, ATEN_CPU_CAPABILITY=avx2
+ ONEDNN_MAX_CPU_ISA=AVX2} x {1, 2 threads}. This script only measures; `--optcheck-calibrate`
writes tolerances into the ledger.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def variants(seed0: int, count: int) -> list[dict]:
    out, seed = [], seed0
    while len(out) < count:
        for isa in ("default", "avx2"):
            for threads in (1, 2):
                out.append({"seed": seed, "isa": isa, "threads": threads})
        seed += 1
    return out[:count]


def run_variant(recipe: Path, v: dict, workdir: Path, python: str) -> dict:
    name = f"s{v['seed']}-{v['isa']}-t{v['threads']}"
    report = workdir / f"{name}.json"
    env = dict(os.environ)
    if v["isa"] == "avx2":
        env.update(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    cmd = [python, "-m", "pytest", "--optcheck", str(recipe), "--optcheck-recipes", str(recipe),
           "--optcheck-ledger", str(workdir / "no-ledger.toml"), "--optcheck-report", str(report),
           "--optcheck-seed", str(v["seed"]), "--optcheck-threads", str(v["threads"]),
           "--optcheck-cache-dir", str(workdir / f"cache-{name}"), "-q", "-p", "no:cacheprovider",
           "-p", "no:randomly", "--rootdir", str(ROOT)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if not report.exists():
        return {**v, "error": proc.stdout[-2000:] + proc.stderr[-2000:]}
    doc = json.loads(report.read_text())
    [run] = doc["recipes"]
    return {**v, "name": name, "stages": {s: i["metrics"] for s, i in run["stages"].items()},
            "verdicts": {k: x.get("outcome") for k, x in run.get("verdicts", {}).items()}}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("recipe", type=Path)
    p.add_argument("--variants", type=int, default=8)
    p.add_argument("-j", type=int, default=2, help="variants run at once")
    p.add_argument("--out", type=Path, default=None, help="write all results as JSON here")
    args = p.parse_args()
    seed0 = tomllib.loads(args.recipe.read_text()).get("seed", 0)
    work = Path(tempfile.mkdtemp(prefix="optcheck-spread-"))
    vs = variants(seed0, args.variants)
    with cf.ThreadPoolExecutor(args.j) as pool:
        results = list(pool.map(lambda v: run_variant(args.recipe.resolve(), v, work, sys.executable), vs))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    for r in results:
        if "error" in r:
            print(f"variant {r} failed:\n{r['error']}")
    ok = [r for r in results if "error" not in r]
    print(f"{len(ok)} of {len(results)} variants ran ({work})")
    print(f"{'variant':<18}" + "".join(f"{s:>34}" for s in ok[0]["stages"]))
    for r in ok:
        cells = [f"{m['test_acc'] * 100:6.2f}% {m['flops'] / 1e6:6.2f}M {m['params']:>8,}"
                 for m in r["stages"].values()]
        print(f"{r['name']:<18}" + "".join(f"{c:>34}" for c in cells) + "  " + " ".join(
            f"{k}={v}" for k, v in r["verdicts"].items() if v != "passed"))
    for stage in ok[0]["stages"]:
        ms = [r["stages"][stage] for r in ok if stage in r["stages"]]
        acc = [m["test_acc"] for m in ms]
        fl = [m["flops"] for m in ms]
        pa = [m["params"] for m in ms]
        print(f"{stage:<10} test_acc {min(acc) * 100:.2f}..{max(acc) * 100:.2f}%  "
              f"flops {min(fl):,}..{max(fl):,} ({(max(fl) - min(fl)) / min(fl) * 100:.1f}%)  "
              f"params {min(pa):,}..{max(pa):,} ({(max(pa) - min(pa)) / min(pa) * 100:.1f}%)  "
              f"distinct architectures {len(set(zip(fl, pa)))}")


if __name__ == "__main__":
    main()
