"""Both sides of every public assertion: the clean case passes, a planted regression fails with a
message that names the budget, the measured value, the difference and the fix."""

from __future__ import annotations

import copy

import pytest
import torch

from optcheck import (assert_accuracy_drop_under, assert_flops_below, assert_params_below,
                      assert_restore_roundtrip, assert_same_model)
from optcheck.models import SmallCNN


@pytest.fixture(scope="module")
def models(tiny_run):
    return (tiny_run.artifact("baseline").model, tiny_run.artifact("finetuned").model,
            tiny_run.ctx.dummy_input())


# -- FLOPs / params -------------------------------------------------------------------------------

def test_flops_below_passes_for_the_pruned_subnet(models):
    baseline, pruned, x = models
    measured = assert_flops_below(pruned, "70%", dummy_input=x, reference=baseline)
    assert 0 < measured <= 0.7 * assert_flops_below(baseline, 1e12, dummy_input=x)


def test_flops_over_budget_fails_with_numbers_and_hint(models):
    baseline, _, x = models
    with pytest.raises(AssertionError) as info:
        assert_flops_below(baseline, "50%", dummy_input=x, reference=baseline)
    msg = str(info.value)
    assert "optcheck budget 'flops_below' failed" in msg
    for needle in ("measured", "limit", "50% of reference", "over by", "+100.0% of the limit", "hint", "FastNAS"):
        assert needle in msg, needle


def test_flops_absolute_limit(models):
    _, pruned, x = models
    with pytest.raises(AssertionError, match=r"limit\s+: 1k FLOPs \(1,000\)"):
        assert_flops_below(pruned, 1000, dummy_input=x)


def test_relative_limit_without_reference_is_a_usage_error(models):
    _, pruned, x = models
    with pytest.raises(ValueError, match="pass reference="):
        assert_flops_below(pruned, "50%", dummy_input=x)


def test_params_below_both_sides(models):
    baseline, pruned, _ = models
    assert assert_params_below(pruned, "90%", reference=baseline) < sum(p.numel() for p in baseline.parameters())
    with pytest.raises(AssertionError, match=r"(?s)'params_below' failed.*measured.*over by"):
        assert_params_below(baseline, "90%", reference=baseline)


# -- accuracy -------------------------------------------------------------------------------------

def test_accuracy_drop_with_numbers():
    assert assert_accuracy_drop_under(0.95, 0.945, None, 0.01) == pytest.approx(0.005)
    with pytest.raises(AssertionError) as info:
        assert_accuracy_drop_under(0.95, 0.90, None, 0.01)
    msg = str(info.value)
    assert "'accuracy_drop_under' failed" in msg and "5.00 pp > allowed 1.00 pp" in msg
    assert "over by 4.00 pp" in msg and "fine-tune" in msg


def test_accuracy_drop_measures_models_on_a_tensor_pair():
    torch.manual_seed(0)
    x = torch.randn(64, 3, 8, 8)
    model = SmallCNN(num_classes=3).eval()
    labels = model(x).argmax(1)  # the model is right on every sample
    broken = copy.deepcopy(model)
    torch.nn.init.zeros_(broken.head.weight)
    torch.nn.init.zeros_(broken.head.bias)  # predicts class 0 for everything
    assert assert_accuracy_drop_under(model, model, (x, labels), 0.0) == 0.0
    with pytest.raises(AssertionError) as info:
        assert_accuracy_drop_under(model, broken, (x, labels), 0.05)
    assert "100.00% (n=64, 64 correct)" in str(info.value)


def test_accuracy_drop_on_a_dataloader(tiny_run):
    baseline, final = tiny_run.artifact("baseline").model, tiny_run.artifact("finetuned").model
    drop = assert_accuracy_drop_under(baseline, final, tiny_run.ctx.test_loader, 0.5)
    assert drop == pytest.approx(tiny_run.artifact("baseline").metrics.test_acc
                                 - tiny_run.artifact("finetuned").metrics.test_acc)


def test_accuracy_arguments_are_checked():
    with pytest.raises(ValueError, match="fraction"):
        assert_accuracy_drop_under(0.9, 0.9, None, 2)
    with pytest.raises(ValueError, match="pass data="):
        assert_accuracy_drop_under(SmallCNN(), 0.9, None, 0.1)


# -- save / restore -------------------------------------------------------------------------------

def test_restore_roundtrip_of_a_pruned_subnet_is_exact(tiny_run):
    pruned = tiny_run.artifact("pruned").model
    x = next(iter(tiny_run.ctx.test_loader))[0][:4]
    restored = assert_restore_roundtrip(pruned, tiny_run.ctx.make_model, example_input=x)
    assert restored is not pruned
    assert torch.equal(restored.eval()(x), pruned.eval()(x))


def test_restore_roundtrip_of_an_unconverted_model():
    model = SmallCNN(num_classes=4).eval()
    assert_restore_roundtrip(model, lambda: SmallCNN(num_classes=4), example_input=torch.randn(2, 3, 16, 16))


def roundtrip_failure(tiny_run, restore, example_input=None) -> str:
    """The message of a round trip of the tiny run's pruned subnet through ``restore``."""
    x = tiny_run.ctx.dummy_input() if example_input is None else example_input
    with pytest.raises(AssertionError) as info:
        assert_restore_roundtrip(tiny_run.artifact("pruned").model, tiny_run.ctx.make_model,
                                 example_input=x, restore=restore)
    return str(info.value)


def load_state_dict_restore(fresh, path):
    """The planted regression: a pruned checkpoint loaded like a plain state dict."""
    fresh.load_state_dict(torch.load(path, weights_only=False)["model_state_dict"])
    return fresh


def test_pruned_model_restored_with_load_state_dict_fails_with_the_hint(tiny_run):
    msg = roundtrip_failure(tiny_run, load_state_dict_restore)
    assert "'restore_roundtrip' failed" in msg and "size mismatch" in msg
    assert "restore it with mto.restore, not load_state_dict" in msg


def test_lenient_load_state_dict_is_caught_as_an_architecture_mismatch(tiny_run):
    def lenient(fresh, path):
        state = torch.load(path, weights_only=False)["model_state_dict"]
        own = fresh.state_dict()
        fresh.load_state_dict({k: v for k, v in state.items() if own[k].shape == v.shape}, strict=False)
        return fresh

    msg = roundtrip_failure(tiny_run, lenient)
    assert "architecture" in msg and "modelopt_state" in msg
    assert "restore it with mto.restore, not load_state_dict" in msg


def test_weights_perturbed_after_restore_fail(tiny_run):
    from optcheck.assertions import mto_restore

    def perturbing(fresh, path):
        model = mto_restore(fresh, path)
        with torch.no_grad():
            next(model.parameters()).add_(1e-3)
        return model

    x = next(iter(tiny_run.ctx.test_loader))[0][:4]  # real images: zeros would hide the change
    msg = roundtrip_failure(tiny_run, perturbing, x)
    assert "state_dict" in msg and "1 of" in msg and "largest |diff| 0.001" in msg
    assert "outputs" in msg and "weights changed between save and restore" in msg


def test_tolerance_admits_small_differences(tiny_run):
    pruned = tiny_run.artifact("pruned").model
    nudged = copy.deepcopy(pruned)
    with torch.no_grad():
        next(nudged.parameters()).add_(1e-7)
    x = tiny_run.ctx.dummy_input()
    assert_same_model(pruned, nudged, example_input=x, atol=1e-5)
    with pytest.raises(AssertionError):
        assert_same_model(pruned, nudged, example_input=x)


def test_failures_point_at_the_callers_line(pytester):
    pytester.makepyfile(test_budget="""
        import torch
        from optcheck import assert_params_below

        def test_small_enough():
            assert_params_below(torch.nn.Linear(10, 10), 50)
    """)
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "assert_params_below(torch.nn.Linear(10, 10), 50)" in out
    assert "'params_below' failed" in out and "110" in out
    assert "assertions.py" not in out  # the helper's own frames are hidden
