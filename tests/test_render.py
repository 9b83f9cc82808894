"""The report renderers over plain results (no session, no torch)."""

from __future__ import annotations

from optcheck.report.render import SPARSE_NOTE, markdown, results_table


def _metrics(acc: float, flops: int, sparsity: float | None = None) -> dict:
    return {"test_acc": acc, "test_n": 360, "val_acc": acc, "val_n": 180, "flops": flops, "params": 1000,
            "ckpt_bytes": 4000, "seconds": 1.0, "size_bytes": 4000, "sparsity": sparsity}


def test_a_sparsified_stage_says_its_flops_are_dense_macs():
    sparse = {"baseline": _metrics(0.97, 20_300_000), "sparsified": _metrics(0.90, 20_300_000, 0.5)}
    dense = {"baseline": _metrics(0.97, 20_300_000), "pruned": _metrics(0.95, 9_800_000)}
    assert SPARSE_NOTE in results_table("r", sparse) and "sparse kernels" in SPARSE_NOTE
    assert SPARSE_NOTE not in results_table("r", dense)
    doc = {"meta": {"git": {"commit": "abc"}, "device": "cpu", "machine": {"gpu": None, "cpus": 2}, "cache": "off",
                    "ledger": None, "workers": 1, "versions": {"torch": "2", "nvidia-modelopt": "0.47"}},
           "recipes": [{"recipe": "r", "path": "r.toml", "stages": {s: {"metrics": m, "events": []}
                                                               for s, m in sparse.items()}}]}
    assert SPARSE_NOTE in markdown(doc)
    doc["recipes"][0]["stages"] = {s: {"metrics": m, "events": []} for s, m in dense.items()}
    assert SPARSE_NOTE not in markdown(doc)


def test_the_plot_of_a_team_recipe_shows_its_primary_metric_and_the_bound_its_drop_budget_sets():
    """y axis: the recipe's primary metric (here lower-is-better ECE); the dotted line: the ceiling its
    drop budget puts on the final model, absolute or "N%" of the baseline's value."""
    from matplotlib.figure import Figure

    from optcheck.report.plot import _team_panel

    def metrics(flops: int, ece: float) -> dict:
        return {**_metrics(0.97, flops), "extra": {"ece": ece}}

    stages = {"baseline": metrics(20_000_000, 0.05), "pruned": metrics(10_000_000, 0.06)}
    primary = {"name": "ece", "better": "lower"}
    for limit, ceiling in ((0.03, 0.08), ("50%", 0.075)):
        ax = Figure().subplots()
        _team_panel(ax, {"recipe": "team", "budgets": {"metric_drop_under[ece]": limit, "flops_below": "60%"}},
                    stages, primary)
        assert ax.get_ylabel() == "ece (lower is better)"
        [bound] = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
        assert abs(bound.get_ydata()[0] - ceiling) < 1e-12, (limit, bound.get_ydata())
        assert f"ece ceiling: {ceiling:.4g} (drop < {limit if isinstance(limit, str) else format(limit, 'g')})" in (
            bound.get_label())
