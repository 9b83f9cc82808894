"""A session's results as plain data: what each process measured and judged (``export``: an xdist
worker sends it home in ``workeroutput``), their merge on the process that writes the reports
(``merged``), a check's verdict from its pytest report (``verdict_of``), and pytest-benchmark's series
of the latency checks that ran on xdist workers (``benchmark_series``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def export(state) -> dict[str, Any]:
    """This process's part of the results, JSON-safe (what an xdist worker sends home)."""
    from optcheck.budgets.judges import budget_id
    from optcheck.core.jsonsafe import jsonsafe

    runs = {}
    for run in state.runs.values():
        rel = state.relpath(run.recipe.path)
        stages = {}
        for stage, art in run.artifacts.items():
            event = dict(run.events.get(stage, {}), worker=state.worker)
            stages[stage] = {"metrics": art.metrics.as_dict(), "events": [event]}
            if art.info.get("iterations"):  # a step that works in iterations: one row per iteration
                stages[stage]["iterations"] = art.info["iterations"]
            for key in ("loaded_from", "sha256", "warnings"):  # a trained baseline's origin; the build's warnings
                if art.info.get(key):
                    stages[stage][key] = art.info[key]
            if art.files:  # where its checkpoint lies (the upgrade diff restores it in another environment)
                stages[stage]["files"] = {name: str(path) for name, path in art.files.items()}
                stages[stage]["checkpoint"] = run.stages[stage].checkpoint
        runs[rel] = {
            "recipe": run.recipe.name, "path": rel, "seed": run.seed,
            "device": run.ctx.device.type if run.has_ctx else state.device,
            "threads": state.threads, "bounds": run.bounds, "stages": stages,
            "cache_seconds": {state.worker: round(run.cache_seconds, 4)},
            "budgets": {budget_id(stage, b): _limit_of(run.recipe, stage, b) for stage, b in run.recipe.budgets.refs()},
            "order": run.available_stages(),
            "primary_metric": next(({"name": m.name, "better": m.better} for m in run.recipe.metrics if m.primary),
                                   None),
            "ledger": state.ledger_checks.get(rel, {}),
        }
    # through JSON: plain str, int, float only. jsonsafe keeps str subclasses such as the
    # TorchVersion in a ledger entry's numerics fingerprint, which execnet cannot send from a worker
    return json.loads(json.dumps(jsonsafe({
        "worker": state.worker, "runs": runs,
        "ledger_updates": [[*k, v] for k, v in state.ledger_updates.items()],
    })))

def merged(state) -> tuple[list[dict[str, Any]], dict[tuple[str, str, str], dict]]:
    """Every process's results merged: ``(recipes, ledger_updates)``; recipes sorted by path."""
    recipes: dict[str, dict[str, Any]] = {}
    updates: dict[tuple[str, str, str], dict] = {}
    for part in [export(state), *state.remote]:
        for rel, run in part["runs"].items():
            mine = recipes.setdefault(rel, {**run, "stages": {}, "ledger": {}})
            mine["bounds"] = mine.get("bounds") or run.get("bounds")
            if mine is not run:
                mine["cache_seconds"] = {**mine.get("cache_seconds", {}), **run.get("cache_seconds", {})}
            for stage, info in run["stages"].items():
                have = mine["stages"].setdefault(stage, {"metrics": info["metrics"], "events": []})
                have["events"] += info["events"]
                for key in ("iterations", "loaded_from", "sha256", "warnings", "files", "checkpoint"):
                    if info.get(key):
                        have[key] = info[key]
            mine["ledger"].update(run.get("ledger", {}))
        for recipe, platform, stage, entry in part.get("ledger_updates", []):
            updates[(recipe, platform, stage)] = entry
    for rel, checks in state.verdicts.items():
        if rel in recipes:
            recipes[rel]["verdicts"] = checks
        else:  # skipped or failed before anything was built
            recipes[rel] = {"recipe": Path(rel).stem, "path": rel, "stages": {}, "ledger": {},
                            "budgets": {}, "verdicts": checks}
    for run in recipes.values():
        budgets, order = list(run.get("budgets", {})), run.get("order") or list(run["stages"])
        run["verdicts"] = dict(sorted(run.get("verdicts", {}).items(),
                                      key=lambda kv: _check_order(kv[0], budgets, order)))
        run["stages"] = {s: run["stages"][s] for s in order if s in run["stages"]}
    return [recipes[k] for k in sorted(recipes)], updates


def _check_order(check: str, budgets: list[str], stages: list[str]) -> tuple:
    """Budgets in the recipe's order, then the ledger checks in pipeline order (not finish order)."""
    ledger = [f"ledger[{s}]" for s in stages]
    if check in ledger:
        return (1, ledger.index(check), check)
    return (0, budgets.index(check) if check in budgets else len(budgets), check)


def _limit_of(recipe, stage: str | None, budget: str) -> Any:
    value = recipe.budgets.table(stage).limit(budget)
    return value.model_dump() if hasattr(value, "model_dump") else value


def verdict_of(report, props: dict[str, Any]) -> dict[str, Any]:
    """One check's outcome from its pytest report (works on the xdist controller too)."""
    outcome = report.outcome
    if hasattr(report, "wasxfail"):
        outcome = "xfailed" if report.skipped else "xpassed"
    elif report.failed and report.when != "call":
        outcome = "error"
    elif report.failed and "[XPASS(strict)]" in str(report.longrepr):
        outcome = "xpassed"
    message = ""
    if report.skipped and isinstance(report.longrepr, tuple):
        message = str(report.longrepr[2]).removeprefix("Skipped: ")
    elif report.failed:
        message = report.longreprtext.strip()[:2000]
    elif hasattr(report, "wasxfail"):
        message = report.wasxfail
    details = {k.removeprefix("optcheck."): v for k, v in props.items()
               if k.startswith("optcheck.") and k not in ("optcheck.recipe", "optcheck.check", SERIES)}
    if details.get("report_only") == "broken" and outcome == "passed":
        outcome = "broken (report only)"
    return {"outcome": outcome, "message": message, "details": details}


SERIES = "optcheck.latency_series"  # a latency check's timed series, sent home from an xdist worker


def benchmark_series(config, props: dict[str, Any]) -> None:
    """On the xdist controller: a latency check that ran on a worker, with pytest-benchmark output asked
    for (``--benchmark-json``, ``--benchmark-save``), sent both timed series home in its report; hand
    them to this process's pytest-benchmark session, which writes its JSON and table at the end (it
    turned itself off under xdist and would write nothing). The series say which worker timed them."""
    data = props.get(SERIES)
    if not data:
        return
    from optcheck.checks.latency import to_benchmark
    from optcheck.core.private_api import benchmark_session

    session = benchmark_session(config)
    if session is not None:
        to_benchmark(session.benchmarks.append, data)
