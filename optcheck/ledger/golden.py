"""Judging golden checkpoints (``pipeline.golden``): a ``golden[<stage>]`` check restores the committed
checkpoint with today's stack and compares its logits on the recorded batch with the recorded ones.

    golden = ["finetuned"]          # in a recipe: the stages whose deployed model must keep restoring

- Passes when the restore works and both the largest and the mean absolute logit difference are
  within the golden's tolerances (the largest catches one image gone wrong; the mean catches what a
  quantized model's rounding flips hide in the largest: with every quantizer disabled the INT8 digits
  model's logits move by 0.92 at most but 0.075 on average, against 0.0025 for the rounding flips of
  2-ulp perturbations). Fails naming the recipe, the stage, the versions that wrote it and today's, and the
  largest difference (which image, which class) and the top-1 agreement; a restore that raises fails
  with its error (the upgrade broke the checkpoint format).
- The tolerance is measured when the golden is written, two ways: the restore and forward pass are
  repeated in subprocesses under this machine's numerics variants (default and AVX2 kernels x 1 and 2
  threads), and in this process with every conv / linear output perturbed by a few float32 ulps
  (Gaussian, ``ULPS`` ulps, ``PERTURBATIONS`` draws), which stands in for the kernel paths this machine cannot reach (an
  accumulation order one ulp off). ``tolerance = max(FLOOR, MARGIN x the largest difference seen)``.
  Bit-exactness holds on one machine only (the project's lesson). A quantized model shows why both are
  needed: one ulp before an input quantizer can move a value across a rounding boundary, and a logit
  then moves by a quantization step (0.083 on the INT8 digits model under AVX2 kernels; 0.086 on the
  FastNAS + INT8 one under one-ulp perturbations, whose AVX2 run happened to match bit for bit).
- Writing uses the ledger's update options: ``--optcheck-update`` writes a missing or failing golden
  (the stage is built, or taken from the cache), ``--optcheck-update-all`` rewrites every one. Review
  the diff (golden.json says who wrote it) and commit the folder.
- ``known_failure = "<ticket>: why"`` in golden.json turns the check into a strict xfail, like a
  ledger entry's: the day it passes, the run fails and says to remove it.

Run as ``python -m optcheck.ledger.golden <recipe> <stage> --threads N``: one measurement, as JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

FLOOR = 1e-5  # absolute logit difference: below what an fp32 forward pass moves across kernel paths here
MEAN_FLOOR = 1e-6  # the mean absolute logit difference's floor
MARGIN = 4.0  # the largest difference seen across this machine's variants and perturbations, times this
PERTURBATIONS = 16
ULPS = 2.0  # the perturbation's standard deviation, in float32 ulps of each value
VERSIONS = ("torch", "nvidia-modelopt", "torchprofile", "torch-pruning", "onnx")


@dataclass
class GoldenVerdict:
    failure: str | None = None
    written: str | None = None  # what --optcheck-update wrote, said in the report
    details: dict[str, Any] = field(default_factory=dict)


def versions() -> dict[str, str]:
    from optcheck.core.numerics import dist_version

    return {name: dist_version(name) for name in VERSIONS}


def _versions_text(v: dict[str, Any]) -> str:
    return ", ".join(f"{k.removeprefix('nvidia-')} {val}" for k, val in v.items() if val and val != "absent")


def compare(run, stage: str, golden) -> dict[str, Any]:
    """Restore ``golden`` into a fresh model of ``run``'s recipe and compare its logits. Returns the
    measurement; ``error`` is set when the restore or the forward pass raised."""
    import torch

    from optcheck.pipeline.golden import logits, restore

    recorded = golden.tensors("outputs.safetensors")
    try:
        model = restore(golden, run.ctx, run.stages[stage])
        now = logits(model, recorded["inputs"].to(run.ctx.device))
    except Exception as exc:  # noqa: BLE001 - a restore that raises is the finding
        return {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}"}
    if now.shape != recorded["logits"].shape:
        return {"error": f"the restored model's logits have shape {tuple(now.shape)}, the recorded ones "
                         f"{tuple(recorded['logits'].shape)}"}
    diff = (now - recorded["logits"]).abs()
    worst = int(diff.argmax())
    image, klass = divmod(worst, diff.shape[1])
    agree = int((now.argmax(1) == recorded["logits"].argmax(1)).sum())
    finite = bool(torch.isfinite(diff).all())
    return {"max_abs_diff": float(diff.max()) if finite else float("inf"),
            "mean_abs_diff": float(diff.mean()) if finite else float("inf"), "image": image, "class": klass,
            "top1_agree": agree, "n": len(now)}


def judge(run, stage: str, update: str | None, *, measure: Callable[..., dict[str, Any]] | None = None,
          display: Callable[[Path], str] = str) -> GoldenVerdict:
    """The ``golden[<stage>]`` check of ``run``'s recipe; ``update`` is None, "failed" or "all".
    ``measure(folder)`` measures a new golden's tolerance (default: ``measure_tolerance`` here)."""
    from optcheck.pipeline.golden import GoldenError, GoldenMissing, folder_for, read

    folder = folder_for(run.recipe, stage)
    where = f"golden[{stage}] of {run.recipe.name} ({display(folder)})"
    today = versions()
    try:
        golden = read(folder, display)
    except GoldenError as exc:
        if update in ("failed", "all"):
            return _write(run, stage, folder, where, measure,
                          "there was none; " if isinstance(exc, GoldenMissing) else f"{exc}\n  ")
        return GoldenVerdict(failure=f"{where}: {exc}")
    got = compare(run, stage, golden)
    then = golden.meta.get("written_by", {})
    details = {"folder": display(folder), "written_by": then, "today": today, "tolerance": golden.tolerance, **got}
    problem = None
    if "error" in got:
        problem = (f"{where} does not restore with today's stack ({_versions_text(today)}); it was written by "
                   f"{_versions_text(then.get('versions', {}))} on {golden.meta.get('written_on', '?')}:\n"
                   f"  {got['error']}")
    elif not (got["max_abs_diff"] <= golden.tolerance and got["mean_abs_diff"] <= golden.mean_tolerance):
        problem = (f"{where}: restored with today's stack ({_versions_text(today)}), its logits on the "
                   f"{got['n']} recorded test images differ from those recorded when it was written "
                   f"({_versions_text(then.get('versions', {}))}, {golden.meta.get('written_on', '?')}) by up to "
                   f"{got['max_abs_diff']:.3g} (image {got['image']}, class {got['class']}; tolerance "
                   f"{golden.tolerance:.3g}), {got['mean_abs_diff']:.3g} on average (tolerance "
                   f"{golden.mean_tolerance:.3g}); top-1 agrees on {got['top1_agree']} of {got['n']}; the "
                   f"tolerances: {golden.meta.get('calibration', 'not measured')}")
    if update == "all" or (problem and update == "failed"):
        verdict = _write(run, stage, folder, where, measure, f"{problem.removeprefix(where + ': ')}\n  " if problem else "")
        verdict.details = {**details, **verdict.details}
        return verdict
    if problem:
        fix = ("if the change is intended (a new deployment), rewrite it with `pytest --optcheck --optcheck-update` "
               "and commit the folder; if not, the upgrade changed what the deployed model computes")
        return GoldenVerdict(failure=f"{problem}\n  fix: {fix}", details=details)
    return GoldenVerdict(details=details)


def _write(run, stage: str, folder: Path, where: str, measure, said: str) -> GoldenVerdict:
    """Write the stage's golden checkpoint from its artifact, then measure its tolerance."""
    from optcheck.pipeline.golden import fixed_inputs, logits, update_meta, write

    artifact = run.artifact(stage)
    inputs = fixed_inputs(run.ctx)
    meta = {"recipe": run.recipe.name, "stage": stage, "written_on": datetime.date.today().isoformat(),
            "written_by": {"versions": versions(), "numerics": run.fingerprint()},
            "tolerance": FLOOR, "calibration": "not measured yet"}
    golden = write(folder, artifact.files, run.stages[stage].checkpoint, inputs,
                   logits(artifact.model, inputs.to(run.ctx.device)), meta)
    spread = (measure or measure_tolerance)(run.recipe.path, stage)
    diffs = [v["max_abs_diff"] for v in spread.values() if "max_abs_diff" in v]
    failed = {label: v["error"] for label, v in spread.items() if "error" in v}
    if failed or not diffs:
        raise AssertionError(f"{where}: written, but restoring it under this machine's numerics variants failed "
                             f"({'; '.join(f'{k}: {v}' for k, v in failed.items()) or 'no variant ran'}); "
                             "the golden's tolerance is not measured")
    ulp = ulp_spread(artifact.model, inputs.to(run.ctx.device))
    means = [v["mean_abs_diff"] for v in spread.values() if "mean_abs_diff" in v]
    tolerance = float(f"{max(FLOOR, MARGIN * max(*diffs, ulp['max_abs_diff'])):.3g}")
    mean_tolerance = float(f"{max(MEAN_FLOOR, MARGIN * max(*means, ulp['mean_abs_diff'])):.3g}")
    text = (f"{len(diffs)} restores under this machine's numerics variants ({', '.join(spread)}; largest "
            f"difference {max(diffs):.3g}, mean {max(means):.3g}) and {PERTURBATIONS} perturbations of every conv "
            f"/ linear output by {ULPS:g} ulps (largest {ulp['max_abs_diff']:.3g}, mean {ulp['mean_abs_diff']:.3g}), "
            f"on {meta['written_on']}; each tolerance = max(floor, {MARGIN:g} x the largest seen)")
    golden = update_meta(golden, tolerance=tolerance, mean_tolerance=mean_tolerance, calibration=text,
                         observed={"variants": spread, "ulp_perturbation": ulp})
    return GoldenVerdict(failure=f"{where}: {said}--optcheck-update wrote it ({text}); rerun to confirm, "
                                 "review the diff and commit the folder",
                         written=str(folder), details={"tolerance": tolerance, "mean_tolerance": mean_tolerance,
                                                      "observed": spread})


# -- measuring the tolerance -------------------------------------------------------------------------------

def ulp_spread(model, inputs, draws: int = PERTURBATIONS) -> dict[str, float]:
    """The largest logit difference when every conv / linear output is moved by a few float32 ulps
    (relative Gaussian noise of ``ULPS`` ulps, ``draws`` seeded draws): what another accumulation order
    can do. (One ulp with random signs missed a rounding flip that 2-ulp noise finds.)"""
    import torch

    from optcheck.pipeline.golden import logits

    eps = float(torch.finfo(torch.float32).eps)
    reference = logits(model, inputs)
    worst = {"max_abs_diff": 0.0, "mean_abs_diff": 0.0}
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.modules.conv._ConvNd, torch.nn.Linear))]
    for draw in range(draws):
        g = torch.Generator().manual_seed(draw)

        def nudge(_module, _inputs, out):
            return out * (1 + ULPS * eps * torch.randn(out.shape, generator=g).to(out))

        hooks = [m.register_forward_hook(nudge) for m in layers]
        try:
            diff = (logits(model, inputs) - reference).abs()
            worst = {"max_abs_diff": max(worst["max_abs_diff"], float(diff.max())),
                     "mean_abs_diff": max(worst["mean_abs_diff"], float(diff.mean()))}
        finally:
            for h in hooks:
                h.remove()
    return worst


def measure_tolerance(recipe_path: Path, stage: str, *, rootdir: Path | None = None,
                      import_paths: tuple[str, ...] = (), jobs: int = 2) -> dict[str, dict[str, Any]]:
    """Restore the golden of ``stage`` under each numerics variant (default / AVX2 kernels x 1 / 2
    threads), each in its own subprocess; ``{variant label: compare()'s measurement}``."""
    import concurrent.futures as cf

    from optcheck.ledger.calibrate import KERNELS, Variant

    rootdir = rootdir or Path.cwd()
    variants = [Variant(0, kernels, threads) for kernels in KERNELS for threads in (1, 2)]

    def one(v: Variant) -> tuple[str, dict[str, Any]]:
        env = v.env(dict(os.environ))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(rootdir), *import_paths, env.get("PYTHONPATH")]))
        proc = subprocess.run([sys.executable, "-m", "optcheck.ledger.golden", str(recipe_path), stage,
                               "--threads", str(v.threads)], env=env, cwd=rootdir, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        label = f"{v.kernels}/{v.threads}t"
        if proc.returncode != 0 or not lines:
            tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
            return label, {"error": f"exit {proc.returncode}: {tail[-300:]}"}
        return label, json.loads(lines[-1])

    # the 1-thread variants side by side, the 2-thread ones alone (oversubscribed OpenMP threads spin)
    out: dict[str, dict[str, Any]] = {}
    for threads in (1, 2):
        group = [v for v in variants if v.threads == threads]
        with cf.ThreadPoolExecutor(max(1, min(jobs // threads, len(group)))) as pool:
            out.update(pool.map(one, group))
    return {label: out[label] for label in (f"{v.kernels}/{v.threads}t" for v in variants)}


def _probe(argv: list[str] | None = None) -> None:
    """One measurement in this process: the golden restored and compared, printed as JSON."""
    p = argparse.ArgumentParser(prog="python -m optcheck.ledger.golden")
    p.add_argument("recipe", type=Path)
    p.add_argument("stage")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)

    import tempfile

    import torch

    from optcheck.pipeline.golden import folder_for, read
    from optcheck.pipeline.run import RecipeRun
    from optcheck.recipes.loader import load_recipe

    torch.set_num_threads(a.threads)
    recipe = load_recipe(a.recipe)
    with tempfile.TemporaryDirectory(prefix="optcheck-golden-") as tmp:
        run = RecipeRun(recipe, device="cpu", threads=a.threads, workdir=lambda: Path(tmp))
        print(json.dumps(compare(run, a.stage, read(folder_for(recipe, a.stage)))))


if __name__ == "__main__":
    _probe()
