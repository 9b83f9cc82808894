"""Wall time, time per stage and peak memory of the README's main job, cold and warm, serial and -n auto.

    .venv/bin/python benchmarks/main_job.py [--repeat N] [--modes serial,xdist] [extra pytest args...]

Each round, per mode (serial = no -n; xdist = -n auto), runs two fresh pytest processes on a fresh,
empty cache dir and basetemp:

  cold   every stage built (and stored in the empty cache)
  warm   the same cache again: nothing built

The command is the README's main command (`pytest --optcheck recipes ...`) with the report and plot
options dropped, plus `-q`, a private cache dir and `--optcheck-report` (for the per-stage times).
Prints one line per run, then per mode the median of the rounds: cold, warm, the warm speed-up, the
time per stage (cold, from the JSON report), and the peak RSS of the largest process (pytest or an
xdist worker; ru_maxrss of the reaped children).
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_args() -> list[str]:
    """The README's first command's pytest arguments, less the report/plot outputs and -n."""
    head = (ROOT / "README.md").read_text().split("\n## ", 1)[0]
    main = re.findall(r"```(?:bash|sh)?\n(.+?)\n```", head, flags=re.S)[0]
    words = shlex.split(main.split("&&")[-1])[1:]
    out, skip = [], False
    for w in words:
        if skip:
            skip = False
            continue
        if w in ("--optcheck-report", "--optcheck-plot", "-n"):
            skip = True
            continue
        out.append(w)
    return out


def run_once(args: list[str], cache: Path, tmp: Path, name: str) -> dict:
    report = tmp / f"{name}.json"
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", *args, "-q", "-p", "no:cacheprovider",
                           f"--optcheck-cache-dir={cache}", f"--basetemp={tmp / name}",
                           "--optcheck-report", str(report)], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        sys.exit(f"pytest exited {proc.returncode}:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    stages: dict[str, float] = {}
    for recipe in json.loads(report.read_text())["recipes"]:
        for stage, info in recipe.get("stages", {}).items():
            built = [e["seconds"] for e in info.get("events", []) if str(e.get("cache", "")).startswith(("built", "off"))]
            if built:
                stages[f"{recipe['recipe']}.{stage}"] = max(built)
    return {"wall": wall, "peak_mb": max(before, peak) / 1024, "stages": stages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--modes", default="serial,xdist")
    opts, extra = parser.parse_known_args()
    base = readme_args() + extra
    modes = {"serial": [], "xdist": ["-n", "auto"]}
    results: dict[str, list[dict]] = {}
    for r in range(opts.repeat):
        for mode in opts.modes.split(","):
            with tempfile.TemporaryDirectory(prefix="optcheck-bench-") as t:
                tmp = Path(t)
                cold = run_once(base + modes[mode], tmp / "cache", tmp, "cold")
                warm = run_once(base + modes[mode], tmp / "cache", tmp, "warm")
            results.setdefault(mode, []).append({"cold": cold, "warm": warm})
            print(f"round {r + 1} {mode:6s}: cold {cold['wall']:.1f} s, warm {warm['wall']:.1f} s, "
                  f"peak RSS {max(cold['peak_mb'], warm['peak_mb']):.0f} MB", flush=True)
    print(f"\nmedian of {opts.repeat} round(s); command: pytest {' '.join(base)} [-n auto]")
    for mode, rounds in results.items():
        cold = statistics.median(x["cold"]["wall"] for x in rounds)
        warm = statistics.median(x["warm"]["wall"] for x in rounds)
        print(f"{mode:6s}: cold {cold:.1f} s, warm {warm:.1f} s ({cold / warm:.1f}x)")
        names = sorted({s for x in rounds for s in x["cold"]["stages"]})
        for s in names:
            print(f"        {s:40s} {statistics.median(x['cold']['stages'].get(s, 0) for x in rounds):6.1f} s")
        print(f"        peak RSS {max(max(x['cold']['peak_mb'], x['warm']['peak_mb']) for x in rounds):.0f} MB")


if __name__ == "__main__":
    main()
