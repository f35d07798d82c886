"""Off-policy evaluation: the value a candidate policy would have earned, estimated from logged decisions.

Logged data: one row per decision with the logged action's probability under the logging policy
(`propensity`) and its reward. The candidate policy gives, for each logged row, the probability it
would have taken the logged action (`target_prob`); doubly robust also needs a reward model's
prediction for the logged action (`q_logged`) and its expected reward under the candidate policy
(`q_target` = sum over actions of pi(a|x) q(x, a)).

Intervals: with `clusters` (each decision's user), standard errors are clustered by user: the rewards of one user's
decisions are correlated (one organic purchase converts every send of the week before it), so the per-row form,
which treats them as independent, is too narrow (1.1-1.4x on the service's own logs, benchmarks/RESULTS.md).
Without `clusters`, each decision is its own cluster: the per-row form.
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
    se_rows: float = float("nan")  # the per-row standard error, beside the interval's (clustered when clusters are given)
    clusters: int | None = None  # the number of clusters (users) the interval's standard error is clustered by

    @property
    def se(self) -> float:
        """The standard error the interval is built from (clustered when clusters were given)."""
        return (self.high - self.low) / (2 * _Z)

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


def _cluster_ids(clusters, n: int) -> np.ndarray | None:
    if clusters is None:
        return None
    ids = np.asarray(clusters)
    if len(ids) != n:
        raise ValueError(f"clusters must name one cluster (user) per logged decision: {len(ids)} for {n} decisions")
    return ids


def _clustered_se(influence: np.ndarray, clusters: np.ndarray) -> tuple[float, int]:
    """The cluster-robust standard error of an estimate whose error is sum(influence) to first order: the influences
    summed within each cluster, their squares summed over clusters, times G / (G - 1) for G clusters (each cluster's
    sum is centred by the estimate, which costs a degree of freedom; with one row per cluster this is the per-row
    form with ddof=1)."""
    _, at = np.unique(clusters, return_inverse=True)
    sums = np.bincount(at, weights=influence)
    g = len(sums)
    if g < 2:
        return float("inf"), g
    return float(np.sqrt((sums**2).sum() * g / (g - 1))), g


def _mean_ci(method: str, terms: np.ndarray, w: np.ndarray, clusters: np.ndarray | None = None) -> Estimate:
    n = len(terms)
    mean = float(terms.mean())
    se_rows = float(terms.std(ddof=1) / np.sqrt(n)) if n > 1 else float("inf")
    se, g = (se_rows, None) if clusters is None else _clustered_se((terms - mean) / n, clusters)
    return Estimate(method, mean, mean - _Z * se, mean + _Z * se, n, _effective_n(w), se_rows, g)


def ips(propensity, target_prob, reward, clusters=None) -> Estimate:
    """Inverse propensity scoring: mean of w * r, unbiased when propensities are right. `clusters` (each decision's
    user): the interval's standard error clustered by it."""
    w, r = _check(propensity, target_prob, reward)
    return _mean_ci("IPS", w * r, w, _cluster_ids(clusters, len(w)))


def snips(propensity, target_prob, reward, clusters=None) -> Estimate:
    """Self-normalised IPS: sum(w r) / sum(w); a little bias, much less variance; delta-method interval (clustered by
    `clusters` when given)."""
    w, r = _check(propensity, target_prob, reward)
    ids = _cluster_ids(clusters, len(w))
    total = w.sum()
    if total <= 0:
        raise ValueError("the candidate policy never takes a logged action: nothing to estimate from")
    value = float((w * r).sum() / total)
    influence = w * (r - value) / total
    se_rows = float(np.sqrt((influence**2).sum()))
    se, g = (se_rows, None) if ids is None else _clustered_se(influence, ids)
    return Estimate("SNIPS", value, value - _Z * se, value + _Z * se, len(w), _effective_n(w), se_rows, g)


def dr_terms(propensity, target_prob, reward, q_logged, q_target) -> np.ndarray:
    """Each logged decision's doubly robust term: the estimate is their mean."""
    w, r = _check(propensity, target_prob, reward)
    q_l = np.asarray(q_logged, dtype="float64")
    q_t = np.asarray(q_target, dtype="float64")
    if not (len(q_l) == len(q_t) == len(w)):
        raise ValueError("q_logged and q_target must have one entry per logged decision")
    return q_t + w * (r - q_l)


def doubly_robust(propensity, target_prob, reward, q_logged, q_target, clusters=None) -> Estimate:
    """Doubly robust: the reward model's value plus an IPS correction of its error on the logged action (interval
    clustered by `clusters` when given)."""
    w, _ = _check(propensity, target_prob, reward)
    return _mean_ci("DR", dr_terms(propensity, target_prob, reward, q_logged, q_target), w, _cluster_ids(clusters, len(w)))


def paired_difference(terms, baseline_terms, clusters=None) -> Estimate:
    """Policy A minus policy B from their per-decision terms on the same logged decisions (e.g. `dr_terms`):
    where both take the same action the terms cancel, so the interval is far tighter than two separate ones.
    `clusters` (each decision's user): the interval clustered by it."""
    a, b = np.asarray(terms, dtype="float64"), np.asarray(baseline_terms, dtype="float64")
    if a.shape != b.shape:
        raise ValueError("both policies' terms must come from the same logged decisions")
    return _mean_ci("difference", a - b, np.ones(len(a)), _cluster_ids(clusters, len(a)))


def estimate_all(propensity, target_prob, reward, q_logged=None, q_target=None, clusters=None) -> list[Estimate]:
    """IPS and SNIPS, plus DR when a reward model's predictions are given (intervals clustered by `clusters`)."""
    out = [ips(propensity, target_prob, reward, clusters), snips(propensity, target_prob, reward, clusters)]
    if q_logged is not None and q_target is not None:
        out.append(doubly_robust(propensity, target_prob, reward, q_logged, q_target, clusters))
    return out
