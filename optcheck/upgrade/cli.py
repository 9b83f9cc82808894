"""``python -m optcheck.upgrade`` (also ``optcheck-upgrade``): the recipes under candidate requirements,
diffed against today's environment on this machine.

    python -m optcheck.upgrade nvidia-modelopt==0.46.1                      # one pin changed
    python -m optcheck.upgrade -r requirements.lock --recipes recipes       # a team's candidate lock file
    python -m optcheck.upgrade --older candidate nvidia-modelopt==0.43.0    # must today read 0.43's checkpoints?

Exit status: 0 nothing moved that the upgrade must explain; 1 something did (``diff.py`` says what);
2 the candidate cannot be installed, or the command was misused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m optcheck.upgrade", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("candidate", nargs="*", help="requirements of the candidate, e.g. nvidia-modelopt==0.46.1")
    p.add_argument("-r", "--requirements", type=Path, action="append", default=[],
                   help="a requirements / lock file of the candidate (one 'name==version' per line)")
    p.add_argument("--today", action="append", default=[], metavar="REQ",
                   help="build today's side too, from this environment with REQ changed (default: this "
                        "environment as it is)")
    p.add_argument("--recipes", nargs="+", default=["recipes"], help="recipe files or folders (default: recipes)")
    p.add_argument("--work", type=Path, default=Path(".optcheck/upgrade"),
                   help="environments, caches, reports (default: .optcheck/upgrade; reused between runs)")
    p.add_argument("-n", "--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="pytest-xdist workers per session (default: 2 on 2 cores or more)")
    p.add_argument("--older", choices=("auto", "today", "candidate"), default="auto",
                   help="whose checkpoints must restore on the other side (default: the side whose changed "
                        "packages have the lower versions)")
    p.add_argument("--find-links", action="append", default=[], metavar="DIR", help="passed to pip")
    p.add_argument("--no-index", action="store_true", help="passed to pip")
    p.add_argument("--known", type=Path, default=Path("optcheck-upgrades.toml"),
                   help="known upgrade failures, each with its ticket (default: optcheck-upgrades.toml, if present)")
    p.add_argument("--json", type=Path, default=None, help="write the comparison as JSON here")
    p.add_argument("--markdown", type=Path, default=None,
                   help="append the Markdown summary here (default: $GITHUB_STEP_SUMMARY when set)")
    p.epilog = "Arguments after -- go to both pytest sessions (e.g. -- -k 'not latency')."
    return p


def older_side(versions: dict[str, dict[str, str]], named: list[str]) -> str:
    """Whose named packages have the lower versions: that side wrote the older checkpoints ("today"
    unless every named package is older in the candidate)."""
    from packaging.version import InvalidVersion, Version

    from optcheck.upgrade.environment import requirement_name

    votes = []
    for name in (requirement_name(r) for r in named):
        a, b = versions["today"].get(name), versions["candidate"].get(name)
        try:
            if a and b and Version(a) != Version(b):
                votes.append("candidate" if Version(b) < Version(a) else "today")
        except InvalidVersion:
            continue
    return "candidate" if votes and all(v == "candidate" for v in votes) else "today"


def main(argv: list[str] | None = None) -> int:
    from optcheck.core.errors import OptcheckError
    from optcheck.upgrade import diff, environment, render, sessions

    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    a = parser().parse_args(argv[:split])
    pytest_args = tuple(argv[split + 1:])
    rootdir = Path.cwd()
    started = time.perf_counter()
    pip_args = (*(f"--find-links={d}" for d in a.find_links), *(("--no-index",) if a.no_index else ()))
    work = a.work.resolve()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        requirements = list(a.candidate)
        for path in a.requirements:
            requirements += environment.read_requirements(path)
        if not requirements:
            raise environment.CandidateError("no candidate: name requirements (e.g. nvidia-modelopt==0.46.1) or "
                                             "a requirements file with -r")
        today = (environment.build(a.today, work, label="today", pip_args=pip_args, log=log) if a.today
                 else environment.today())
        candidate = environment.build(requirements, work, label="candidate", pip_args=pip_args, log=log)
        from optcheck.upgrade.known import load

        known = load(a.known)
    except (environment.CandidateError, OptcheckError) as exc:
        print(f"optcheck upgrade: {exc}", file=sys.stderr)
        return 2
    versions = {env.label: environment.installed(env.python) for env in (today, candidate)}
    candidate.changes = {n: [versions["today"].get(n), versions["candidate"].get(n)]  # against today's side
                         for n in sorted(set(versions["today"]) | set(versions["candidate"]))
                         if versions["today"].get(n) != versions["candidate"].get(n)}
    older = a.older if a.older != "auto" else older_side(versions, requirements)
    runs = {env.label: sessions.run_recipes(env, a.recipes, work, rootdir=rootdir, workers=a.workers,
                                            pytest_args=pytest_args, log=log) for env in (today, candidate)}
    jobs = sessions.checkpoint_jobs(runs["today"], work, rootdir) + sessions.checkpoint_jobs(runs["candidate"], work,
                                                                                              rootdir)
    probes = {env.label: sessions.probe(env, jobs, work, rootdir=rootdir, log=log) for env in (today, candidate)}
    ledger, ledger_error = _ledger(runs["today"].report, rootdir)
    comparison = diff.compare(runs["today"], runs["candidate"], probes, ledger=ledger, older=older, known=known,
                              versions=versions, ledger_error=ledger_error)
    wall = time.perf_counter() - started
    print(render.text(comparison))
    print(f"(wall time {wall:.0f} s: candidate environment {candidate.seconds:.1f} s"
          f"{' (reused)' if candidate.reused else ''}, sessions {runs['today'].seconds:.0f} s + "
          f"{runs['candidate'].seconds:.0f} s, restores {probes['today'].seconds:.0f} s + "
          f"{probes['candidate'].seconds:.0f} s)")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        body = {**comparison.as_dict(), "wall_seconds": round(wall, 1),
                "probe_seconds": {k: round(v.seconds, 1) for k, v in probes.items()}}
        a.json.write_text(json.dumps(body, indent=1, default=str))
    summary = a.markdown or (Path(os.environ["GITHUB_STEP_SUMMARY"]) if os.environ.get("GITHUB_STEP_SUMMARY") else None)
    if summary is not None:
        with open(summary, "a", encoding="utf-8") as f:
            f.write(render.markdown(comparison))
    return 1 if comparison.failed else 0


def _ledger(report: dict, rootdir: Path):
    """``(ledger, error)``: the committed ledger the sessions judged against (its tolerances judge the
    metric deltas), read with each recipe's team metrics (the fields its entries may hold); ``(None, "")``
    when the sessions ran without a ledger; ``(None, why)`` when it cannot be read (the comparison fails:
    metrics that go unjudged must not pass silently)."""
    from optcheck.ledger.entries import LedgerError, load_ledger

    path = report.get("meta", {}).get("ledger")
    if not path or path == "off":
        return None, ""
    path = Path(path) if Path(path).is_absolute() else rootdir / path
    team = {r["recipe"]: {name for stage in r.get("stages", {}).values()
                          for name in ((stage.get("metrics") or {}).get("extra") or {})}
            for r in report.get("recipes", [])}
    try:
        return load_ledger(path, metrics=team), ""
    except LedgerError as exc:
        return None, str(exc)
