"""The accuracy-against-FLOPs picture of every recipe, drawn with matplotlib (Agg, no display).

One panel per recipe: every stage's model as a point, joined in pipeline order (the baseline a circle,
the final model a star),
the FLOPs budget as a vertical line and the accuracy floor (baseline minus the allowed drop) as a
horizontal one, so a reader sees at once which side of each line the compressed model landed on.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

_MIDDLE = (("s", "tab:orange"), ("D", "tab:gray"), ("^", "tab:brown"), ("v", "tab:pink"), ("P", "tab:olive"))


def _style(position: int, count: int) -> tuple[str, str]:
    """Marker and colour of the stage at ``position`` of ``count``: the first, the last, the others."""
    if position == 0:
        return "o", "tab:blue"
    if position == count - 1:
        return "*", "tab:green"
    return _MIDDLE[(position - 1) % len(_MIDDLE)]


def flops_limit(limit: Any, baseline_flops: float) -> float | None:
    from optcheck.core.limits import parse_percent

    if limit is None:
        return None
    frac = parse_percent(limit)
    return frac * baseline_flops if frac is not None else float(limit)


def _finish_panel(ax, r: dict[str, Any]) -> None:
    ax.set_xlabel("FLOPs (millions, lower is better)")
    verdicts = r.get("verdicts", {})
    failed = [c for c, v in verdicts.items() if v["outcome"] in ("failed", "error", "xpassed")]
    status = "all checks passed" if verdicts and not failed else (f"failed: {', '.join(failed)}" if failed else "")
    ax.set_title(f"{r['recipe']}\n{status}", fontsize=10, color="tab:red" if failed else "black")
    ax.grid(alpha=0.3)
    ax.set_xlim(left=0)
    ax.legend(fontsize=7.5, loc="best")


def _team_panel(ax, r: dict[str, Any], stages: dict[str, dict], primary: dict[str, str]) -> None:
    """The recipe's primary metric against FLOPs, with the bound its drop budget puts on the final model."""
    name, better = primary["name"], primary["better"]
    xs = [m["flops"] / 1e6 for m in stages.values()]
    ys = [m["extra"][name] for m in stages.values()]
    ax.plot(xs, ys, color="0.7", linewidth=1, zorder=1)
    for position, (stage, m) in enumerate(stages.items()):
        marker, color = _style(position, len(stages))
        ax.scatter([xs[position]], [ys[position]], marker=marker, color=color, s=140 if marker == "*" else 70,
                   zorder=3, label=f"{stage}: {name} {ys[position]:.4g}, {xs[position]:.1f}M FLOPs")
    budgets = r.get("budgets", {})
    limit = budgets.get(f"metric_drop_under[{name}]")
    allowed = None
    if isinstance(limit, (int, float)) and not isinstance(limit, bool):
        allowed, written = float(limit), f"{limit:g}"
    elif isinstance(limit, str):  # "N%": a share of the baseline's value (a relative drop)
        from optcheck.core.limits import parse_percent

        fraction = parse_percent(limit)
        if fraction is not None:
            allowed, written = fraction * abs(ys[0]), limit
    if allowed is not None:
        bound = ys[0] - allowed if better == "higher" else ys[0] + allowed
        ax.axhline(bound, color="tab:purple", linestyle=":", linewidth=1.2,
                   label=f"{name} {'floor' if better == 'higher' else 'ceiling'}: {bound:.4g} (drop < {written})")
    fl = flops_limit(budgets.get("flops_below"), stages[next(iter(stages))]["flops"])
    if fl is not None:
        ax.axvline(fl / 1e6, color="tab:red", linestyle="--", linewidth=1.2, label=f"FLOPs budget: {fl / 1e6:.1f}M")
    ax.set_ylabel(f"{name} ({better} is better)")
    _finish_panel(ax, r)


def write_plot(doc: dict[str, Any], path: Path) -> None:
    # the object API with the Agg canvas: no pyplot, no global state, no display needed
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    recipes = [r for r in doc["recipes"] if r["stages"]]
    n = max(1, len(recipes))
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(6.4 * cols, 4.6 * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(recipes):]:
        ax.axis("off")
    if not recipes:
        axes.flat[0].text(0.5, 0.5, "no recipe built a model in this session", ha="center", va="center")
    for ax, r in zip(axes.flat, recipes):
        stages = {s: info["metrics"] for s, info in r["stages"].items()}
        primary = r.get("primary_metric")  # the team's headline metric, when the recipe names one
        if primary and all(primary["name"] in (m.get("extra") or {}) for m in stages.values()):
            _team_panel(ax, r, stages, primary)
            continue
        xs = [m["flops"] / 1e6 for m in stages.values()]
        ys = [m["test_acc"] * 100 for m in stages.values()]
        ax.plot(xs, ys, color="0.7", linewidth=1, zorder=1)
        from optcheck.core.stats import wilson_interval

        from optcheck.report.render import latency_by_stage

        speed = latency_by_stage(r)
        for position, (stage, m) in enumerate(stages.items()):
            (marker, color), label = _style(position, len(stages)), stage
            x, y = m["flops"] / 1e6, m["test_acc"] * 100
            # the 95% Wilson interval of each test accuracy (n test images): what one image is worth
            lo, hi = wilson_interval(round(m["test_acc"] * m["test_n"]), m["test_n"]) if m.get("test_n") else (
                m["test_acc"], m["test_acc"])
            ax.errorbar([x], [y], yerr=[[y - lo * 100], [hi * 100 - y]], color=color, capsize=3, linewidth=1,
                        zorder=2)
            ax.scatter([x], [y], marker=marker, color=color, s=140 if marker == "*" else 70, zorder=3,
                       label=f"{label}: {y:.2f}% [{lo * 100:.1f}, {hi * 100:.1f}], {x:.1f}M FLOPs"
                       + (f", latency ratio {speed[stage].split(' [')[0]}" if stage in speed else ""))
        base = next(iter(stages.values()), None)
        budgets = r.get("budgets", {})
        if base is not None:
            fl = flops_limit(budgets.get("flops_below"), base["flops"])
            if fl is not None:
                ax.axvline(fl / 1e6, color="tab:red", linestyle="--", linewidth=1.2,
                           label=f"FLOPs budget: {fl / 1e6:.1f}M ({budgets['flops_below']})")
            drop = budgets.get("accuracy_drop_under")
            floor = None
            if drop is not None:
                floor = (base["test_acc"] - drop) * 100
                ax.axhline(floor, color="tab:purple", linestyle=":", linewidth=1.2,
                           label=f"accuracy floor: {floor:.2f}% (drop < {drop * 100:g} pp)")
            if fl is not None or floor is not None:  # where a compressed model meets both budgets
                y0, y1 = ax.get_ylim()
                right = fl / 1e6 if fl is not None else ax.get_xlim()[1]
                ax.fill_between([0, right], floor if floor is not None else y0, y1, color="tab:green",
                                alpha=0.08, zorder=0, label="within the budgets")
                ax.set_ylim(y0, y1)
        ax.set_ylabel("test accuracy (%)")
        _finish_panel(ax, r)
    meta = doc.get("meta", {})
    commit = ((meta.get("git") or {}).get("commit") or "")[:12]
    devices = sorted({r.get("device") or "" for r in recipes} - {""}) or [meta.get("device", "")]
    fig.suptitle(f"optcheck: accuracy vs FLOPs ({', '.join(devices)}{', ' + commit if commit else ''})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
