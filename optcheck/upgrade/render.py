"""The upgrade comparison for people: terminal text and GitHub step-summary Markdown (the JSON is
``Comparison.as_dict``)."""

from __future__ import annotations

from typing import Any

from optcheck.upgrade.diff import Comparison, MetricRow, Restore


def _changes(env: dict[str, Any]) -> str:
    if not env.get("changes"):
        return "today's environment" if not env.get("requirements") else "nothing changed"
    return ", ".join(f"{n} {a or 'absent'} -> {b or 'absent'}" for n, (a, b) in env["changes"].items())


def _value(metric: str, v: Any) -> str:
    if v is None:
        return "-"
    if metric in ("test_acc", "val_acc", "sparsity") and isinstance(v, float):
        return f"{v * 100:.2f}%"
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _delta(row: MetricRow) -> str:
    d = row.delta
    if d is None:
        return ""
    if row.metric in ("test_acc", "val_acc", "sparsity"):
        return f"{d * 100:+.2f} pp"
    if isinstance(row.today, (int, float)) and row.today and row.metric in ("flops", "params", "size_bytes",
                                                                              "ckpt_bytes"):
        return f"{d / row.today * 100:+.2f}%"
    return f"{d:+.4g}"


def _tolerance(row: MetricRow) -> str:
    if row.tolerance is None:
        return "not in ledger"
    if row.metric == "test_acc":
        return f"+-{row.tolerance * 100:.2f} pp"
    return f"+-{row.tolerance * 100:.3g}%" if row.relative else f"+-{row.tolerance:.4g}"


def restore_line(items: list[Restore], writer: str, reader: str, versions: dict[str, str]) -> str:
    mine = [r for r in items if r.writer == writer]
    if not mine:
        return ""
    exact = sum(r.status == "exact" for r in mine)
    numerics = sum(r.status == "numerics" for r in mine)
    bad = [r for r in mine if r.status not in ("exact", "numerics")]
    text = (f"checkpoints saved by {versions[writer]} restore under {versions[reader]}: "
            f"{len(mine) - len(bad)}/{len(mine)} stages ({exact} exact"
            + (f", {numerics} within numerics" if numerics else "") + ")")
    if not mine[0].judged:
        text += " (informational: new -> old)"
    for r in bad:
        text += f"\n      {r.stage}: {r.status}: {r.detail}"
    return text


def _versions(c: Comparison) -> dict[str, str]:
    """How each side is named in restore lines: the versions that differ, e.g. "modelopt 0.46.1"
    (``changes``: name -> [today's version, the candidate's])."""
    changes = c.candidate.get("changes") or {}
    names = list(changes)[:3]
    out = {}
    for label, index in (("today", 0), ("candidate", 1)):
        parts = [f"{n.removeprefix('nvidia-')} {changes[n][index] or 'absent'}" for n in names]
        out[label] = f"{label} ({', '.join(parts)})" if parts else label
    return out


def _same(r) -> str:
    """The checks that agree, grouped by outcome: ``passed: a, b; failed: c``."""
    groups: dict[str, list[str]] = {}
    for v in r.verdicts:
        if not v["flipped"]:
            key = v["today"] if v["today"] == v["candidate"] else f"{v['today']} / {v['candidate']}"
            groups.setdefault(key, []).append(v["check"].split("::", 1)[-1])
    return "; ".join(f"{k}: {', '.join(names)}" for k, names in groups.items())


def _ledger_line(c: Comparison) -> str:
    if c.ledger_error:
        return f"  ledger: could not be read, metrics unjudged: {c.ledger_error.splitlines()[0]}"
    return f"  ledger: {c.ledger} (its calibrated tolerances judge the metrics)" if c.ledger else \
        "  ledger: none (the sessions ran without one): metrics shown, not judged"


def text(c: Comparison) -> str:
    versions = _versions(c)
    s = c.sessions
    built = "reused" if c.candidate.get("reused") else f"built in {c.candidate.get('seconds', 0):.1f} s"
    lines = [f"optcheck upgrade: today vs candidate ({_changes(c.candidate)})",
             f"  candidate environment: {built}; "
             f"sessions: today {s['today']['seconds']:.0f} s (exit {s['today']['exit']}), candidate "
             f"{s['candidate']['seconds']:.0f} s (exit {s['candidate']['exit']})", _ledger_line(c)]
    for r in c.recipes:
        lines.append(f"{r.path} ({r.name})")
        if r.only_one_side:
            lines.append(f"  {r.only_one_side}")
            continue
        lines.append(f"  verdicts: {r.same_verdicts} the same, {len(r.flips)} flipped")
        if r.verdicts:
            lines.append(f"    the same: {_same(r)}")
        for f in r.flips:
            lines.append(f"    FLIPPED {f['check']}: {f['today']} today, {f['candidate']} in the candidate"
                         + (f": {f['message']}" if f["message"] else "")
                         + ("" if f["judged"] else " (informational: a newer golden read by the older stack)"))
        moved = [m for m in r.metrics if m.delta not in (None, 0) or m.outside]
        if moved:
            lines.append(f"  {'stage':<11}{'metric':<12}{'today':>14}{'candidate':>14}{'delta':>11}  ledger tolerance")
            for m in moved:
                lines.append(f"  {m.stage:<11}{m.metric:<12}{_value(m.metric, m.today):>14}"
                             f"{_value(m.metric, m.candidate):>14}{_delta(m):>11}  {_tolerance(m)}"
                             + ("  OUTSIDE" if m.outside else ""))
        else:
            lines.append("  metrics: every stage's metrics identical")
        lines.append("  structure: " + ("unchanged" if not r.structure else "; ".join(
            f"{x['stage']}.{x['fact']} {x['today']!r} -> {x['candidate']!r}" for x in r.structure)))
        for x in r.latency:
            a = f"{x['today']:.3f}" if x["today"] is not None else "-"
            b = f"{x['candidate']:.3f}" if x["candidate"] is not None else "-"
            lines.append(f"  latency ratio {x['check']}: {a} today, {b} in the candidate")
        for writer, reader in ((c.older, "candidate" if c.older == "today" else "today"),
                               ("candidate" if c.older == "today" else "today", c.older)):
            line = restore_line(r.restores, writer, reader, versions)
            if line:
                lines.append(f"  {line}")
    if c.new_warnings:
        lines.append("warnings new in the candidate:")
        lines += [f"  {w['category']}: {w['message']} (from {w['module'] or '?'}; first in {w['first_seen']})"
                  for w in c.new_warnings]
    if c.gone_warnings:
        lines.append(f"warnings gone in the candidate: {len(c.gone_warnings)}")
    _, known, _ = c.judged()
    if known:
        lines.append(f"known failures ({len(known)}, expected: optcheck-upgrades.toml):")
        lines += [f"  {k['where']}: {k['ticket']}" for k in known]
    if c.failed:
        lines.append(f"FAIL: {len(c.reasons)} difference(s) the upgrade must explain:")
        lines += [f"  {reason}" for reason in c.reasons]
    else:
        lines.append("PASS: no verdict flipped, every ledger-held metric and structural fact within its tolerance, "
                     "checkpoints of the older side restore on the newer")
    return "\n".join(lines)


def markdown(c: Comparison) -> str:
    """The same, for ``$GITHUB_STEP_SUMMARY``: what failed, one row per recipe, then each recipe's
    verdicts (every one, flips marked), moved metrics, structural facts, latency ratios and restores in
    a collapsed section; warnings new in the candidate and the known failures last."""
    versions = _versions(c)
    out = [f"### optcheck upgrade: {'FAIL' if c.failed else 'PASS'}", "",
           f"Candidate: {_changes(c.candidate)}", "", _ledger_line(c).strip(), ""]
    if c.failed:
        out += ["| what moved |", "| --- |", *(f"| {_cell(reason)} |" for reason in c.reasons), ""]
    out += ["| recipe | verdicts same | flipped | metrics moved | outside tolerance | structure changed | restores |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in c.recipes:
        moved = [m for m in r.metrics if m.delta not in (None, 0)]
        judged = [x for x in r.restores if x.judged]
        ok = sum(x.status in ("exact", "numerics") for x in judged)
        out.append(f"| `{r.path}` | {r.same_verdicts} | {len(r.flips)} | {len(moved)} | "
                   f"{sum(m.outside for m in r.metrics)} | {len(r.structure)} | {ok}/{len(judged)} old -> new |")
    for r in c.recipes:
        out += ["", f"<details><summary><code>{r.path}</code>"
                f"{': ' + str(len(r.flips)) + ' flipped' if r.flips else ''}</summary>", ""]
        if r.only_one_side:
            out += [r.only_one_side, "", "</details>"]
            continue
        out += ["| check | today | candidate | |", "| --- | --- | --- | --- |",
                *(f"| `{v['check'].split('::', 1)[-1]}` | {v['today']} | {v['candidate']} | "
                  f"{'**FLIPPED**' if v['flipped'] else ''} |" for v in r.verdicts)]
        moved = [m for m in r.metrics if m.delta not in (None, 0) or m.outside]
        if moved:
            out += ["", "| stage | metric | today | candidate | delta | ledger tolerance | |",
                    "| --- | --- | ---: | ---: | ---: | --- | --- |",
                    *(f"| {m.stage} | {m.metric} | {_value(m.metric, m.today)} | {_value(m.metric, m.candidate)} | "
                      f"{_delta(m)} | {_tolerance(m)} | {'**OUTSIDE**' if m.outside else ''} |" for m in moved)]
        else:
            out += ["", "Metrics: every stage's identical."]
        out.append("")
        if r.structure:
            out += [*(f"- structure `{x['stage']}.{x['fact']}`: {x['today']!r} -> {x['candidate']!r}"
                          for x in r.structure)]
        out += [f"- latency ratio `{x['check'].split('::', 1)[-1]}`: "
                f"{'-' if x['today'] is None else format(x['today'], '.3f')} today, "
                f"{'-' if x['candidate'] is None else format(x['candidate'], '.3f')} in the candidate"
                for x in r.latency]
        for writer, reader in (("today", "candidate"), ("candidate", "today")):
            line = restore_line(r.restores, writer, reader, versions)
            if line:
                head, *bad = line.split("\n")
                out += [f"- {head}", *(f"  - {_cell(b.strip())}" for b in bad)]
        out += ["", "</details>"]
    if c.new_warnings:
        out += ["", "Warnings new in the candidate:", "",
                *(f"- `{w['category']}`: {_cell(w['message'])} (`{w['module']}`)" for w in c.new_warnings)]
    _, known, _ = c.judged()
    if known:
        out += ["", "Known failures (expected: optcheck-upgrades.toml):", "",
                *(f"- {k['where']}: {k['ticket']}" for k in known)]
    return "\n".join(out) + "\n"


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell or list item: one line, no column breaks."""
    return " ".join(str(text).split()).replace("|", "\\|")
