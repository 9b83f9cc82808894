"""Paired accuracy drop with a confidence interval, and decision rules for a drop budget.

A baseline and a compressed candidate are scored on the *same* test images, so the two accuracies
are paired: only the images on which they disagree carry information about the drop. With the
usual few hundred test images one image moves accuracy by a few tenths of a percentage point, so
a point estimate alone cannot tell a real regression from noise; this module gives the drop an
interval and lets a budget say how to use it.

Counts follow the paired 2x2 table, rows = baseline, columns = candidate::

                      candidate right   candidate wrong
    baseline right          a                 b
    baseline wrong          c                 d

``drop = base_acc - cand_acc = (b - c) / n``.

The interval is Newcombe's hybrid score interval for a difference of paired proportions
(his method 10): Wilson score intervals for the two marginal accuracies, combined by
"square and add" with a correction for the correlation between them. It stays inside [-1, 1],
has no convergence issues (closed form), and does not collapse when there are no discordant
pairs (b = c = 0 at n = 360 gives about +-1.06 pp, where the Wald interval gives zero width).
It errs on the wide side in the regime optcheck sees (n = 360, accuracy around 93-95%, a handful
of disagreements): simulated coverage there was about 98% for a nominal 95% (4,000 simulated test
sets per setting), so ``assured_under`` is a little harder to pass and
``not_significantly_over`` a little harder to fail than the nominal level suggests.

    Newcombe RG (1998). Improved confidence intervals for the difference between binomial
    proportions based on paired data. Statistics in Medicine 17:2635-2650.

Only numpy and scipy are used (scipy is already installed as a dependency of scikit-learn), and
both are imported inside the functions that need them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence, Union

__all__ = [
    "RULES",
    "NEWCOMBE_METHOD",
    "PairedDrop",
    "SeedsDrop",
    "Decision",
    "paired_drop",
    "paired_drop_from_counts",
    "wilson_interval",
    "mcnemar_pvalue",
    "mean_drop",
    "decide",
]

RULES = ("point", "not_significantly_over", "assured_under")

NEWCOMBE_METHOD = "newcombe-wilson paired (Newcombe 1998, method 10)"

_RULE_TEXT = {
    "point": "pass when the observed drop <= {limit}",
    "not_significantly_over": "fail only when the lower bound > {limit}",
    "assured_under": "pass only when the upper bound <= {limit}",
}


def _check_confidence(confidence: float) -> float:
    try:
        conf = float(confidence)
    except (TypeError, ValueError):
        raise ValueError(f"confidence must be a number in (0, 1), got {confidence!r}") from None
    if not 0.0 < conf < 1.0:
        raise ValueError(f"confidence must be in (0, 1) (e.g. 0.95), got {confidence!r}")
    return conf


def _z(confidence: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + confidence / 2.0))


def _count(name: str, value: Any) -> int:
    try:
        whole = not isinstance(value, (bool, str)) and float(value).is_integer()
    except (TypeError, ValueError):
        whole = False
    if not whole:
        raise ValueError(f"{name} must be a whole count, got {value!r}")
    value = int(value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _pp(x: float) -> str:
    """A fraction as percentage points with two decimals ("-0.31")."""
    v = round(100.0 * x, 2)
    return f"{v + 0.0:.2f}"  # + 0.0 turns -0.0 into 0.0


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (statsmodels' ``method='wilson'``)."""
    conf = _check_confidence(confidence)
    x = _count("successes", successes)
    n = _count("n", n)
    if n == 0:
        raise ValueError("n must be > 0 for a proportion's interval")
    if x > n:
        raise ValueError(f"successes ({x}) cannot exceed n ({n})")
    z = _z(conf)
    z2 = z * z
    centre = (x + z2 / 2.0) / (n + z2)
    half = z / (n + z2) * math.sqrt(x * (n - x) / n + z2 / 4.0)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class PairedDrop:
    """Accuracy drop of a candidate against its baseline on the same ``n`` test images.

    All rates are fractions (0.01 = 1 percentage point). ``b``: images only the baseline got
    right; ``c``: images only the candidate got right. ``low``/``high``: the interval on
    ``drop`` at level ``confidence``.
    """

    n: int
    base_acc: float
    cand_acc: float
    drop: float
    b: int
    c: int
    low: float
    high: float
    confidence: float
    method: str = NEWCOMBE_METHOD

    @property
    def base_correct(self) -> int:
        """Number of images the baseline got right."""
        return round(self.base_acc * self.n)

    def describe(self) -> str:
        pct = f"{self.confidence * 100:g}%"
        return (f"drop {_pp(self.drop)} pp, {pct} CI [{_pp(self.low)}, {_pp(self.high)}] pp "
                f"(n={self.n}; {self.b} images only the baseline got right, "
                f"{self.c} only the candidate)")


@dataclass(frozen=True)
class SeedsDrop:
    """Mean drop over several seeds (each a separately trained baseline + candidate, all scored
    on the same test images), with a t-interval over the per-seed drops.

    ``drop`` is the mean of the per-seed drops, ``sd`` their sample standard deviation, and
    ``low``/``high`` the t-interval ``mean +- t(k-1) * sd / sqrt(k)``. ``per_seed`` keeps each
    seed's own paired interval.

    Read the interval with care:

    * With 2-3 seeds it is wide: the t quantile has 1-2 degrees of freedom (12.7 and 4.3 at 95%),
      so only a recipe whose seeds agree closely gets a narrow interval.
    * It measures seed-to-seed (training) variation on this test set. Every seed is scored on the
      same images, so the test set's own sampling error is shared by all seeds and does not show
      up in their spread; ``per_seed`` gives that part, seed by seed.
    * If every seed has exactly the same drop, ``sd`` is 0 and the t-interval has zero width.
    * With a single seed there is no spread to estimate; ``low``/``high`` are then that seed's
      paired interval (at ``confidence``), ``sd`` is NaN, and ``method`` says so.
    """

    per_seed: tuple[PairedDrop, ...]
    drop: float
    sd: float
    low: float
    high: float
    confidence: float
    method: str

    @property
    def seeds(self) -> int:
        return len(self.per_seed)

    @property
    def n(self) -> int:
        return self.per_seed[0].n

    def describe(self) -> str:
        pct = f"{self.confidence * 100:g}%"
        per = ", ".join(_pp(d.drop) for d in self.per_seed)
        if self.seeds == 1:
            return f"1 seed: {self.per_seed[0].describe()}"
        return (f"mean drop {_pp(self.drop)} pp over {self.seeds} seeds, {pct} t-interval "
                f"[{_pp(self.low)}, {_pp(self.high)}] pp (n={self.n} images per seed; "
                f"per-seed drops {per} pp; sd {_pp(self.sd)} pp)")


def paired_drop_from_counts(n: int, b: int, c: int, base_correct: int,
                            confidence: float = 0.95) -> PairedDrop:
    """PairedDrop from counts: ``n`` images, ``b`` right only for the baseline, ``c`` right only
    for the candidate, ``base_correct`` images the baseline got right (so ``a = base_correct - b``
    both got right)."""
    conf = _check_confidence(confidence)
    n, b, c = _count("n", n), _count("b", b), _count("c", c)
    base_correct = _count("base_correct", base_correct)
    if n == 0:
        raise ValueError("no test images (n = 0): an accuracy drop needs at least one image")
    if base_correct > n:
        raise ValueError(f"base_correct ({base_correct}) cannot exceed n ({n})")
    if b > base_correct:
        raise ValueError(f"b ({b}, baseline right and candidate wrong) cannot exceed "
                         f"base_correct ({base_correct})")
    if c > n - base_correct:
        raise ValueError(f"c ({c}, baseline wrong and candidate right) cannot exceed the "
                         f"{n - base_correct} images the baseline got wrong")
    a = base_correct - b
    d = n - a - b - c
    cand_correct = a + c
    low, high = _newcombe_paired(a, b, c, d, conf)
    return PairedDrop(n=n, base_acc=base_correct / n, cand_acc=cand_correct / n,
                      drop=(b - c) / n, b=b, c=c, low=low, high=high, confidence=conf)


def agreement_halfwidth(n: int, confidence: float = 0.95) -> float:
    """Half the width of the paired interval of the drop when a candidate predicts exactly like a
    baseline that gets all ``n`` test samples right (no discordant pair): what a verdict on ``n``
    samples cannot tell apart from no drop. 0.0876 at n = 40, 0.1135 at 30, 0.2775 at 10 (95%)."""
    return paired_drop_from_counts(n, 0, 0, n, confidence).high


def _newcombe_paired(a: int, b: int, c: int, d: int, confidence: float) -> tuple[float, float]:
    """Newcombe (1998) method 10 interval for p1 - p2, p1 = (a+b)/n, p2 = (a+c)/n."""
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_interval(a + b, n, confidence)
    l2, u2 = wilson_interval(a + c, n, confidence)
    # phi: correlation between the two marginals, with Newcombe's continuity correction
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    if margins == 0:
        phi = 0.0
    else:
        cross = a * d - b * c
        if cross > n / 2:
            cross = cross - n / 2
        elif cross >= 0:
            cross = 0
        phi = cross / math.sqrt(margins)
    diff = p1 - p2
    dl1, du1 = p1 - l1, u1 - p1
    dl2, du2 = p2 - l2, u2 - p2
    lower = diff - math.sqrt(max(0.0, dl1 ** 2 - 2 * phi * dl1 * du2 + du2 ** 2))
    upper = diff + math.sqrt(max(0.0, dl2 ** 2 - 2 * phi * dl2 * du1 + du1 ** 2))
    return max(-1.0, lower), min(1.0, upper)


def _as_bool_vector(name: str, values: Any):
    import numpy as np

    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a flat sequence with one entry per test image, "
                         f"got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    if arr.size and not (np.issubdtype(arr.dtype, np.number) and np.isin(arr, (0, 1)).all()):
        raise ValueError(f"{name} must hold booleans (or 0/1) saying whether each test image "
                         f"was classified correctly")
    return arr.astype(bool)


def paired_drop(base_correct: Sequence[bool] | Any, cand_correct: Sequence[bool] | Any,
                confidence: float = 0.95) -> PairedDrop:
    """Paired accuracy drop from per-image correctness of the baseline and the candidate.

    ``base_correct[i]`` / ``cand_correct[i]``: whether the baseline / candidate classified test
    image ``i`` correctly. Both must describe the same images in the same order.
    """
    import numpy as np

    base = _as_bool_vector("base_correct", base_correct)
    cand = _as_bool_vector("cand_correct", cand_correct)
    if base.shape[0] != cand.shape[0]:
        raise ValueError(f"base_correct has {base.shape[0]} entries but cand_correct has "
                         f"{cand.shape[0]}; both must describe the same test images")
    if base.shape[0] == 0:
        raise ValueError("no test images (empty inputs): an accuracy drop needs at least one image")
    b = int(np.count_nonzero(base & ~cand))
    c = int(np.count_nonzero(~base & cand))
    return paired_drop_from_counts(int(base.shape[0]), b, c, int(np.count_nonzero(base)),
                                   confidence)


def mcnemar_pvalue(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` vs ``c`` discordant images (binomial test of
    ``min(b, c)`` out of ``b + c`` at 1/2; equals statsmodels' ``mcnemar(exact=True)``).
    1.0 when there are no discordant images."""
    from scipy.stats import binomtest

    b, c = _count("b", b), _count("c", c)
    if b + c == 0:
        return 1.0
    return float(min(1.0, binomtest(min(b, c), b + c, 0.5).pvalue))


def mean_drop(drops: Sequence[PairedDrop], confidence: float = 0.95) -> SeedsDrop:
    """Mean drop over seeds with a t-interval over the per-seed drops (see ``SeedsDrop``)."""
    from scipy.stats import t as student_t

    conf = _check_confidence(confidence)
    drops = tuple(drops)
    if not drops:
        raise ValueError("no seeds given: mean_drop needs at least one PairedDrop")
    for i, d in enumerate(drops):
        if not isinstance(d, PairedDrop):
            raise ValueError(f"drops[{i}] is a {type(d).__name__}, expected a PairedDrop")
    sizes = sorted({d.n for d in drops})
    if len(sizes) > 1:
        raise ValueError(f"the seeds were scored on different numbers of test images {sizes}; "
                         f"every seed must use the same test images")
    k = len(drops)
    values = [d.drop for d in drops]
    mean = sum(values) / k
    if k == 1:
        only = drops[0]
        if only.confidence != conf:  # the seed's own paired interval, at the level asked for
            only = paired_drop_from_counts(only.n, only.b, only.c, only.base_correct, conf)
        return SeedsDrop(per_seed=(only,), drop=mean, sd=float("nan"), low=only.low,
                         high=only.high, confidence=conf,
                         method=f"single seed: {only.method}")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (k - 1))
    half = float(student_t.ppf(0.5 + conf / 2.0, k - 1)) * sd / math.sqrt(k)
    return SeedsDrop(per_seed=drops, drop=mean, sd=sd, low=mean - half, high=mean + half,
                     confidence=conf, method=f"t-interval over {k} seeds ({k - 1} df)")


@dataclass(frozen=True)
class Decision:
    """Outcome of judging a drop against a budget ``drop <= limit`` under ``rule``."""

    passed: bool
    rule: str
    limit: float
    drop: Union[PairedDrop, SeedsDrop]

    def explain(self) -> str:
        rule_text = _RULE_TEXT[self.rule].format(limit=f"{_pp(self.limit)} pp")
        verdict = "pass" if self.passed else "fail"
        return f"{self.drop.describe()}; rule {self.rule}: {rule_text} -> {verdict}"


def decide(drop: Union[PairedDrop, SeedsDrop], limit: float, rule: str = "point") -> Decision:
    """Judge a budget "the drop must be at most ``limit``" (a fraction: 0.01 = 1 pp).

    * ``point``: pass iff the observed drop <= limit (no interval used).
    * ``not_significantly_over``: fail only when the whole interval is above the limit
      (``low > limit``); the benefit of the doubt goes to the candidate.
    * ``assured_under``: pass only when the whole interval is at or below the limit
      (``high <= limit``); the benefit of the doubt goes to the baseline.
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; allowed rules: {', '.join(RULES)}")
    if not isinstance(drop, (PairedDrop, SeedsDrop)):
        raise ValueError(f"decide needs a PairedDrop or SeedsDrop, got {type(drop).__name__}")
    try:
        lim = float(limit)
    except (TypeError, ValueError):
        raise ValueError(f"limit must be a number (a fraction, 0.01 = 1 pp), "
                         f"got {limit!r}") from None
    if not math.isfinite(lim):
        raise ValueError(f"limit must be finite, got {limit!r}")
    if rule == "point":
        passed = drop.drop <= lim
    elif rule == "not_significantly_over":
        passed = not drop.low > lim
    else:
        passed = drop.high <= lim
    return Decision(passed=bool(passed), rule=rule, limit=lim, drop=drop)


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval for the median of ``values`` (independent draws): order statistics
    ``x_(j)`` and ``x_(n-j+1)`` with the largest ``j`` for which ``P(Binomial(n, 1/2) <= j - 1) <=
    (1 - confidence) / 2``, so the coverage is at least ``confidence``. For n = 200 at 95% that is the
    86th and 115th of the sorted values. Below 6 values no such ``j`` exists at 95%: the whole range."""
    from scipy.stats import binom

    conf = _check_confidence(confidence)
    xs = sorted(float(v) for v in values)
    n = len(xs)
    if n == 0:
        raise ValueError("median_interval needs at least one value")
    i = int(binom.ppf((1.0 - conf) / 2.0, n, 0.5))  # smallest i with cdf(i) >= alpha/2
    while i >= 0 and binom.cdf(i, n, 0.5) > (1.0 - conf) / 2.0:
        i -= 1  # the largest i with cdf(i) <= alpha/2 (j = i + 1)
    if i < 0:
        return xs[0], xs[-1]
    return xs[i], xs[n - 1 - i]
