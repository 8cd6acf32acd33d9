"""95% intervals for QA accuracy: per variant, the accuracy with a Wilson score interval; per
variant against the base model, the paired difference of accuracy with a paired-bootstrap
percentile interval (the same questions resampled for both, so what they share cancels).

Both come from scipy (``binomtest(...).proportion_ci(method="wilson")``, ``stats.bootstrap``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from headcode.errors import HeadcodeError

CONFIDENCE = 0.95
N_RESAMPLES = 10_000
METHOD = ("accuracy: Wilson score interval (95%); difference vs base: paired bootstrap over questions, "
          f"{N_RESAMPLES} resamples, percentile interval (95%)")


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def to_json(self) -> list[float]:
        return [self.low, self.high]


def _correct(x: Sequence[float] | np.ndarray) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise HeadcodeError("no questions to compute an accuracy interval on")
    if not np.all((a == 0.0) | (a == 1.0)):
        raise HeadcodeError("per-question correctness must be 0 or 1")
    return a


def wilson(correct: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE) -> Interval:
    """Accuracy of 0/1 outcomes and its Wilson score interval."""
    from scipy.stats import binomtest

    a = _correct(correct)
    k, n = int(a.sum()), a.size
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return Interval(k / n, float(ci.low), float(ci.high))


def paired_difference(correct: Sequence[float] | np.ndarray, base: Sequence[float] | np.ndarray,
                      confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
                      seed: int = 0) -> Interval:
    """Accuracy of ``correct`` minus accuracy of ``base`` on the same questions, with a paired
    bootstrap percentile interval (questions resampled with replacement, seeded)."""
    from scipy.stats import bootstrap

    a, b = _correct(correct), _correct(base)
    if a.shape != b.shape:
        raise HeadcodeError(f"paired difference needs the same questions: {a.size} vs {b.size} outcomes")
    d = a - b
    if np.all(d == d[0]):  # every resample gives the same mean
        return Interval(float(d[0]), float(d[0]), float(d[0]))
    res = bootstrap((d,), np.mean, confidence_level=confidence, n_resamples=n_resamples, method="percentile",
                    rng=np.random.default_rng(seed))
    ci = res.confidence_interval
    return Interval(float(d.mean()), float(ci.low), float(ci.high))
