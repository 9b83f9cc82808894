"""The zoo matrix (model x phase) from a session's plain-data results: the verdicts of a zoo recipe's
items, as ``plugin.results.merged(state)`` (or a merged set of shard reports: ``merge.py``) hands them over.

Cells: ✓ passed, ✗ failed, "known failure" (xfailed: the ledger's known failure, as recorded),
"✗ XPASS" (a known failure that passed: fixed upstream, the entry must go), – not run (after an
earlier phase failed), · not selected here (another shard, or deselected).
"""

from __future__ import annotations

from typing import Any

CELL = {"passed": "✓", "failed": "✗", "error": "✗", "xfailed": "known failure", "xpassed": "✗ XPASS",
        "skipped": "–"}
NOT_SELECTED = "·"


def zoo_table(r: dict[str, Any]) -> dict[str, Any] | None:
    """``{"recipe", "phases", "models": [{model, label, input, phases: {phase: {outcome, seconds,
    message}}, seconds, cached}]}`` of one recipe's results, or None when it is not a zoo recipe."""
    from optcheck.recipes.zoo_phases import ALL_PHASES

    rows: dict[str, dict[str, Any]] = {}
    name = None
    for v in r.get("verdicts", {}).values():
        d = v.get("details") or {}
        if "zoo_phase" not in d:
            continue
        name = d.get("zoo_recipe") or name
        row = rows.setdefault(d["zoo_label"], {"model": d["zoo_model"], "label": d["zoo_label"],
                                               "input": d.get("zoo_input"), "index": d.get("zoo_index", 0),
                                               "phases": {}, "seconds": 0.0, "cached": False})
        message = (v.get("message") or "").strip()
        row["phases"][d["zoo_phase"]] = {"outcome": v["outcome"], "seconds": d.get("seconds"),
                                         "message": message[:600]}
        row["seconds"] = round(row["seconds"] + float(d.get("seconds") or 0.0), 3)
        row["cached"] = row["cached"] or d.get("verdict_cache") == "hit"
    if not rows:
        return None
    phases = [p for p in ALL_PHASES if any(p in row["phases"] for row in rows.values())]
    models = sorted(rows.values(), key=lambda row: row["index"])  # the recipe's order
    return {"recipe": name or r.get("recipe"), "phases": phases, "models": models}


def counts(zoo: dict[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in zoo["models"]:
        for cell in row["phases"].values():
            out[cell["outcome"]] = out.get(cell["outcome"], 0) + 1
    return out


def _cells(zoo: dict[str, Any], row: dict[str, Any]) -> list[str]:
    return [CELL.get(row["phases"][p]["outcome"], "?") if p in row["phases"] else NOT_SELECTED
            for p in zoo["phases"]]


def _seconds(row: dict[str, Any]) -> str:
    return f"{row['seconds']:.1f}" + (" (cached)" if row["cached"] else "")


def terminal_lines(zoo: dict[str, Any], path: str) -> list[str]:
    """The matrix as aligned text, then one line per failure, known failure and XPASS."""
    header = ["model", "input", *zoo["phases"], "seconds"]
    body = [[row["label"], str(row["input"] or ""), *_cells(zoo, row), _seconds(row)] for row in zoo["models"]]
    total = sum(row["seconds"] for row in zoo["models"])
    body.append([f"total ({len(zoo['models'])} models)", "", *["" for _ in zoo["phases"]], f"{total:.1f}"])
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [f"{zoo['recipe']} ({path}): the zoo matrix", ""]
    for line in [header, *body]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
    lines += _notes(zoo, plain=True)
    return lines


def markdown_lines(zoo: dict[str, Any], path: str) -> list[str]:
    c = counts(zoo)
    summary = ", ".join(f"{n} {k}" for k, n in sorted(c.items()))
    lines = [f"### {zoo['recipe']} (`{path}`): zoo matrix", "", f"{len(zoo['models'])} models; cells: {summary}", "",
             "| model | input | " + " | ".join(zoo["phases"]) + " | seconds |",
             "| --- | --- | " + "--- | " * len(zoo["phases"]) + "---: |"]
    for row in zoo["models"]:
        lines.append(f"| {row['label']} | {row['input'] or ''} | " + " | ".join(_cells(zoo, row))
                     + f" | {_seconds(row)} |")
    total = sum(row["seconds"] for row in zoo["models"])
    lines.append("| **total** | | " + " | ".join("" for _ in zoo["phases"]) + f" | {total:.1f} |")
    notes = _notes(zoo, plain=False)
    return lines + ([""] + notes if notes else []) + [""]


def _notes(zoo: dict[str, Any], *, plain: bool) -> list[str]:
    out = []
    for row in zoo["models"]:
        for phase, cell in row["phases"].items():
            if cell["outcome"] in ("failed", "error", "xfailed", "xpassed") and cell["message"]:
                first = cell["message"].splitlines()[0]
                first = first.replace("|", "\\|") if not plain else first
                label = f"{row['label']} {phase}" if plain else f"**{row['label']}** `{phase}`"
                out.append(f"- {label} {CELL[cell['outcome']]}: {first[:300]}")
    return out
