"""Reports from the session's plain-data results: the terminal table, the JSON report, the GitHub
step-summary Markdown, and (through ``plot.py``) the accuracy-vs-FLOPs PNG.

The results are what ``plugin.results.merged(state)`` returns: one dict per recipe with its stages
(metrics and cache events per process), budget limits, check verdicts and ledger comparisons.
"""

from __future__ import annotations

from typing import Any

from optcheck.core.limits import human

_ICON = {"passed": "✅", "failed": "❌", "error": "❌", "skipped": "⏭️", "xfailed": "⚠️", "xpassed": "❗",
         "broken (report only)": "⚠️"}


def add_zoo_tables(recipes: list[dict[str, Any]]) -> None:
    """A zoo recipe's results get their matrix (``zoo_report.zoo_table``) under ``"zoo"``."""
    from optcheck.report.zoo_matrix import zoo_table

    for r in recipes:
        zoo = zoo_table(r)
        if zoo is not None:
            r["zoo"] = zoo
            r["recipe"] = zoo["recipe"]


# -- rendering ------------------------------------------------------------------------------------------

def stage_row(stage: str, m: dict[str, Any], base: dict[str, Any] | None) -> dict[str, str]:
    """One stage's figures as both tables show them; ``base``: the baseline's metrics (the first
    stage's), against which accuracy, FLOPs and size are given."""
    first = base is None or m is base
    size = m.get("size_bytes")
    base_size = (base or {}).get("size_bytes")
    return {
        "stage": stage,
        "test acc": f"{m['test_acc'] * 100:.2f}% (n={m['test_n']})",
        "Δ acc": "" if first else f"{(m['test_acc'] - base['test_acc']) * 100:+.2f} pp",
        "val acc": f"{m['val_acc'] * 100:.2f}% (n={m['val_n']})",
        "FLOPs": human(m["flops"]),
        "FLOPs %": "" if base is None else f"{m['flops'] / base['flops'] * 100:.1f}%",
        "params": human(m["params"]),
        "size": "-" if size is None else human(size, "B") + ("" if first or not base_size else
                                                             f" ({size / base_size * 100:.1f}%)"),
        "sparsity": "" if m.get("sparsity") is None else f"{m['sparsity'] * 100:.1f}%",
        "checkpoint": human(m["ckpt_bytes"], "B"),
        "time": f"{m['seconds']:.1f}s",
        **{name: f"{value:.4g}" for name, value in (m.get("extra") or {}).items()},  # the team's metrics
    }


# FLOPs are what a deployment computes with dense kernels (``build.measure.count_flops``)
SPARSE_NOTE = ("FLOPs of a stage with 2:4 sparse layers are their dense MACs x 2: 2:4 sparsity halves a layer's MACs "
               "only on hardware with sparse kernels (e.g. NVIDIA Sparse Tensor Cores), not in this count")


def results_table(name: str, metrics: dict[str, dict], verdicts: dict[str, str] | None = None) -> list[str]:
    """Lines of a fixed-width table; ``metrics`` maps stage -> ``Metrics.as_dict()`` in pipeline order
    (the first is the baseline) and ``verdicts`` check -> outcome."""
    base = next(iter(metrics.values()), None)
    rows = [stage_row(stage, m, base) for stage, m in metrics.items()]
    team = list((base or {}).get("extra") or {})
    header = [h for h in ("stage", "test acc", "Δ acc", "val acc", *team, "FLOPs", "FLOPs %", "params", "size",
                          "sparsity", "checkpoint", "time") if h != "sparsity" or any(r["sparsity"] for r in rows)]
    table = [tuple(header)] + [tuple(r.get(h, "-") for h in header) for r in rows]
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [f"optcheck results: {name}", fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*r) for r in table[1:]]
    if any(r["sparsity"] for r in rows):
        lines.append(SPARSE_NOTE)
    if verdicts:
        lines.append("checks: " + ", ".join(f"{b} {v}" for b, v in verdicts.items()))
    return lines


def provenance(r: dict[str, Any]) -> list[str]:
    """Where a trained baseline came from: "baseline: loaded from <file> (sha256 ...)", not trained."""
    out = []
    for stage, info in r.get("stages", {}).items():
        origin = info.get("loaded_from")
        if origin:
            digest = f" (sha256 {info['sha256']})" if info.get("sha256") else ""
            out.append(f"{stage}: loaded from {origin}{digest}, not trained")
    return out


def cache_summary(stages: dict[str, dict]) -> str:
    parts = []
    for stage, info in stages.items():
        events = [e for e in info["events"] if e.get("cache") not in (None, "not cached")]
        if not events:
            continue
        built = [e["worker"] for e in events if e["cache"] == "built"]
        hits = [e for e in events if str(e["cache"]).startswith("hit")]
        if built:
            text = f"built by {', '.join(built)}" + (f", reused by {len(hits)}" if hits else "")
        elif hits:
            text = "cache hit"
        else:
            text = "cache off"
        parts.append(f"{stage} {text}")
    return "; ".join(parts)


def terminal_lines(state, written: list[str]) -> list[str]:
    doc = getattr(state, "final", None)
    if doc is None:
        return []
    lines: list[str] = []
    for r in doc["recipes"]:
        if r.get("zoo"):
            from optcheck.report.zoo_matrix import terminal_lines as zoo_lines

            lines += zoo_lines(r["zoo"], r["path"]) + [""]
            continue
        if not r["stages"]:
            continue
        metrics = {s: info["metrics"] for s, info in r["stages"].items()}
        verdicts = {c: v["outcome"] for c, v in r.get("verdicts", {}).items()}
        lines += results_table(f"{r['recipe']} ({r['path']}, seed {r.get('seed')})", metrics, verdicts)
        lines += provenance(r)
        for check, v in r.get("verdicts", {}).items():  # the accuracy verdicts with their intervals
            explain = (v.get("details") or {}).get("explain")
            if explain:
                lines.append(f"{check}: {explain}")
        for stage, info in r["stages"].items():
            if info.get("iterations"):
                lines += iteration_table(stage, info["iterations"], info["metrics"])
        cache = cache_summary(r["stages"])
        replayed = [c for c, v in r.get("verdicts", {}).items() if (v.get("details") or {}).get("verdict_cache") == "hit"]
        if replayed:  # said out loud: these were not measured again in this session
            cache += ("; " if cache else "") + (f"verdicts of {', '.join(replayed)} from the cache (nothing they "
                                                 "depend on changed; --optcheck-rebuild judges them again)")
        if cache:
            lines.append(f"cache: {cache}")
        for stage, check in r.get("ledger", {}).items():
            if check.get("mismatches"):
                lines.append(f"ledger {stage}: " + "; ".join(check["mismatches"]))
        lines.append("")
    lines.append(f"optcheck cache: {state.cache_note}; ledger: {doc['meta']['ledger'] or 'off'}")
    lines += written
    return lines


def iteration_rows(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """A stage built in iterations (Torch-Pruning's steps): header and one row per iteration."""
    from optcheck.core.limits import human

    tuned = any("val_acc_finetuned" in row for row in rows)
    header = ["step", "FLOPs", "params", "val acc"] + (["val acc after fine-tune"] if tuned else [])
    body = []
    for row in rows:
        cells = [str(row["step"]), human(row["flops"]), human(row["params"]), _pct(row.get("val_acc"))]
        if tuned:
            cells.append(_pct(row["val_acc_finetuned"]) if "val_acc_finetuned" in row else "-")
        body.append(cells)
    return header, body


def iteration_table(stage: str, rows: list[dict[str, Any]], metrics: dict[str, Any]) -> list[str]:
    header, body = iteration_rows(rows)
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    out = [f"{stage}: {len(rows)} iterations (then test acc {_pct(metrics.get('test_acc'))})"]
    for cells in [header, ["-" * w for w in widths], *body]:
        out.append("  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
    return out


def latency_by_stage(r: dict[str, Any]) -> dict[str, str]:
    """A recipe's measured latency ratios (its latency budgets' details), per stage: "0.80x [0.79, 0.81]
    (torch b1)" — the stage's time over the baseline's, never an absolute time."""
    out: dict[str, str] = {}
    for v in r.get("verdicts", {}).values():
        d = v.get("details") or {}
        if "ratio" in d and d.get("stage") and d["stage"] not in out:
            out[d["stage"]] = (f"{d['ratio']:.2f}x [{d['low']:.2f}, {d['high']:.2f}] ({d['runtime']} "
                               f"b{d['batch_size']})")
    return out


def _pct(x: float | None) -> str:
    return "" if x is None else f"{x * 100:.2f}%"


def _signed(x: float, fmt: str) -> str:
    text = format(x, fmt)
    digits = text.lstrip("+-")
    return "±" + digits if not digits.strip("0.,") else text


def _limit_text(limit: Any) -> str:
    if limit is None or limit is True:
        return ""
    if isinstance(limit, float) and limit >= 1000:
        return f"limit {human(limit)}"
    if isinstance(limit, dict):
        return "limit " + ", ".join(f"{k}={v:g}" for k, v in limit.items())
    return f"limit {limit}"


def markdown(doc: dict[str, Any]) -> str:
    """The GitHub step summary: per recipe, the checks and the stage metrics with ledger deltas."""
    meta = doc["meta"]
    commit = (meta["git"].get("commit") or "unknown")[:12]
    devices = sorted({r.get("device") for r in doc["recipes"] if r.get("device") and r["stages"]}) or [meta["device"]]
    machine = meta["machine"]["gpu"] or f"{meta['machine']['cpus']} CPUs"
    out = [f"## optcheck — commit `{commit}`, {', '.join(devices)} ({machine})", ""]
    for r in doc["recipes"]:
        if r.get("zoo"):
            from optcheck.report.zoo_matrix import markdown_lines

            out += markdown_lines(r["zoo"], r["path"])
            continue
        out.append(f"### {r['recipe']} (`{r['path']}`)")
        out.append("")
        verdicts = r.get("verdicts", {})
        outcomes = {v["outcome"] for v in verdicts.values()}
        if verdicts and outcomes == {"skipped"}:
            reasons = sorted({v.get("message", "") for v in verdicts.values()})
            out += [f"⏭️ all {len(verdicts)} checks skipped: {'; '.join(reasons)}", ""]
            continue
        if verdicts:
            out += ["| check | verdict | detail |", "| --- | --- | --- |"]
            for check, v in verdicts.items():
                detail = (v.get("details") or {}).get("explain") or _limit_text(r.get("budgets", {}).get(check))
                detail = str(detail).replace("|", "\\|")
                if v["outcome"] != "passed" and v.get("message"):
                    first = v["message"].splitlines()[0].replace("|", "\\|")
                    detail = (detail + "; " if detail else "") + first[:200]
                out.append(f"| {check} | {_ICON.get(v['outcome'], '')} {v['outcome']} | {detail} |")
            out.append("")
        if r["stages"]:
            base = next(iter(r["stages"].values()))["metrics"]
            speed = latency_by_stage(r)
            team = list(base.get("extra") or {})
            out += ["| stage | test acc | Δ acc | " + "".join(f"{t} | " for t in team) + "FLOPs | "
                    + ("latency ratio | " if speed else "") + "params | size | checkpoint | cache | ledger Δ |",
                    "| --- | --- | --- | " + "--- | " * len(team) + "--- | " + ("--- | " if speed else "")
                    + "--- | --- | --- | --- | --- |"]
            for stage, info in r["stages"].items():
                m = info["metrics"]
                row = stage_row(stage, m, base)
                flops = row["FLOPs"] + (f" ({row['FLOPs %'].split('.')[0]}%)" if m is not base else "")
                led = r.get("ledger", {}).get(stage)
                if led is None:
                    ledger = ""
                elif led.get("delta") is None:
                    ledger = "no entry" + (" (written)" if led.get("updated") else "")
                else:
                    d = led["delta"]
                    ledger = (f"acc {_signed(d['test_acc'] * 100, '+.2f')} pp, FLOPs {_signed(d['flops'], '+,')}, "
                              f"params {_signed(d['params'], '+,')}" + (" ❌" if led.get("mismatches") else " ✅"))
                cache = cache_summary({stage: info}).removeprefix(f"{stage} ") or "-"
                lat = (f"{speed[stage]} | " if stage in speed else "- | ") if speed else ""
                cells = "".join(f"{row.get(t, '-')} | " for t in team)
                out.append(f"| {stage} | {_pct(m['test_acc'])} (n={m['test_n']}) | {row['Δ acc']} | {cells}{flops} | "
                           f"{lat}{row['params']} | {row['size']} | {row['checkpoint']} | {cache} | {ledger} |")
            out.append("")
            for line in provenance(r):
                out += [line, ""]
            if any(info["metrics"].get("sparsity") is not None for info in r["stages"].values()):
                out += [f"<sub>{SPARSE_NOTE}</sub>", ""]
            for stage, info in r["stages"].items():
                if info.get("iterations"):
                    header, body = iteration_rows(info["iterations"])
                    out += [f"{stage}, per iteration:", "", "| " + " | ".join(header) + " |",
                            "|" + " --- |" * len(header), *("| " + " | ".join(c) + " |" for c in body), ""]
    out.append(f"<sub>cache: {meta['cache']} · ledger: {meta['ledger'] or 'off'} · workers: {meta['workers']} · "
               f"torch {meta['versions']['torch']}, modelopt {meta['versions']['nvidia-modelopt']}</sub>")
    return "\n".join(out)
