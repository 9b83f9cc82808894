"""optcheck: guard model-compression budgets in pytest.

The public assertions are imported on first use, so importing optcheck (as pytest does for every
session, through the plugin entry point) costs no torch or modelopt import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "assert_flops_below": "optcheck.assertions",
    "assert_params_below": "optcheck.assertions",
    "assert_size_below": "optcheck.assertions",
    "assert_sparsity_at_least": "optcheck.assertions",
    "assert_accuracy_drop_under": "optcheck.assertions",
    "assert_restore_roundtrip": "optcheck.assertions",
    "assert_onnx_parity": "optcheck.assertions",
    "assert_speedup_at_least": "optcheck.assertions",
    "assert_latency_ratio_below": "optcheck.assertions",
    "assert_same_model": "optcheck.assertions",
    "assert_accuracy_at_least": "optcheck.assertions",
    "assert_paired_drop_under": "optcheck.assertions",
    "paired_accuracy_drop": "optcheck.assertions",
    "count_flops": "optcheck.measure",
    "count_params": "optcheck.measure",
    "weight_bytes": "optcheck.measure",
    "sparsity": "optcheck.measure",
    "load_recipe": "optcheck.recipe",
    "RecipeError": "optcheck.errors",
    "DatasetMissing": "optcheck.errors",
    "run_property": "optcheck.properties",
    "restore_exact": "optcheck.properties",
    "export_matches_converted": "optcheck.properties",
    "flops_match": "optcheck.properties",
    "flops_monotone": "optcheck.properties",
    "fastnas_search_space": "optcheck.properties",
    "PropertyFailure": "optcheck.properties",
}
__all__ = sorted(_LAZY)

if TYPE_CHECKING:
    from .assertions import (assert_accuracy_at_least, assert_accuracy_drop_under, assert_flops_below,
                             assert_latency_ratio_below, assert_onnx_parity, assert_speedup_at_least,
                             assert_paired_drop_under, assert_params_below, assert_restore_roundtrip,
                             assert_same_model, assert_size_below, assert_sparsity_at_least,
                             paired_accuracy_drop)
    from .errors import DatasetMissing, RecipeError
    from .measure import count_flops, count_params, sparsity, weight_bytes
    from .properties import (PropertyFailure, export_matches_converted, fastnas_search_space, flops_match,
                             flops_monotone, restore_exact, run_property)
    from .recipe import load_recipe


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'optcheck' has no attribute {name!r}")
