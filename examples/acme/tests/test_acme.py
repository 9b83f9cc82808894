"""ACME's own tests beside its recipe: optcheck's fixtures (the recipe's stages, built once per session
and shared with the recipe's items) and assertions, and a Model Optimizer call of the team's own."""

from __future__ import annotations

import pytest
import torch

from optcheck import assert_flops_below, assert_metric_drop_under, assert_restore_roundtrip

RECIPE = "recipes/acme.toml"


@pytest.mark.optcheck_recipe(RECIPE)
def test_the_shipped_model_is_int8_and_calibrated_as_well_as_the_baseline(optcheck_artifacts, optcheck_run):
    from acme.metrics import expected_calibration_error

    base, final = optcheck_artifacts["baseline"], optcheck_artifacts["quantized"]
    x = optcheck_run.ctx.dummy_input()
    assert_flops_below(final.model, "62%", dummy_input=x, reference=base.model)
    # the team's lower-is-better metric, in its own test: at most 0.03 worse than the baseline's
    assert_metric_drop_under(base.model, final.model, optcheck_run.ctx.test_loader, 0.03,
                             metric=expected_calibration_error, better="lower")


@pytest.mark.optcheck_recipe(RECIPE)
def test_the_pruned_subnet_restores_from_its_checkpoint(optcheck_artifacts, optcheck_run):
    pruned = optcheck_artifacts["pruned"]
    x = next(iter(optcheck_run.ctx.test_loader))[0][:4]
    assert_restore_roundtrip(pruned.model, optcheck_run.ctx.make_model, example_input=x)


def test_our_fastnas_search_on_our_model_reaches_its_target():
    """The team's own mtp.prune call. It works because the optcheck plugin, loaded by pytest before any
    test runs, installs an import hook that patches torchprofile when modelopt is imported (torchprofile
    0.1 broke Model Optimizer's FLOPs count); optcheck's own tests prove it in a test file that imports
    no optcheck at all (tests/test_own_pipeline.py, TEAMS_OWN_PRUNE)."""
    import modelopt.torch.prune as mtp

    from acme.model import make_net
    from optcheck import count_flops

    torch.manual_seed(0)
    model, dummy = make_net(), torch.zeros(1, 1, 16, 16)
    data = [(torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,))) for _ in range(2)]
    full = count_flops(model, dummy)
    sub, _ = mtp.prune(model, mode="fastnas", constraints={"flops": "60%"}, dummy_input=dummy,
                       config={"data_loader": data, "score_func": lambda m: 1.0, "verbose": False,
                               "max_iter_data_loader": 2})
    assert count_flops(sub, dummy) <= 0.6 * 1.05 * full
