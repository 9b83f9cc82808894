"""The end-of-session results table: one per recipe, rendered from the run's metrics."""

from __future__ import annotations

from .measure import human

_LABELS = {"baseline": "baseline", "pruned": "pruned", "restored": "restored", "finetuned": "fine-tuned"}


def results_table(name: str, metrics: dict[str, dict], verdicts: dict[str, str] | None = None) -> list[str]:
    """Lines of a fixed-width table; ``metrics`` maps stage -> ``Metrics.as_dict()`` and
    ``verdicts`` budget -> outcome."""
    base = metrics.get("baseline")
    header = ("stage", "test acc", "Δ acc", "val acc", "FLOPs", "FLOPs %", "params", "checkpoint", "time")
    rows = []
    for stage, m in metrics.items():
        delta = "" if base is None or stage == "baseline" else f"{(m['test_acc'] - base['test_acc']) * 100:+.2f} pp"
        ratio = "" if base is None else f"{m['flops'] / base['flops'] * 100:.1f}%"
        rows.append((
            _LABELS.get(stage, stage),
            f"{m['test_acc'] * 100:.2f}% (n={m['test_n']})",
            delta,
            f"{m['val_acc'] * 100:.2f}% (n={m['val_n']})",
            human(m["flops"]),
            ratio,
            human(m["params"]),
            human(m["ckpt_bytes"], "B"),
            f"{m['seconds']:.1f}s",
        ))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [f"optcheck results: {name}", fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*r) for r in rows]
    if verdicts:
        lines.append("budgets: " + ", ".join(f"{b} {v}" for b, v in verdicts.items()))
    return lines
