"""optcheck.stats: paired drop intervals, McNemar, decision rules, several seeds. No torch."""

from __future__ import annotations

import math

import numpy as np
import pytest

from optcheck.core.stats import (RULES, Decision, PairedDrop, SeedsDrop, decide, mcnemar_pvalue, mean_drop, paired_drop, paired_drop_from_counts, wilson_interval)


def from_table(a: int, b: int, c: int, d: int, confidence: float = 0.95) -> PairedDrop:
    """Paired 2x2 table, rows = baseline right/wrong, columns = candidate right/wrong."""
    return paired_drop_from_counts(a + b + c + d, b, c, a + b, confidence)


def vectors(a: int, b: int, c: int, d: int) -> tuple[list[bool], list[bool]]:
    base = [True] * a + [True] * b + [False] * c + [False] * d
    cand = [True] * a + [False] * b + [True] * c + [False] * d
    return base, cand


# --- known counts -> known bounds --------------------------------------------------------------

# Newcombe (1998) Stat Med 17:2635-2650, method 10, 95%: the paper's worked examples as
# reproduced in the test suite of the R package propint (m-Py/propint,
# tests/testthat/test_Two_Dependent_Props_CI.R), and the Cavo et al. (2012) example from
# Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency Tables", ch. 8, as asserted
# in the R package contingencytables (ocbe-uio/contingencytables, tests/testthat/test-ch8.R).
PUBLISHED = [
    # (a, b, c, d), difference, lower, upper  -- rounded to 4 decimals in the sources
    ((36, 12, 2, 0), 0.2, 0.0569, 0.3404),
    ((18, 12, 2, 18), 0.2, 0.0562, 0.3290),
    ((53, 0, 0, 1), 0.0, -0.0729, 0.0729),
    ((0, 30, 0, 0), 1.0, 0.8395, 1.0),
    ((59, 6, 16, 80), -0.0621, -0.1186, -0.0046),
]


@pytest.mark.parametrize("table, diff, low, high", PUBLISHED)
def test_newcombe_method_10_published_examples(table, diff, low, high):
    d = from_table(*table)
    assert d.drop == pytest.approx(diff, abs=5e-5)
    assert d.low == pytest.approx(low, abs=5e-5)
    assert d.high == pytest.approx(high, abs=5e-5)
    assert d.confidence == 0.95
    assert "Newcombe" in d.method


def test_fields_of_a_paired_drop():
    d = from_table(36, 12, 2, 0)
    assert (d.n, d.b, d.c) == (50, 12, 2)
    assert d.base_acc == pytest.approx(48 / 50)
    assert d.cand_acc == pytest.approx(38 / 50)
    assert d.drop == pytest.approx(d.base_acc - d.cand_acc)
    assert d.base_correct == 48
    with pytest.raises(AttributeError):  # frozen
        d.low = 0.0  # type: ignore[misc]


def test_no_disagreements_gives_a_real_interval_around_zero():
    for table in [(340, 0, 0, 20), (360, 0, 0, 0), (0, 0, 0, 360)]:
        d = from_table(*table)
        assert d.drop == 0.0
        assert d.low < 0.0 < d.high
        assert d.low == pytest.approx(-d.high)
        # about +-1 pp at n = 360: several images' worth, not zero width
        assert 0.008 < d.high < 0.012, table


def test_swapping_b_and_c_negates_the_interval():
    for a, b, c, dd in [(36, 12, 2, 0), (336, 4, 2, 18), (300, 7, 0, 53), (59, 6, 16, 80),
                        (10, 3, 9, 1), (0, 30, 0, 0)]:
        fwd = from_table(a, b, c, dd)
        rev = from_table(a, c, b, dd)
        assert rev.drop == pytest.approx(-fwd.drop)
        assert rev.low == pytest.approx(-fwd.high, abs=1e-12)
        assert rev.high == pytest.approx(-fwd.low, abs=1e-12)


def test_interval_contains_the_estimate_and_stays_in_range():
    for table in [(336, 4, 2, 18), (0, 0, 0, 5), (5, 0, 0, 0), (0, 0, 7, 0), (1, 1, 1, 1)]:
        d = from_table(*table)
        assert -1.0 <= d.low <= d.drop <= d.high <= 1.0


def test_higher_confidence_gives_a_wider_interval():
    d90, d95, d99 = (from_table(336, 4, 2, 18, conf) for conf in (0.90, 0.95, 0.99))
    assert d99.low < d95.low < d90.low < d90.drop < d90.high < d95.high < d99.high
    assert d99.confidence == 0.99


def test_paired_drop_from_vectors_matches_counts():
    base, cand = vectors(336, 4, 2, 18)
    from_vectors = paired_drop(base, cand)
    assert from_vectors == from_table(336, 4, 2, 18)
    # numpy bools and 0/1 ints work too, in any order of the images
    rng = np.random.default_rng(0)
    order = rng.permutation(len(base))
    arr_base = np.array(base)[order]
    arr_cand = np.array(cand, dtype=int)[order]
    assert paired_drop(arr_base, arr_cand) == from_vectors


def test_wilson_interval_matches_statsmodels():
    proportion = pytest.importorskip("statsmodels.stats.proportion")
    for x, n in [(0, 360), (12, 50), (48, 50), (360, 360), (1, 1)]:
        for conf in (0.9, 0.95):
            ours = wilson_interval(x, n, conf)
            theirs = proportion.proportion_confint(x, n, alpha=1 - conf, method="wilson")
            assert ours == pytest.approx(theirs, abs=1e-12)


# --- McNemar ------------------------------------------------------------------------------------


def test_mcnemar_exact_pvalues():
    assert mcnemar_pvalue(12, 2) == pytest.approx(0.012939453125)  # 2 * P(X <= 2), X ~ Bin(14, .5)
    assert mcnemar_pvalue(6, 0) == pytest.approx(2 * 0.5 ** 6)
    assert mcnemar_pvalue(0, 0) == 1.0
    assert mcnemar_pvalue(3, 3) == 1.0
    assert mcnemar_pvalue(2, 12) == mcnemar_pvalue(12, 2)


def test_mcnemar_matches_statsmodels():
    tables = pytest.importorskip("statsmodels.stats.contingency_tables")
    for b, c in [(12, 2), (4, 2), (6, 0), (1, 9), (20, 31)]:
        expected = tables.mcnemar([[100, b], [c, 10]], exact=True).pvalue
        assert mcnemar_pvalue(b, c) == pytest.approx(expected)


# --- decision rules -----------------------------------------------------------------------------

N = 360
LIMIT = 0.01  # 1 pp


def drop_of(b: int, c: int, base_correct: int = 340) -> PairedDrop:
    return paired_drop_from_counts(N, b, c, base_correct)


def test_rules_constant():
    assert RULES == ("point", "not_significantly_over", "assured_under")


def test_point_rule_both_sides():
    assert decide(drop_of(4, 2), LIMIT, "point").passed  # 0.56 pp
    assert not decide(drop_of(6, 0), LIMIT, "point").passed  # 1.67 pp
    assert decide(drop_of(4, 2), LIMIT).rule == "point"  # the default is today's behaviour


def test_not_significantly_over_both_sides():
    over = drop_of(20, 0)  # 5.56 pp, CI about [3.2, 8.3] pp: wholly above 1 pp
    assert over.low > LIMIT
    assert not decide(over, LIMIT, "not_significantly_over").passed
    assert decide(drop_of(4, 2), LIMIT, "not_significantly_over").passed


def test_assured_under_both_sides():
    clean = drop_of(0, 0)  # CI about [-1.08, 1.08] pp
    assert clean.high <= 0.02
    assert decide(clean, 0.02, "assured_under").passed
    assert not decide(drop_of(20, 0), LIMIT, "assured_under").passed


def test_point_passes_but_assured_under_fails():
    d = drop_of(4, 2)  # 0.56 pp observed, but the upper bound is about 2.3 pp
    assert d.drop <= LIMIT < d.high
    assert decide(d, LIMIT, "point").passed
    assert not decide(d, LIMIT, "assured_under").passed


def test_point_fails_but_not_significantly_over_passes():
    d = drop_of(6, 0)  # 1.67 pp observed, lower bound about 0.13 pp
    assert d.low <= LIMIT < d.drop
    assert not decide(d, LIMIT, "point").passed
    assert decide(d, LIMIT, "not_significantly_over").passed


def test_boundaries_are_inclusive_as_documented():
    d = drop_of(4, 2)
    assert decide(d, d.drop, "point").passed
    assert decide(d, d.high, "assured_under").passed
    assert decide(d, d.low, "not_significantly_over").passed  # low == limit is not "above"


def test_explain_names_the_numbers_the_rule_and_the_verdict():
    decision = decide(drop_of(4, 2), LIMIT, "assured_under")
    assert isinstance(decision, Decision)
    text = decision.explain()
    d = decision.drop
    assert text.startswith("drop 0.56 pp, 95% CI [")
    assert f"[{100 * d.low:.2f}, {100 * d.high:.2f}] pp" in text
    assert "n=360" in text
    assert "4 images only the baseline got right, 2 only the candidate" in text
    assert "rule assured_under" in text
    assert "upper bound <= 1.00 pp" in text
    assert text.endswith("-> fail")

    passing = decide(drop_of(20, 0), 0.10, "not_significantly_over").explain()
    assert "drop 5.56 pp" in passing and "rule not_significantly_over" in passing
    assert "lower bound > 10.00 pp" in passing and passing.endswith("-> pass")

    point = decide(drop_of(6, 0), LIMIT, "point").explain()
    assert "rule point" in point and "1.00 pp" in point and point.endswith("-> fail")


def test_unknown_rule_lists_the_allowed_ones():
    with pytest.raises(ValueError) as err:
        decide(drop_of(4, 2), LIMIT, "strict")
    message = str(err.value)
    assert "'strict'" in message
    for rule in RULES:
        assert rule in message


def test_bad_limit_or_drop_is_rejected():
    with pytest.raises(ValueError, match="limit"):
        decide(drop_of(4, 2), "one percent", "point")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        decide(drop_of(4, 2), float("nan"), "point")
    with pytest.raises(ValueError, match="PairedDrop or SeedsDrop"):
        decide(0.005, LIMIT, "point")  # type: ignore[arg-type]


# --- several seeds ------------------------------------------------------------------------------


def test_mean_drop_over_three_seeds():
    seeds = [paired_drop_from_counts(100, k, 0, 90) for k in (1, 2, 3)]  # drops 1, 2, 3 pp
    s = mean_drop(seeds)
    assert isinstance(s, SeedsDrop)
    assert s.seeds == 3 and s.n == 100
    assert s.drop == pytest.approx(0.02)
    assert s.sd == pytest.approx(0.01)
    half = 4.302652729749464 * 0.01 / math.sqrt(3)  # t(0.975, 2 df)
    assert s.low == pytest.approx(0.02 - half)
    assert s.high == pytest.approx(0.02 + half)
    assert s.per_seed == tuple(seeds)
    assert "3 seeds" in s.method


def test_mean_drop_over_two_seeds_is_wide():
    seeds = [paired_drop_from_counts(100, 1, 0, 90), paired_drop_from_counts(100, 3, 0, 90)]
    s = mean_drop(seeds)
    # mean 2 pp, sd sqrt(2) pp, t(0.975, 1 df) = 12.706: +-12.7 pp
    assert s.drop == pytest.approx(0.02)
    assert s.high - s.drop == pytest.approx(0.12706204736174698)
    assert s.drop - s.low == pytest.approx(0.12706204736174698)


def test_mean_drop_single_seed_falls_back_to_the_paired_interval():
    only = drop_of(4, 2)
    s = mean_drop([only])
    assert (s.drop, s.low, s.high) == (only.drop, only.low, only.high)
    assert math.isnan(s.sd)
    assert "single seed" in s.method
    wider = mean_drop([only], confidence=0.99)
    assert wider.confidence == 0.99 and wider.low < only.low and wider.high > only.high


def test_decide_accepts_several_seeds():
    seeds = [drop_of(3, 1), drop_of(4, 2), drop_of(2, 1)]
    s = mean_drop(seeds)
    assert decide(s, LIMIT, "point").passed
    assert decide(s, 0.05, "assured_under").passed
    assert not decide(s, 0.0, "assured_under").passed
    text = decide(s, LIMIT, "assured_under").explain()
    assert "over 3 seeds" in text and "rule assured_under" in text
    assert f"[{100 * s.low:.2f}, {100 * s.high:.2f}] pp" in text
    assert "per-seed drops 0.56, 0.56, 0.28 pp" in text


def test_mean_drop_validation():
    with pytest.raises(ValueError, match="at least one"):
        mean_drop([])
    with pytest.raises(ValueError, match="same test images"):
        mean_drop([drop_of(4, 2), paired_drop_from_counts(100, 1, 0, 90)])
    with pytest.raises(ValueError, match="PairedDrop"):
        mean_drop([0.01, 0.02])  # type: ignore[list-item]


# --- input validation ---------------------------------------------------------------------------


def test_unequal_lengths_are_rejected():
    with pytest.raises(ValueError, match="360 entries but cand_correct has 359"):
        paired_drop([True] * 360, [True] * 359)


def test_empty_input_is_rejected():
    with pytest.raises(ValueError, match="no test images"):
        paired_drop([], [])
    with pytest.raises(ValueError, match="no test images"):
        paired_drop_from_counts(0, 0, 0, 0)


def test_non_boolean_or_nested_input_is_rejected():
    with pytest.raises(ValueError, match="booleans"):
        paired_drop([0.9, 0.8], [1, 0])
    with pytest.raises(ValueError, match="booleans"):
        paired_drop([1, 2], [1, 0])
    with pytest.raises(ValueError, match="flat sequence"):
        paired_drop([[True, False]], [[True, True]])


def test_inconsistent_counts_are_rejected():
    with pytest.raises(ValueError, match="base_correct"):
        paired_drop_from_counts(10, 0, 0, 11)
    with pytest.raises(ValueError, match="b "):
        paired_drop_from_counts(10, 5, 0, 4)
    with pytest.raises(ValueError, match="c "):
        paired_drop_from_counts(10, 0, 3, 8)
    with pytest.raises(ValueError, match="whole count"):
        paired_drop_from_counts(10, 1.5, 0, 8)
    with pytest.raises(ValueError, match=">= 0"):
        paired_drop_from_counts(10, -1, 0, 8)


@pytest.mark.parametrize("confidence", [0, 1, 95, -0.5, "high"])
def test_bad_confidence_is_rejected(confidence):
    with pytest.raises(ValueError, match="confidence"):
        paired_drop_from_counts(360, 4, 2, 340, confidence)


@pytest.mark.parametrize(("n", "halfwidth"), [(40, 0.0876), (30, 0.1135), (10, 0.2775), (1, 0.7935)])
def test_the_interval_of_identical_predictions_is_the_one_the_messages_quote(n, halfwidth):
    """recipes/schema.py, docs/errors.md and docs/verdicts.md quote these half-widths (once quoted as
    +-8.4 pp at n = 40 and +-10 pp or wider below it: neither held)."""
    from optcheck.core.stats import agreement_halfwidth

    assert agreement_halfwidth(n) == pytest.approx(halfwidth, abs=5e-5)
    assert agreement_halfwidth(n) == -paired_drop_from_counts(n, 0, 0, n).low
