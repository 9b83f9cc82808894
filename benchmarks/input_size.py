"""What the digits recipes' input size and batch size do to the cold main job and to its budgets.

    .venv/bin/python benchmarks/input_size.py [SIZE,CHANNELS,CROP_PADDING,BATCH ...]

    default variants: 16,3,4,32 (the shipped recipes) 8,1,1,32 8,1,1,64 8,1,1,128

Each variant copies the shipped digits recipes into a temporary folder with its `[data]` edited
(`options = { image_size, channels }`, `crop_padding`, `batch_size`), then runs the main job there cold
(`pytest --optcheck recipes -n auto` on an empty cache, no ledger: the ledger holds the shipped size's
values) and prints one Markdown row: pytest's wall time, the budgets that failed, each recipe's accuracy
drop and each speed-up. Run it on an idle machine: the speed-ups are timed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ["16,3,4,32", "8,1,1,32", "8,1,1,64", "8,1,1,128"]


def edit(text: str, size: int, channels: int, padding: int, batch: int) -> str:
    data, sep, rest = text.partition("\n[model]")
    data = re.sub(r"options = \{[^}]*\}", f"crop_padding = {padding}\noptions = {{ image_size = {size}, "
                                           f"channels = {channels} }}", data)
    data = re.sub(r"(?m)^batch_size = \d+", f"batch_size = {batch}", data)
    return data + sep + rest


def run(variant: str) -> str:
    size, channels, padding, batch = (int(v) for v in variant.split(","))
    with tempfile.TemporaryDirectory(prefix="optcheck-size-") as tmp:
        root = Path(tmp)
        (root / "recipes").mkdir()
        for path in sorted((ROOT / "recipes").glob("digits_*.toml")):
            (root / "recipes" / path.name).write_text(edit(path.read_text(), size, channels, padding, batch))
        (root / "pytest.ini").write_text("[pytest]\noptcheck_ledger = off\n")
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "--optcheck", "recipes", "-n", "auto", "-q",
                               "-p", "no:cacheprovider", "-p", "no:hypothesispytest", f"--optcheck-cache-dir={root / 'cache'}",
                               f"--optcheck-report={root / 'report.json'}"], cwd=root, capture_output=True, text=True)
        wall = time.perf_counter() - started
        failed = sorted(set(re.findall(r"(?m)^FAILED recipes/digits_resnet20_(\S+?)\.toml::(\S+)", proc.stdout)))
        report = json.loads((root / "report.json").read_text())
    drops, speedups = [], []
    for rec in report["recipes"]:
        name = rec["recipe"].removeprefix("digits_resnet20_")
        verdicts = rec["verdicts"]
        if "accuracy_drop_under" in verdicts:
            drops.append(f"{name} {-100 * verdicts['accuracy_drop_under']['details']['accuracy_drop']:+.2f} pp")
        if "speedup_at_least" in verdicts:
            d = verdicts["speedup_at_least"]["details"]
            speedups.append(f"{name} {d['speedup']:.2f}x [{d['speedup_low']:.2f}, {d['speedup_high']:.2f}]")
    return (f"| {channels}x{size}x{size}, crop padding {padding}, batch {batch} | {wall:.1f} s | "
            f"{', '.join(f'{r}::{b}' for r, b in failed) or 'none'} | {'; '.join(drops)} | {'; '.join(speedups)} |")


def main(argv: list[str]) -> None:
    print("| input, batch | cold `-n auto` | budgets failed | Δ acc (final stage) | speed-up |")
    print("| --- | --- | --- | --- | --- |")
    for variant in argv or DEFAULT:
        print(run(variant), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
