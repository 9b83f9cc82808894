"""How much worse a candidate is than its baseline on a team metric, with a paired interval when the
metric gives one value per sample.

The drop is measured in the metric's bad direction (higher-is-better: baseline - candidate; lower-is-
better: candidate - baseline), so a positive drop is always worse and one budget rule fits every metric.

- 0/1 values per sample (a correctness flag): the paired interval of ``core.stats`` (Newcombe), as for
  top-1 accuracy.
- Other values per sample (a Brier score, a log-loss, a word error count): a paired bootstrap of the
  mean per-sample difference, BCa, 9,999 resamples, seeded. Bootstrap rather than a t-interval because
  per-sample quality values are bounded and skewed and their paired differences are mostly zero, which
  the t-interval's normal approximation handles badly at a few hundred samples; BCa corrects the
  bootstrap's bias and skew. Resampling the differences is resampling the pairs.
- One number per split (macro-F1, an expected calibration error): no interval; the verdict is the
  point value and says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from optcheck.core.stats import NEWCOMBE_METHOD, RULES

BOOTSTRAP_METHOD = "paired bootstrap of the per-sample differences (BCa, 9,999 resamples, seeded)"
NO_INTERVAL = "one number per split: no interval (the point value decides)"
RESAMPLES = 9_999


@dataclass(frozen=True)
class MetricDrop:
    name: str
    better: str  # "higher" | "lower"
    base: float
    cand: float
    drop: float  # how much worse the candidate is; > 0 is worse
    low: float | None  # the interval of ``drop``; None without per-sample values
    high: float | None
    n: int | None
    confidence: float
    method: str

    def describe(self) -> str:
        head = (f"{self.name} ({self.better} is better): baseline {self.base:.6g}, candidate {self.cand:.6g}, "
                f"drop {self.drop:+.4g}")
        if self.low is None:
            return f"{head} ({NO_INTERVAL})"
        return f"{head}, {self.confidence:.0%} interval [{self.low:+.4g}, {self.high:+.4g}] (n={self.n}; {self.method})"


def metric_drop(name: str, better: str, base, cand, confidence: float = 0.95) -> MetricDrop:
    """The drop from ``base`` to ``cand`` (``build.metrics.MetricValue``s of one split)."""
    sign = 1.0 if better == "higher" else -1.0
    drop = sign * (base.value - cand.value)
    if base.per_sample is None or cand.per_sample is None:
        return MetricDrop(name, better, base.value, cand.value, drop, None, None, None, confidence, NO_INTERVAL)
    b, c = np.asarray(base.per_sample, dtype=float), np.asarray(cand.per_sample, dtype=float)
    n = len(b)
    if set(np.unique(np.concatenate([b, c]))) <= {0.0, 1.0}:  # correctness flags: as accuracy
        from optcheck.core.stats import paired_drop

        good_b, good_c = (b, c) if better == "higher" else (1 - b, 1 - c)
        pd = paired_drop(good_b.astype(bool), good_c.astype(bool), confidence)
        return MetricDrop(name, better, base.value, cand.value, pd.drop, pd.low, pd.high, n, confidence,
                          NEWCOMBE_METHOD)
    d = sign * (b - c)  # each sample's worsening
    if np.all(d == d[0]):
        low = high = float(d[0])
        method = "every paired difference is the same: no spread to resample"
    else:
        from scipy.stats import bootstrap

        res = bootstrap((d,), np.mean, confidence_level=confidence, n_resamples=RESAMPLES, method="BCa",
                        random_state=np.random.default_rng(0))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        method = BOOTSTRAP_METHOD
        if not (math.isfinite(low) and math.isfinite(high)):  # BCa undefined (e.g. one sample differs)
            res = bootstrap((d,), np.mean, confidence_level=confidence, n_resamples=RESAMPLES,
                            method="percentile", random_state=np.random.default_rng(0))
            low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
            method = BOOTSTRAP_METHOD.replace("BCa", "percentile: BCa undefined here")
    return MetricDrop(name, better, base.value, cand.value, drop, low, high, n, confidence, method)


def decide_metric(drop: MetricDrop, limit: float, rule: str = "point") -> tuple[bool, str]:
    """``(passed, explanation)`` of the budget "drop <= limit" under ``rule`` (``core.stats.RULES``); a
    metric without an interval is judged on its point value whatever the rule, and the text says so."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; allowed rules: {', '.join(RULES)}")
    eps = 1e-12 * max(1.0, abs(limit))
    if drop.low is None or rule == "point":
        passed = drop.drop <= limit + eps
        used = "point" if rule == "point" else f"point (rule {rule} needs an interval; {NO_INTERVAL})"
        text = f"pass when the drop <= {limit:.4g}"
    elif rule == "not_significantly_over":
        passed, used = not drop.low > limit + eps, rule
        text = f"fail only when the whole interval is over {limit:.4g}"
    else:
        passed, used = drop.high <= limit + eps, rule
        text = f"pass only when the whole interval is at or under {limit:.4g}"
    return passed, f"{drop.describe()}; rule {used}: {text} -> {'pass' if passed else 'fail'}"
