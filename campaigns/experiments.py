"""Copy experiments: an anytime-valid sequential test (mSPRT) and Thompson sampling with a floor; pure NumPy.

Fixed mode splits the test users evenly over the variants and compares every pair with a mixture sequential
probability ratio test on the difference of two rates (normal approximation, mixing N(0, tau^2) with tau the
minimum detectable effect; Johari et al., "Always valid inference", 2017). Its confidence sequences hold at
every look at once, so peeking after every batch is safe. A variant wins when its interval against every
other variant lies above zero; alpha is split over the k(k-1)/2 pairs (Bonferroni), so with all copies equal
a false winner appears with probability at most alpha whatever the number of looks.

Bandit mode allocates by the posterior probability of being best (Beta(1 + successes, 1 + failures) per
variant), each variant keeping at least `floor`; the probability each user was allocated with is returned for
the log, so estimates from the bandit's data can be reweighted.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb, log, sqrt
from statistics import NormalDist

import numpy as np

__all__ = ["ArmStats", "Verdict", "half_width", "verdict", "required_per_arm", "thompson_probabilities",
           "allocate"]


@dataclass(frozen=True)
class ArmStats:
    """Per variant: users allocated and users with the metric (e.g. clicked)."""

    n: np.ndarray
    successes: np.ndarray


@dataclass(frozen=True)
class Verdict:
    winner: int | None  # index of the winning variant, or None (no decision yet)
    rates: np.ndarray
    lower: np.ndarray  # (k, k): lower confidence-sequence bound of rate[i] - rate[j]
    upper: np.ndarray


def half_width(v: np.ndarray | float, tau: float, alpha: float) -> np.ndarray:
    """Half-width of the mSPRT confidence sequence for a difference with sampling variance v (valid at all times)."""
    v = np.maximum(np.asarray(v, dtype=float), 1e-18)
    t2 = tau * tau
    return np.sqrt(v * (v + t2) / t2 * (np.log((v + t2) / v) + 2.0 * log(1.0 / alpha)))


def _pair_alpha(alpha: float, k: int) -> float:
    return alpha / max(1, comb(k, 2))


def verdict(stats: ArmStats, mde: float, baseline: float, alpha: float) -> Verdict:
    """The sequential decision now: the variant whose confidence sequences against all others lie above zero."""
    n = np.asarray(stats.n, dtype=float)
    k = len(n)
    rates = np.where(n > 0, np.asarray(stats.successes, dtype=float) / np.maximum(n, 1), 0.0)
    # A rate estimate of 0 or 1 has zero plug-in variance: shrink towards the baseline for the variance only.
    p = (np.asarray(stats.successes, dtype=float) + baseline) / (n + 1.0)
    var = p * (1 - p) / np.maximum(n, 1)
    diff = rates[:, None] - rates[None, :]
    w = half_width(var[:, None] + var[None, :], mde * baseline, _pair_alpha(alpha, k))
    lower, upper = diff - w, diff + w
    winner = None
    if k > 1 and (n > 0).all():
        beats = (lower > 0) | np.eye(k, dtype=bool)
        winners = np.flatnonzero(beats.all(axis=1))
        winner = int(winners[0]) if len(winners) else None
    return Verdict(winner, rates, lower, upper)


def required_per_arm(mde: float, baseline: float, alpha: float, power: float, k: int) -> int:
    """Users per variant at which the sequential rule detects a relative lift of `mde` over `baseline` with
    probability about `power` (the interval half-width plus the estimate's own noise reaches the effect)."""
    delta = mde * baseline
    p_bar = baseline * (1 + mde / 2)
    z = NormalDist().inv_cdf(power ** (1 / max(1, k - 1)))  # the best must beat all k - 1 others
    a = _pair_alpha(alpha, k)

    def short(n: float) -> bool:
        v = 2 * p_bar * (1 - p_bar) / n
        return delta - z * sqrt(v) < float(half_width(v, delta, a))

    lo, hi = 2.0, 2.0
    while short(hi):
        lo, hi = hi, hi * 2
        if hi > 1e10:
            break
    while hi - lo > 1:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if short(mid) else (lo, mid)
    return int(np.ceil(hi))


def thompson_probabilities(stats: ArmStats, floor: float, rng: np.random.Generator, draws: int = 2000) -> np.ndarray:
    """P(variant is best) under Beta posteriors (Monte Carlo), mixed with a floor so each keeps >= floor."""
    n = np.asarray(stats.n, dtype=float)
    s = np.asarray(stats.successes, dtype=float)
    k = len(n)
    samples = rng.beta(1 + s, 1 + n - s, size=(draws, k))
    best = np.bincount(samples.argmax(axis=1), minlength=k) / draws
    floor = min(floor, 1.0 / k)
    return floor + (1 - k * floor) * best


def allocate(probabilities: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw a variant per user with the given probabilities; the variants and each one's probability (for the log)."""
    p = np.asarray(probabilities, dtype=float)
    p = p / p.sum()
    arms = rng.choice(len(p), size=size, p=p)
    return arms, p[arms]
