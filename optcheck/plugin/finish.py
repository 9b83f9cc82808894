"""The end of a session: ledger updates, the JSON report, the step summary and the plot, written
once by the process that has every result."""

from __future__ import annotations

from optcheck.report.render import add_zoo_tables

import json
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from optcheck.report.render import markdown


class ReportWarning(UserWarning):
    """A report file could not be written (the tests' outcome is unaffected)."""


# -- verdicts -----------------------------------------------------------------------------------------



# -- metadata ---------------------------------------------------------------------------------------------

def git_info(cwd: Path) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD") or os.environ.get("GITHUB_SHA")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "branch": git("rev-parse", "--abbrev-ref", "HEAD") or os.environ.get("GITHUB_REF_NAME"),
            "dirty": None if status is None else bool(status)}


def session_meta(config, state) -> dict[str, Any]:
    from optcheck.core.numerics import dist_version

    gpu = None
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
    import optcheck

    return {
        "optcheck": optcheck.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "args": list(config.invocation_params.args),
        "machine": {"platform": platform.platform(), "machine": platform.machine(),
                    "processor": platform.processor() or None, "cpus": os.cpu_count(),
                    "python": platform.python_version(), "gpu": gpu, "host": platform.node()},
        "versions": {d: dist_version(d, None) for d in ("torch", "torchvision", "nvidia-modelopt", "torchprofile",
                                              "pytest", "pytest-xdist", "numpy")},
        "git": git_info(config.rootpath),
        "device": state.device, "threads": state.threads,
        "workers": int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0) or len(state.remote) or 1,
        "cache": state.cache_note,
        "ledger": state.ledger.display if state.ledger else None,
        "update": state.update,
        "shard": config.getoption("optcheck_shard", None),
    }


# -- the end of the session ---------------------------------------------------------------------------

def finish_session(config, state) -> list[str]:
    """Write the ledger updates and every requested report, once; return lines for the summary."""
    from optcheck.ledger.writing import write_updates

    from optcheck.plugin.results import merged

    recipes, updates = merged(state)
    add_zoo_tables(recipes)
    written: list[str] = []
    order = {r["recipe"]: r.get("order", list(r["stages"])) for r in recipes}
    if updates and state.ledger is not None and _write(state.ledger.path,
                                                       lambda p: write_updates(p, updates, order)):
        written.append(f"ledger: wrote {len(updates)} entr{'y' if len(updates) == 1 else 'ies'} to "
                       f"{state.ledger.display} (review the diff and commit it)")
    doc = {"meta": session_meta(config, state), "recipes": recipes}
    state.final = doc
    base = config.invocation_params.dir
    target = config.getoption("optcheck_report")
    if target:
        path = Path(target) if Path(target).is_absolute() else base / target
        if _write(path, lambda p: p.write_text(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")):
            written.append(f"report: {target}")
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        def append(p: Path) -> None:
            with open(p, "a", encoding="utf-8") as f:
                f.write(markdown(doc) + "\n")
        if _write(Path(summary), append):
            written.append(f"step summary: appended to $GITHUB_STEP_SUMMARY ({summary})")
    target = config.getoption("optcheck_plot")
    if target:
        from optcheck.report.plot import write_plot

        path = Path(target) if Path(target).is_absolute() else base / target
        if _write(path, lambda p: write_plot(doc, p)):
            written.append(f"plot: {target}")
    return written




def _write(path: Path, writer) -> bool:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer(path)
        return True
    except Exception as exc:  # a report must never turn a green run red, nor hide why it is missing
        warnings.warn(ReportWarning(f"optcheck could not write {path}: {type(exc).__name__}: {exc}"), stacklevel=2)
        return False
