"""Both sides of every public assertion: the clean case passes, a planted regression fails with a
message that names the budget, the measured value, the difference and the fix."""

from __future__ import annotations

import copy

import pytest
import torch

from optcheck import (assert_accuracy_drop_under, assert_flops_below, assert_params_below, assert_restore_roundtrip, assert_same_model)
from optcheck.checks.assertions import assert_accuracy_at_least, paired_accuracy_drop
from optcheck.build.models import SmallCNN


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


def test_a_one_shot_iterator_is_refused_as_data(tiny_run):
    """A generator would be exhausted by the first pass (the labels) and judge nothing after it."""
    baseline = tiny_run.artifact("baseline").model
    batches = list(tiny_run.ctx.test_loader)
    with pytest.raises(TypeError, match="iterated more than once"):
        assert_accuracy_at_least(baseline, (b for b in batches), 0.5)
    assert assert_accuracy_at_least(baseline, batches, 0.5)["accuracy"] > 0.5  # a list of batches is fine


def test_accuracy_arguments_are_checked():
    with pytest.raises(ValueError, match="fraction"):
        assert_accuracy_drop_under(0.9, 0.9, None, 2)
    with pytest.raises(ValueError, match="pass data="):
        assert_accuracy_drop_under(SmallCNN(), 0.9, None, 0.1)


# -- paired drops with an interval, and the baseline's floor ------------------------------------------
#
# Lookup models answer from a table, so exactly which test images each gets right is known: 400
# "images" (input i is the number i), labels 0..3 in turn (chance 25%); the baseline is wrong on
# images 0..19 (95.00%). A candidate with (b, c) is right where the baseline is, except on b more
# images, and also on c of the 20 the baseline misses. At n = 400, 95% confidence (Newcombe):
#   (b, c) = (0, 0):  drop 0.00 pp, CI [-0.99, +0.99] pp
#            (4, 0):  drop 1.00 pp, CI [-0.27, +2.48] pp
#           (12, 0):  drop 3.00 pp, CI [+1.27, +5.09] pp
#           (40, 0):  drop 10.00 pp, CI [+7.16, +13.26] pp
# so against a 2 pp budget each rule has a passing and a failing case.

N_IMAGES, CLASSES = 400, 4
LABELS = torch.arange(N_IMAGES) % CLASSES
IMAGES = (torch.arange(N_IMAGES, dtype=torch.float32).unsqueeze(1), LABELS)
BASELINE_WRONG = range(20)


class Lookup(torch.nn.Module):
    """Answers ``preds[i]`` (one-hot logits) for input ``i``: a model whose hits are known exactly."""

    def __init__(self, preds: torch.Tensor, classes: int = CLASSES):
        super().__init__()
        self.register_buffer("preds", preds.clone())
        self.classes = classes

    def forward(self, x):
        return torch.nn.functional.one_hot(self.preds[x[:, 0].long()], self.classes).float()


def wrong_on(indices, labels=LABELS, classes=CLASSES) -> Lookup:
    """A lookup model right on every image but ``indices``."""
    preds = labels.clone()
    idx = torch.as_tensor(list(indices), dtype=torch.long)
    preds[idx] = (labels[idx] + 1) % classes
    return Lookup(preds, classes)


def candidate(b: int, c: int) -> Lookup:
    """Wrong on b images the baseline gets right, right on c the baseline gets wrong."""
    return wrong_on(set(range(c, 20)) | set(range(20, 20 + b)))


BASELINE = wrong_on(BASELINE_WRONG)


@pytest.mark.parametrize("b, c", [(0, 0), (4, 0), (12, 0), (3, 7)])
def test_paired_accuracy_drop_counts_the_disagreements(b, c):
    drop = paired_accuracy_drop(BASELINE, candidate(b, c), IMAGES)
    assert (drop.n, drop.b, drop.c) == (N_IMAGES, b, c)
    assert drop.base_acc == 0.95 and drop.drop == pytest.approx((b - c) / N_IMAGES)
    assert drop.low < drop.drop < drop.high


@pytest.mark.parametrize("b, rule, passes", [
    (0, "point", True), (12, "point", False),                                    # 0 pp; 3 pp > 2
    (12, "not_significantly_over", True), (40, "not_significantly_over", False),  # low 1.27; 7.16 > 2
    (0, "assured_under", True), (4, "assured_under", False),                      # high 0.99; 2.48 > 2
])
def test_each_rule_on_both_sides(b, rule, passes):
    if passes:
        assert assert_accuracy_drop_under(BASELINE, candidate(b, 0), IMAGES, 0.02, rule=rule) == b / N_IMAGES
    else:
        with pytest.raises(AssertionError, match=f"rule +: {rule}: .* -> fail"):
            assert_accuracy_drop_under(BASELINE, candidate(b, 0), IMAGES, 0.02, rule=rule)


def test_point_passes_where_assured_under_fails():
    weak = candidate(4, 0)  # drop 1.00 pp, 95% CI [-0.27, +2.48] pp: under 2 pp, but not surely
    assert assert_accuracy_drop_under(BASELINE, weak, IMAGES, 0.02) == pytest.approx(0.01)
    with pytest.raises(AssertionError) as info:
        assert_accuracy_drop_under(BASELINE, weak, IMAGES, 0.02, rule="assured_under")
    msg = str(info.value)
    assert "optcheck budget 'accuracy_drop_under' failed" in msg
    assert "95.00% (n=400, 380 correct)" in msg and "94.00% (n=400, 376 correct)" in msg
    assert "drop      : 1.00 pp, allowed 2.00 pp" in msg
    assert "95% CI    : [-0.27, +2.48] pp (paired: 4 images only the baseline got right, 0 only the candidate)" in msg
    assert "rule      : assured_under: pass only when the upper bound <= 2.00 pp -> fail" in msg
    assert "fine-tune" in msg


def test_point_fails_where_not_significantly_over_passes():
    worse = candidate(12, 0)  # drop 3.00 pp, 95% CI [+1.27, +5.09] pp: over 2 pp, but not surely
    assert assert_accuracy_drop_under(BASELINE, worse, IMAGES, 0.02, rule="not_significantly_over") == 0.03
    with pytest.raises(AssertionError) as info:
        assert_accuracy_drop_under(BASELINE, worse, IMAGES, 0.02)
    msg = str(info.value)
    assert "drop      : 3.00 pp, allowed 2.00 pp" in msg and "[+1.27, +5.09] pp" in msg
    assert "rule      : point: pass when the observed drop <= 2.00 pp -> fail" in msg


def test_a_higher_confidence_widens_the_interval():
    weak = candidate(4, 0)
    assert_accuracy_drop_under(BASELINE, weak, IMAGES, 0.03, rule="assured_under")  # high 2.48 pp at 95%
    with pytest.raises(AssertionError, match=r"99% CI +: \[-\d.\d\d, \+3\.\d\d\] pp"):
        assert_accuracy_drop_under(BASELINE, weak, IMAGES, 0.03, rule="assured_under", confidence=0.99)


def test_lists_of_models_are_judged_on_the_mean_drop_over_seeds():
    # seed drops 3.00 and 0.00 pp: one seed alone breaks a 2 pp budget, their mean (1.50 pp) does not
    bases, cands = [BASELINE, BASELINE], [candidate(12, 0), candidate(0, 0)]
    assert assert_accuracy_drop_under(bases, cands, IMAGES, 0.02) == pytest.approx(0.015)
    # with two seeds the t-interval has 1 degree of freedom: wide, so assured_under fails
    with pytest.raises(AssertionError) as info:
        assert_accuracy_drop_under(bases, cands, IMAGES, 0.02, rule="assured_under")
    msg = str(info.value)
    assert "drop   : 1.50 pp mean over 2 seeds (3.00, 0.00 pp), allowed 2.00 pp" in msg
    assert "t-interval over 2 seeds (1 df)" in msg and "rule   : assured_under" in msg
    with pytest.raises(AssertionError, match=r"2\.50 pp mean over 2 seeds \(3\.00, 2\.00 pp\)"):
        assert_accuracy_drop_under(bases, [candidate(12, 0), candidate(8, 0)], IMAGES, 0.02)
    # one data set per seed is accepted as well
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*IMAGES), batch_size=64)
    assert assert_accuracy_drop_under(bases, cands, [loader, loader], 0.02) == pytest.approx(0.015)


def test_drop_arguments_are_checked():
    with pytest.raises(ValueError, match="rule 'assured_under' needs the two models"):
        assert_accuracy_drop_under(0.95, 0.94, None, 0.02, rule="assured_under")
    with pytest.raises(ValueError, match="rule 'not_significantly_over' needs the two models"):
        assert_accuracy_drop_under(BASELINE, 0.94, IMAGES, 0.02, rule="not_significantly_over")
    with pytest.raises(ValueError, match="rule 'strict' is unknown: use one of point, "
                                         "not_significantly_over, assured_under"):
        assert_accuracy_drop_under(BASELINE, BASELINE, IMAGES, 0.02, rule="strict")
    with pytest.raises(ValueError, match="one baseline and one candidate model per seed"):
        assert_accuracy_drop_under([BASELINE, BASELINE], [BASELINE], IMAGES, 0.02)
    with pytest.raises(ValueError, match="one baseline and one candidate model per seed"):
        assert_accuracy_drop_under([BASELINE], BASELINE, IMAGES, 0.02)


def test_accuracy_at_least_passes_for_the_trained_baseline(tiny_run):
    result = assert_accuracy_at_least(tiny_run.artifact("baseline").model, tiny_run.ctx.test_loader)
    assert result["chance"] == 0.25 and result["floor"] == 0.625  # 4 balanced classes: halfway to 100%
    assert result["accuracy"] == tiny_run.artifact("baseline").metrics.test_acc >= 0.625
    assert "vs floor 62.50% (auto: halfway from chance 25.00% to 100%" in result["explain"]


def test_accuracy_at_least_fails_for_a_model_at_chance(tiny_run):
    class Constant(torch.nn.Module):
        def forward(self, x):  # the same logits for every image: always class 0
            return torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(len(x), 4)

    with pytest.raises(AssertionError) as info:
        assert_accuracy_at_least(Constant(), tiny_run.ctx.test_loader)
    msg = str(info.value)
    assert "optcheck budget 'baseline_accuracy_at_least' failed" in msg
    assert "accuracy       : 25.00% (n=48, 12 correct; 95% CI [" in msg
    assert "floor          : 62.50% (auto: halfway from chance 25.00% to 100%)" in msg
    assert "chance         : 25.00% (always answering the most frequent label)" in msg
    assert "learned too little" in msg and "train the baseline longer" in msg


def test_accuracy_at_least_takes_chance_from_the_majority_label():
    labels = torch.tensor([0] * 60 + [1] * 40)  # chance 60%: the auto floor is 80%
    data = (torch.arange(100, dtype=torch.float32).unsqueeze(1), labels)
    majority = Lookup(torch.zeros(100, dtype=torch.long), classes=2)  # always class 0: 60% right
    with pytest.raises(AssertionError) as info:
        assert_accuracy_at_least(majority, data)
    msg = str(info.value)
    assert "60.00% (n=100, 60 correct" in msg and "floor          : 80.00% (auto: halfway from chance 60.00%" in msg
    good = wrong_on(range(15), labels, 2)  # 85% right
    assert assert_accuracy_at_least(good, data)["floor"] == pytest.approx(0.8)


def test_accuracy_at_least_with_an_explicit_floor():
    labels = torch.tensor([0] * 60 + [1] * 40)
    data = (torch.arange(100, dtype=torch.float32).unsqueeze(1), labels)
    good = wrong_on(range(15), labels, 2)  # 85% right
    result = assert_accuracy_at_least(good, data, 0.85)  # exactly at the floor passes
    assert result["accuracy"] == 0.85 and result["floor"] == 0.85 and result["chance"] == 0.6
    with pytest.raises(AssertionError) as info:
        assert_accuracy_at_least(good, data, 0.9)
    msg = str(info.value)
    assert "85.00% (n=100, 85 correct" in msg and "floor          : 90.00% (set in the recipe)" in msg
    assert "chance         : 60.00%" in msg


def test_accuracy_at_least_arguments_are_checked():
    empty = (torch.zeros(0, 1), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="the data is empty"):
        assert_accuracy_at_least(BASELINE, empty)
    for floor in (0, 1.5, "90%", True):
        with pytest.raises(ValueError, match="must be 'auto' or a fraction in"):
            assert_accuracy_at_least(BASELINE, IMAGES, floor)


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
    from optcheck.checks.restore import mto_restore

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
