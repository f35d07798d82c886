"""Off-policy evaluation: the value a candidate policy would have earned, estimated from logged decisions.

Logged data: one row per decision with the logged action's probability under the logging policy
(`propensity`) and its reward. The candidate policy gives, for each logged row, the probability it
would have taken the logged action (`target_prob`); doubly robust also needs a reward model's
prediction for the logged action (`q_logged`) and its expected reward under the candidate policy
(`q_target` = sum over actions of pi(a|x) q(x, a)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Estimate", "ips", "snips", "doubly_robust", "dr_terms", "paired_difference", "estimate_all"]

_Z = 1.959963984540054  # two-sided 95 % normal quantile


@dataclass(frozen=True)
class Estimate:
    """A policy value with a 95 % confidence interval and the effective sample size of the weights."""

    method: str
    value: float
    low: float
    high: float
    n: int
    effective_n: float

    def as_row(self) -> dict[str, float | str | int]:
        return {"method": self.method, "value": self.value, "ci_low": self.low, "ci_high": self.high,
                "n": self.n, "effective_n": self.effective_n}


def _check(propensity: np.ndarray, target_prob: np.ndarray, reward: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(propensity, dtype="float64")
    if p.size == 0:
        raise ValueError("no logged decisions to evaluate")
    if np.any(~np.isfinite(p)) or np.any(p <= 0) or np.any(p > 1):
        raise ValueError("logged propensities must be in (0, 1]: a zero or missing one makes the estimate undefined")
    t = np.asarray(target_prob, dtype="float64")
    r = np.asarray(reward, dtype="float64")
    if not (len(t) == len(p) == len(r)):
        raise ValueError("propensity, target_prob and reward must have one entry per logged decision")
    return t / p, r


def _effective_n(w: np.ndarray) -> float:
    return float(w.sum() ** 2 / np.maximum((w**2).sum(), 1e-300))


def _mean_ci(method: str, terms: np.ndarray, w: np.ndarray) -> Estimate:
    n = len(terms)
    mean = float(terms.mean())
    se = float(terms.std(ddof=1) / np.sqrt(n)) if n > 1 else float("inf")
    return Estimate(method, mean, mean - _Z * se, mean + _Z * se, n, _effective_n(w))


def ips(propensity, target_prob, reward) -> Estimate:
    """Inverse propensity scoring: mean of w * r, unbiased when propensities are right."""
    w, r = _check(propensity, target_prob, reward)
    return _mean_ci("IPS", w * r, w)


def snips(propensity, target_prob, reward) -> Estimate:
    """Self-normalised IPS: sum(w r) / sum(w); a little bias, much less variance; delta-method interval."""
    w, r = _check(propensity, target_prob, reward)
    total = w.sum()
    if total <= 0:
        raise ValueError("the candidate policy never takes a logged action: nothing to estimate from")
    value = float((w * r).sum() / total)
    se = float(np.sqrt(((w * (r - value)) ** 2).sum()) / total)
    return Estimate("SNIPS", value, value - _Z * se, value + _Z * se, len(w), _effective_n(w))


def dr_terms(propensity, target_prob, reward, q_logged, q_target) -> np.ndarray:
    """Each logged decision's doubly robust term: the estimate is their mean."""
    w, r = _check(propensity, target_prob, reward)
    q_l = np.asarray(q_logged, dtype="float64")
    q_t = np.asarray(q_target, dtype="float64")
    if not (len(q_l) == len(q_t) == len(w)):
        raise ValueError("q_logged and q_target must have one entry per logged decision")
    return q_t + w * (r - q_l)


def doubly_robust(propensity, target_prob, reward, q_logged, q_target) -> Estimate:
    """Doubly robust: the reward model's value plus an IPS correction of its error on the logged action."""
    w, _ = _check(propensity, target_prob, reward)
    return _mean_ci("DR", dr_terms(propensity, target_prob, reward, q_logged, q_target), w)


def paired_difference(terms, baseline_terms) -> Estimate:
    """Policy A minus policy B from their per-decision terms on the same logged decisions (e.g. `dr_terms`):
    where both take the same action the terms cancel, so the interval is far tighter than two separate ones."""
    a, b = np.asarray(terms, dtype="float64"), np.asarray(baseline_terms, dtype="float64")
    if a.shape != b.shape:
        raise ValueError("both policies' terms must come from the same logged decisions")
    return _mean_ci("difference", a - b, np.ones(len(a)))


def estimate_all(propensity, target_prob, reward, q_logged=None, q_target=None) -> list[Estimate]:
    """IPS and SNIPS, plus DR when a reward model's predictions are given."""
    out = [ips(propensity, target_prob, reward), snips(propensity, target_prob, reward)]
    if q_logged is not None and q_target is not None:
        out.append(doubly_robust(propensity, target_prob, reward, q_logged, q_target))
    return out
