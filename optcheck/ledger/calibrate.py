"""Calibrated ledger tolerances: rebuild a recipe under N variations and measure how far it moves.

    pytest --optcheck --optcheck-calibrate 8

Each variant is one subprocess (``python -m optcheck.ledger.calibrate``) with its own seed, CPU kernel
path and thread count, so its artifacts get their own cache keys (the numerics fingerprint and the
thread count are part of every key). Variants, in this order, until N are taken:

    for seed in (recipe seed, +1, +2, ...):
        for kernels in (this CPU's default, ATEN_CPU_CAPABILITY=avx2 + ONEDNN_MAX_CPU_ISA=AVX2):
            for threads in (1, 2):

(on a GPU only the seed varies). Variant 0 is what a plain run of the recipe here builds. For each
stage and metric the entry gets the observed ``[min, max]`` over all variants, the middle of that
range as its value, and

    tolerance = max(floor, MARGIN x half the observed range)

so a value passes when it lies in the observed range widened by half its width on each side.
- ``MARGIN = 2``: with N runs, a new run falls outside the observed range with probability about
  2 / (N + 1) (for N = 8, 22%): the range alone would cry wolf. Widening it by half its width on
  each side keeps a roughly normal spread's exceedance near 1% per metric at N = 8.
- the middle, not variant 0, is the reference: a plain run here can sit at one end of the range,
  and centring on it would double the tolerance the same coverage needs.
- floors: test accuracy ``2 / n_test`` (two test images: the resolution of the metric; a single
  borderline image flips between numerics paths even when nothing else moves), and 1% for FLOPs,
  params and checkpoint bytes of a searched stage (one channel group more in one layer).
- exact: FLOPs and params of a stage whose architecture the recipe alone decides (the baseline).
  A calibration that sees them move is a bug, and says so.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

MARGIN = 2.0
ACC_FLOOR_IMAGES = 2
REL_FLOOR = 0.01
METRIC_FLOOR = 0.01  # a team metric's tolerance floor: 1% of its value (and 1e-4), absolute
KERNELS = {"default": {}, "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}
_KNOBS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


@dataclass(frozen=True)
class Variant:
    seed: int
    kernels: str = "default"  # a key of KERNELS
    threads: int = 1

    @property
    def label(self) -> str:
        return f"seed {self.seed}, {self.kernels} kernels, {self.threads} thread{'s' * (self.threads > 1)}"

    def env(self, base: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in base.items() if k not in _KNOBS}
        env.update(KERNELS[self.kernels])
        return env


def variants(seed: int, count: int, *, threads: int = 1, device: str = "cpu") -> list[Variant]:
    """The first ``count`` variants; variant 0 is (seed, default kernels, ``threads``)."""
    if count < 1:
        raise ValueError("--optcheck-calibrate needs at least 1 run (8 or more for useful tolerances)")
    out: list[Variant] = []
    s = seed
    while len(out) < count:
        if device == "cuda":
            out.append(Variant(s, "default", threads))
        else:
            other = 2 if threads == 1 else 1
            for kernels in KERNELS:
                for t in (threads, other):
                    out.append(Variant(s, kernels, t))
        s += 1
    return out[:count]


# -- deriving tolerances -------------------------------------------------------------------------------

@dataclass
class Derived:
    value: float
    tolerance: float
    observed: tuple[float, float]


def derive(metric: str, values: list[float], *, exact: bool, test_n: int) -> Derived:
    """Reference (the middle of the observed range), tolerance and observed range of one metric."""
    lo, hi = min(values), max(values)
    ref = (lo + hi) / 2
    if metric in ("flops", "params", "ckpt_bytes"):
        ref = float(round(ref))
    dev = max(abs(v - ref) for v in values)
    if metric not in ("test_acc", "flops", "params", "ckpt_bytes"):  # a team metric: absolute, as accuracy
        return Derived(ref, _round_up(max(METRIC_FLOOR * abs(ref), 1e-4, MARGIN * dev)), (lo, hi))
    if metric == "test_acc":
        tol = max(ACC_FLOOR_IMAGES / max(test_n, 1), MARGIN * dev)
    elif exact:
        tol = 0.0
    else:
        tol = max(REL_FLOOR, MARGIN * dev / ref if ref else 0.0)
    return Derived(ref, _round_up(tol), (lo, hi))


def _round_up(x: float, digits: int = 3) -> float:
    """``x`` rounded *up* to ``digits`` significant digits (a shown tolerance never shrinks)."""
    if x <= 0:
        return 0.0
    scale = 10 ** (digits - 1 - math.floor(math.log10(x)))
    return math.ceil(x * scale - 1e-9) / scale


@dataclass
class Calibration:
    """What calibrating one recipe produced: per stage, the ledger entry to write."""

    recipe: str
    platform: str
    runs: list[dict[str, Any]]  # one per variant: {"variant", "stages": {stage: metrics}, "fingerprint"}
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> list[str]:
        lines = [f"{self.recipe}: {len(self.runs)} runs"]
        for stage, e in self.entries.items():
            obs = e["observed"]
            lines.append(
                f"  {stage:<10} test_acc {obs['test_acc'][0] * 100:.2f}..{obs['test_acc'][1] * 100:.2f}% "
                f"(tol +-{e['tolerance']['test_acc'] * 100:.2f} pp)  flops {obs['flops'][0]:,}..{obs['flops'][1]:,} "
                f"(tol +-{e['tolerance']['flops'] * 100:.3g}%)  params {obs['params'][0]:,}..{obs['params'][1]:,} "
                f"(tol +-{e['tolerance']['params'] * 100:.3g}%)")
        return lines + [f"  problem: {p}" for p in self.problems]


def calibration_entries(recipe: str, platform: str, runs: list[dict[str, Any]], stages: list[str],
                        exact: Callable[[str], bool], when: str | None = None) -> Calibration:
    """Turn the variants' metrics into ledger entries (middle of the range, tolerances, ranges)."""
    from optcheck.ledger.entries import ordered_facts

    when = when or datetime.date.today().isoformat()
    cal = Calibration(recipe, platform, runs)
    labels = [r["variant"] for r in runs]
    seeds = sorted({v["seed"] for v in labels})
    kernels = sorted({v["kernels"] for v in labels})
    threads = sorted({v["threads"] for v in labels})
    text = (f"{len(runs)} runs on {when}: seeds {', '.join(map(str, seeds))} x kernels {'/'.join(kernels)} "
            f"x threads {'/'.join(map(str, threads))}; value = middle of the observed range, tolerance = "
            f"max(floor, {MARGIN:g} x half the range); floors: {ACC_FLOOR_IMAGES} test images, "
            f"{REL_FLOOR:.0%} FLOPs/params/bytes")
    for stage in stages:
        ms = [r["stages"][stage] for r in runs if stage in r["stages"]]
        if len(ms) != len(runs):
            cal.problems.append(f"{stage}: built by {len(ms)} of {len(runs)} runs; not calibrated")
            continue
        entry: dict[str, Any] = {}
        tolerance, observed = {}, {}
        team = sorted(set.intersection(*(set(m.get("extra") or {}) for m in ms)))
        for metric in ("test_acc", "flops", "params", "ckpt_bytes", *team):
            values = [float((m if metric in m else m["extra"])[metric] or 0) for m in ms]
            d = derive(metric, values, exact=exact(stage) and metric in ("flops", "params"),
                       test_n=int(ms[0]["test_n"]))
            is_int = metric in ("flops", "params", "ckpt_bytes")
            entry[metric] = int(d.value) if is_int else round(d.value, 6)
            tolerance[metric] = d.tolerance
            observed[metric] = [int(d.observed[0]), int(d.observed[1])] if is_int else [
                round(d.observed[0], 6), round(d.observed[1], 6)]
            if exact(stage) and metric in ("flops", "params") and d.observed[0] != d.observed[1]:
                cal.problems.append(f"{stage}.{metric} should be exact on any machine but moved "
                                    f"({d.observed[0]:,.0f}..{d.observed[1]:,.0f}): report this as a bug")
        structures = [m.get("structure") or {} for m in ms]
        if structures[0] and all(st == structures[0] for st in structures):
            entry["structure"] = ordered_facts(structures[0])  # exact: the same under every variant
        elif any(structures):
            moved = sorted({k for st in structures for k in st if st.get(k) != structures[0].get(k)})
            cal.problems.append(f"{stage}: structural facts differ between the variants ({', '.join(moved)}): "
                                "not recorded; the ledger holds them exactly, so a searched architecture that "
                                "moves with the numerics cannot keep them")
        entry.update(tolerance=tolerance, observed=observed, calibration=text,
                     written_by=runs[0]["fingerprint"])
        cal.entries[stage] = entry
    return cal


# -- running the variants --------------------------------------------------------------------------------

def run_variants(recipe_path: Path, variants_: list[Variant], *, device: str, cache_dir: Path | None,
                 jobs: int, log: Callable[[str], None], rootdir: Path,
                 import_paths: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Build the recipe once per variant, each in its own subprocess; results in variant order.

    ``jobs`` is the number of cores to fill: a variant holds as many of them as it has threads, so
    two 1-thread variants share 2 cores but a 2-thread one runs alone. (Oversubscribed OpenMP
    threads spin: a 2-thread build beside another build took 4x longer here.)
    ``import_paths`` go on the subprocess's ``PYTHONPATH`` after ``rootdir``: the folders the session
    imports a team's code from (pytest's ``pythonpath`` setting), or its recipe's hooks would not import.
    """
    import threading

    cores = threading.Semaphore(max(1, jobs))
    turn = threading.Lock()  # take a variant's cores all at once, so two big ones cannot deadlock

    def one(v: Variant) -> dict[str, Any]:
        need = min(v.threads, max(1, jobs))
        with turn:
            for _ in range(need):
                cores.acquire()
        try:
            return _one(v)
        finally:
            for _ in range(need):
                cores.release()

    def _one(v: Variant) -> dict[str, Any]:
        cmd = [sys.executable, "-m", "optcheck.ledger.calibrate", str(recipe_path), "--seed", str(v.seed),
               "--threads", str(v.threads), "--device", device]
        if cache_dir is not None:
            cmd += ["--cache-dir", str(cache_dir)]
        env = v.env(dict(os.environ))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(rootdir), *import_paths, env.get("PYTHONPATH")]))
        log(f"calibrating {recipe_path.name}: {v.label} ...")
        proc = subprocess.run(cmd, env=env, cwd=rootdir, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            return {"variant": v.__dict__, "error": f"exit {proc.returncode}: {tail}"}
        out = json.loads(lines[-1])
        if "skipped" in out:  # the recipe's data is not on this machine
            log(f"calibrating {recipe_path.name}: {v.label} skipped ({out['skipped'][:200]})")
            return {"variant": v.__dict__, **out}
        log(f"calibrating {recipe_path.name}: {v.label} done ("
            + ", ".join(f"{s} {m['test_acc'] * 100:.2f}% {m['flops'] / 1e6:.2f}M" for s, m in out["stages"].items()) + ")")
        return {"variant": v.__dict__, **out}

    with cf.ThreadPoolExecutor(max(1, jobs)) as pool:
        return list(pool.map(one, variants_))


def calibrate_recipes(paths: list[Path], count: int, *, ledger_path: Path, device: str, threads: int,
                      cache_dir: Path | None, jobs: int, log: Callable[[str], None], rootdir: Path,
                      import_paths: tuple[str, ...] = (), display: Callable[[Path], str] = str) -> list[Calibration]:
    """Calibrate each recipe and write the entries into the ledger (in place, comments kept).

    A recipe whose data is missing is skipped; one whose variants fail is reported, not written.
    """
    from optcheck.ledger.writing import write_updates
    from optcheck.pipeline.run import RecipeRun
    from optcheck.recipes.loader import load_recipe

    done: list[Calibration] = []
    for path in paths:
        recipe = load_recipe(path)
        seed = recipe.seed if recipe.seed is not None else 0
        vs = variants(seed, count, threads=threads, device="cuda" if device == "cuda" else "cpu")
        # the first variant alone first: a recipe whose data is missing is known after one subprocess
        runs = run_variants(path, vs[:1], device=device, cache_dir=cache_dir, jobs=jobs, log=log, rootdir=rootdir,
                            import_paths=import_paths)
        if not any("skipped" in r for r in runs):
            runs += run_variants(path, vs[1:], device=device, cache_dir=cache_dir, jobs=jobs, log=log,
                                 rootdir=rootdir, import_paths=import_paths)
        if any("skipped" in r for r in runs):
            log(f"calibration of {display(path)} skipped: {next(r['skipped'] for r in runs if 'skipped' in r)}")
            continue
        failed = [r for r in runs if "error" in r]
        if failed:
            cal = Calibration(recipe.name, "?", runs, problems=[
                f"{Variant(**r['variant']).label}: {r['error']}" for r in failed])
            log("\n".join([f"calibration of {display(path)} failed; the ledger was not changed:",
                            *cal.problems]))
            done.append(cal)
            continue
        platform = runs[0]["platform"]
        plan = RecipeRun(recipe)  # its plan only: nothing is built
        stages = [s for s in plan.available_stages() if s in runs[0]["stages"]]
        cal = calibration_entries(recipe.name, platform, runs, stages, plan.fixed_architecture)
        write_updates(ledger_path, {(recipe.name, platform, s): e for s, e in cal.entries.items()},
                      {recipe.name: plan.available_stages()})
        for line in cal.summary():
            log(line)
        log(f"calibration of {display(path)} written to {display(ledger_path)}")
        done.append(cal)
    return done


def _worker(argv: list[str] | None = None) -> None:
    """One variant, in this process: build every ledger stage and print the metrics as JSON."""
    p = argparse.ArgumentParser(prog="python -m optcheck.calibrate")
    p.add_argument("recipe", type=Path)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache-dir", type=Path, default=None)
    a = p.parse_args(argv)

    import tempfile

    from optcheck.pipeline.cache import ArtifactCache
    from optcheck.core.errors import DatasetMissing
    from optcheck.pipeline.run import RecipeRun
    from optcheck.recipes.loader import load_recipe

    recipe = load_recipe(a.recipe)
    cache = ArtifactCache(a.cache_dir) if a.cache_dir else None
    with tempfile.TemporaryDirectory(prefix="optcheck-calibrate-") as tmp:
        run = RecipeRun(recipe, device=a.device, seed=a.seed, threads=a.threads, cache=cache,
                        workdir=lambda: Path(tempfile.mkdtemp(dir=tmp)))
        try:
            stages = {s: run.artifact(s).metrics.as_dict() for s in run.available_stages()}
        except DatasetMissing as exc:
            print(json.dumps({"skipped": str(exc)}))
            return
        print(json.dumps({"stages": stages, "fingerprint": run.fingerprint(),
                          "platform": run.ctx.device.type}))


if __name__ == "__main__":
    _worker()
