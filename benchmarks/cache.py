"""What the artifact cache buys and costs, on the README's main-job command.

    .venv/bin/python benchmarks/cache.py [--repeat N] [extra pytest args...]

Each round runs the main job three times, each a fresh pytest process:

  cold, --optcheck-no-cache   every stage built, nothing read or written
  cold, empty cache           every stage built and stored (the cache's cost on a cold run)
  warm                        the same cache again: nothing built

and prints the wall times, the warm speed-up and the cache's overhead on a cold run, measured two
ways: the wall-time difference between the two cold runs (noisy: a few percent between identical
runs) and the time optcheck spent in cache work (keys, data fingerprint, loads, checksums, copies),
which the JSON report records per process.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_args() -> list[str]:
    head = (ROOT / "README.md").read_text().split("\n## ", 1)[0]
    main = re.findall(r"```(?:bash|sh)?\n(.+?)\n```", head, flags=re.S)[0]
    words = shlex.split(main.split("&&")[-1])
    return words[1:]  # drop the pytest executable


def run(args: list[str], tmp: Path, name: str) -> tuple[float, dict]:
    report = tmp / f"{name}.json"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", *args, "-q", "-p", "no:cacheprovider",
                           "--optcheck-report", str(report), "--optcheck-plot", str(tmp / f"{name}.png"),
                           "--basetemp", str(tmp / f"{name}-tmp")],
                          cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{name}: pytest exited {proc.returncode}:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    return wall, json.loads(report.read_text())


def cache_seconds(doc: dict) -> float:
    return sum(sum(r.get("cache_seconds", {}).values()) for r in doc["recipes"])


def builds(doc: dict) -> int:
    return sum(e["cache"] == "built" for r in doc["recipes"] for s in r["stages"].values() for e in s["events"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1)
    opts, extra = parser.parse_known_args()
    args = readme_args() + extra
    print(f"command: pytest {' '.join(args)}")
    rows: dict[str, list[float]] = {"no-cache": [], "cold": [], "warm": []}
    work: list[float] = []
    for i in range(opts.repeat):
        with tempfile.TemporaryDirectory(prefix="optcheck-cache-bench-") as t:
            tmp = Path(t)
            cache = ["--optcheck-cache-dir", str(tmp / "cache")]
            wall, _ = run(args + ["--optcheck-no-cache"], tmp, "no-cache")
            rows["no-cache"].append(wall)
            wall, doc = run(args + cache, tmp, "cold")
            rows["cold"].append(wall)
            work.append(cache_seconds(doc))
            built = builds(doc)
            wall, doc = run(args + cache, tmp, "warm")
            rows["warm"].append(wall)
            assert builds(doc) == 0, "the warm run built something: the cache missed"
        print(f"round {i + 1}: no-cache {rows['no-cache'][-1]:.1f} s, cold {rows['cold'][-1]:.1f} s "
              f"({built} artifacts built, {work[-1]:.2f} s of cache work), warm {rows['warm'][-1]:.1f} s")
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"median over {opts.repeat} round(s):")
    print(f"  cold, no cache   {med['no-cache']:7.1f} s")
    print(f"  cold, with cache {med['cold']:7.1f} s   wall difference {(med['cold'] / med['no-cache'] - 1) * 100:+.1f}%; "
          f"cache work {statistics.median(work):.2f} s = {statistics.median(work) / med['cold'] * 100:.2f}% of the cold run")
    print(f"  warm             {med['warm']:7.1f} s   {med['cold'] / med['warm']:.1f}x faster than cold")


if __name__ == "__main__":
    main()
