"""Wall time and peak memory of the main job, `pytest --optcheck recipes`, run cold.

    .venv/bin/python benchmarks/main_job.py [--repeat N] [extra pytest args...]

Each run is a fresh pytest process with a fresh --basetemp, so every stage is rebuilt (a cold run).
Prints one line per run and the median; the results table of the last run follows.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_once(extra: list[str]) -> tuple[float, float, str]:
    with tempfile.TemporaryDirectory(prefix="optcheck-bench-") as tmp:
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "--optcheck", "recipes", "-q",
                               "-p", "no:cacheprovider", "--basetemp", tmp, *extra],
                              cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - start
        peak_mb = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    if proc.returncode != 0:
        sys.exit(f"pytest exited {proc.returncode}:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    return wall, peak_mb, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1)
    args, extra = parser.parse_known_args()
    walls = []
    for i in range(args.repeat):
        wall, peak_mb, out = run_once(extra)
        walls.append(wall)
        print(f"cold run {i + 1}: {wall:.1f} s wall, peak RSS {peak_mb:.0f} MB")
    print(f"median cold wall time: {statistics.median(walls):.1f} s over {len(walls)} run(s)")
    table = out.split("optcheck results =")[-1].split("\n", 1)[-1]
    print(table.rstrip())


if __name__ == "__main__":
    main()
