"""optcheck: guard model-compression budgets in pytest.

The public assertions are imported on first use, so importing optcheck (as pytest does for every
session, through the plugin entry point) costs no torch or modelopt import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Model Optimizer's FLOPs count needs torchprofile patched (optcheck.core.compat); the hook patches it
# when anything imports it, in any session that loads the plugin. It imports nothing itself.
from optcheck.core.compat import install_import_hook as _install_import_hook  # noqa: E402

_install_import_hook()

_LAZY = {
    "assert_flops_below": "optcheck.checks.assertions",
    "assert_params_below": "optcheck.checks.assertions",
    "assert_size_below": "optcheck.checks.assertions",
    "assert_sparsity_at_least": "optcheck.checks.assertions",
    "assert_accuracy_drop_under": "optcheck.checks.assertions",
    "assert_restore_roundtrip": "optcheck.checks.restore",
    "assert_onnx_parity": "optcheck.checks.assertions",
    "assert_speedup_at_least": "optcheck.checks.assertions",
    "assert_latency_ratio_below": "optcheck.checks.assertions",
    "assert_same_model": "optcheck.checks.restore",
    "assert_accuracy_at_least": "optcheck.checks.assertions",
    "assert_paired_drop_under": "optcheck.checks.assertions",
    "paired_accuracy_drop": "optcheck.checks.assertions",
    "assert_metric_drop_under": "optcheck.checks.team_metrics",
    "assert_metric_bound": "optcheck.checks.team_metrics",
    "count_flops": "optcheck.build.measure",
    "count_params": "optcheck.build.measure",
    "weight_bytes": "optcheck.build.measure",
    "sparsity": "optcheck.build.measure",
    "load_recipe": "optcheck.recipes.loader",
    "RecipeError": "optcheck.core.errors",
    "DatasetMissing": "optcheck.core.errors",
    "run_property": "optcheck.checks.properties",
    "restore_exact": "optcheck.checks.properties",
    "export_matches_converted": "optcheck.checks.properties",
    "flops_match": "optcheck.checks.properties",
    "flops_monotone": "optcheck.checks.properties",
    "fastnas_search_space": "optcheck.checks.search_space",
    "PropertyFailure": "optcheck.checks.properties",
}
__all__ = sorted(_LAZY)

if TYPE_CHECKING:
    from optcheck.checks.assertions import (assert_accuracy_at_least, assert_accuracy_drop_under,
                                            assert_flops_below, assert_latency_ratio_below,
                                            assert_onnx_parity, assert_paired_drop_under,
                                            assert_params_below, assert_size_below,
                                            assert_speedup_at_least, assert_sparsity_at_least,
                                            paired_accuracy_drop)
    from optcheck.checks.restore import assert_restore_roundtrip, assert_same_model
    from optcheck.checks.team_metrics import assert_metric_bound, assert_metric_drop_under
    from optcheck.core.errors import DatasetMissing, RecipeError
    from optcheck.build.measure import count_flops, count_params, sparsity, weight_bytes
    from optcheck.checks.properties import (PropertyFailure, export_matches_converted, flops_match,
                                            flops_monotone, restore_exact, run_property)
    from optcheck.checks.search_space import fastnas_search_space
    from optcheck.recipes.loader import load_recipe


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'optcheck' has no attribute {name!r}")
