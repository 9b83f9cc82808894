"""Running one side of an upgrade comparison: the recipes through pytest in that environment, and the
checkpoint probes (``upgrade.probe``) in it. Plain subprocesses; results as plain data."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optcheck.upgrade.environment import Environment, clean_env


@dataclass
class Session:
    env: Environment
    report: dict[str, Any]
    returncode: int
    seconds: float
    tail: str = ""


def run_recipes(env: Environment, recipes: list[str], work: Path, *, rootdir: Path, workers: int,
                pytest_args: tuple[str, ...] = (), log=print) -> Session:
    """``pytest --optcheck <recipes>`` in ``env``, with its own artifact cache (``work/cache/<label>``:
    kept between comparisons, so today's side is warm the second time), against the committed ledger.
    Exit status 1 (a check failed) is a result; anything else that leaves no report is an error."""
    report = work / f"report-{env.label}.json"
    report.unlink(missing_ok=True)
    (work / "tmp").mkdir(parents=True, exist_ok=True)  # pytest makes --basetemp itself, not its parents
    cmd = [env.python, "-m", "pytest", "--optcheck", *recipes, "-p", "no:cacheprovider", "-q",
           "--optcheck-report", str(report), "--optcheck-cache-dir", str(work / "cache" / env.label),
           "--basetemp", str(work / "tmp" / env.label), *(("-n", str(workers)) if workers > 1 else ()), *pytest_args]
    log(f"[optcheck] {env.label}: pytest --optcheck {' '.join(recipes)} ...")
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=rootdir, env=clean_env(env), capture_output=True, text=True)
    seconds = time.perf_counter() - started
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
    if not report.exists():
        raise RuntimeError(f"the {env.label} session (exit {proc.returncode}) wrote no report:\n{tail}")
    log(f"[optcheck] {env.label}: done in {seconds:.0f} s (exit {proc.returncode})")
    return Session(env, json.loads(report.read_text()), proc.returncode, seconds, tail)


@dataclass
class Probe:
    """What one environment saw restoring checkpoints: ``{tag: logits file}`` and ``{tag: error}``."""

    outputs: dict[str, Path] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def probe(env: Environment, jobs: list[dict[str, Any]], work: Path, *, rootdir: Path, log=print) -> Probe:
    """Restore every job's checkpoint in ``env`` (one subprocess) and collect the logits files."""
    folder = work / "probe" / env.label
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "jobs.json"
    spec.write_text(json.dumps(jobs, indent=1))
    log(f"[optcheck] {env.label}: restoring {len(jobs)} checkpoints ...")
    started = time.perf_counter()
    proc = subprocess.run([env.python, "-m", "optcheck.upgrade.probe", str(spec), str(folder)], cwd=rootdir,
                          env=clean_env(env), capture_output=True, text=True)
    out = Probe(seconds=time.perf_counter() - started)
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            got = json.loads(line)
            if "error" in got:
                out.errors[got["tag"]] = got["error"]
            else:
                out.outputs[got["tag"]] = folder / f"{got['tag']}.safetensors"
    for job in jobs:
        if job["tag"] not in out.outputs and job["tag"] not in out.errors:
            tail = " ".join((proc.stderr or "").strip().splitlines()[-3:])
            out.errors[job["tag"]] = f"the probe process ended (exit {proc.returncode}) before it: {tail[-400:]}"
    return out


def checkpoint_jobs(session: Session, work: Path, rootdir: Path) -> list[dict[str, Any]]:
    """One probe job per stage checkpoint the session's report names (recipe paths in a report are
    relative to the rootdir the session ran in); the tag says whose checkpoint it is."""
    jobs = []
    for recipe in session.report.get("recipes", []):
        path = Path(recipe["path"])
        path = path if path.is_absolute() else rootdir / path
        for stage, info in recipe.get("stages", {}).items():
            if not info.get("files"):
                continue
            jobs.append({"recipe": str(path), "stage": stage, "files": info["files"],
                         "tag": f"{session.env.label}--{recipe['recipe']}--{stage}",
                         "inputs": str(work / "probe" / f"inputs-{recipe['recipe']}.safetensors")})
    return jobs
