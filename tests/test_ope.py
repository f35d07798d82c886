"""Off-policy estimators on logs with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from nextbest.training.ope import doubly_robust, estimate_all, ips, snips


def logged_bandit(n: int, seed: int):
    """Contexts x in {0,1}, 3 actions; true reward prob known; a non-uniform logging policy."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2, n)
    truth = np.array([[0.05, 0.20, 0.10], [0.30, 0.02, 0.15]])  # P(reward | x, a)
    logging = np.array([[0.6, 0.1, 0.3], [0.2, 0.5, 0.3]])  # P(a | x) under the logging policy
    a = (rng.random(n)[:, None] > np.cumsum(logging[x], axis=1)).sum(axis=1)
    r = (rng.random(n) < truth[x, a]).astype(float)
    target = np.array([[0, 1, 0], [1, 0, 0]], dtype=float)  # the best action per context
    true_value = (target * truth).sum(axis=1)[x].mean()
    return x, a, r, logging[x, a], target[x, a], truth, target, true_value


@pytest.mark.parametrize("estimator", [ips, snips])
def test_importance_estimators_recover_the_true_value(estimator):
    x, a, r, p, t, *_, true_value = logged_bandit(200_000, seed=1)
    est = estimator(p, t, r)
    assert est.low <= true_value <= est.high
    assert est.value == pytest.approx(true_value, rel=0.05)
    assert est.effective_n < len(p)  # reweighting costs samples


def test_doubly_robust_is_right_with_a_wrong_reward_model_and_tighter_with_a_good_one():
    x, a, r, p, t, truth, target, true_value = logged_bandit(100_000, seed=2)
    wrong = np.full_like(truth, 0.5)
    est_wrong = doubly_robust(p, t, r, wrong[x, a], (target * wrong).sum(1)[x])
    assert est_wrong.value == pytest.approx(true_value, rel=0.06)
    est_good = doubly_robust(p, t, r, truth[x, a], (target * truth).sum(1)[x])
    assert est_good.value == pytest.approx(true_value, rel=0.03)
    assert (est_good.high - est_good.low) < (ips(p, t, r).high - ips(p, t, r).low)


def test_intervals_cover_at_about_the_nominal_rate():
    covered = 0
    for seed in range(40):
        _, _, r, p, t, _, _, true_value = logged_bandit(3_000, seed=100 + seed)
        est = snips(p, t, r)
        covered += est.low <= true_value <= est.high
    assert covered >= 33  # 95 % nominal; >= 33/40 fails with small probability only if intervals are too narrow


def test_bad_propensities_are_rejected_with_a_reason():
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        ips([0.5, 0.0], [1, 1], [1, 0])
    with pytest.raises(ValueError, match="one entry per logged decision"):
        snips([0.5, 0.5], [1], [1, 0])
    assert [e.method for e in estimate_all([0.5], [1.0], [1.0], [0.2], [0.3])] == ["IPS", "SNIPS", "DR"]


def test_a_paired_difference_cancels_where_the_policies_agree():
    from nextbest.training.ope import dr_terms, paired_difference

    rng = np.random.default_rng(3)
    base = rng.random(2_000)
    same = paired_difference(base, base)
    assert same.value == 0 and same.low == 0 and same.high == 0
    shifted = base.copy()
    shifted[:100] += 1.0  # one policy is worth 1 more on 5 % of the decisions
    diff = paired_difference(shifted, base)
    assert diff.value == pytest.approx(0.05) and diff.low < 0.05 < diff.high
    assert diff.high - diff.low < 0.05  # far tighter than the spread of either policy's own terms
    p, t, r = np.full(4, 0.5), np.array([1.0, 0.0, 1.0, 0.0]), np.array([1.0, 1.0, 0.0, 0.0])
    assert dr_terms(p, t, r, np.full(4, 0.5), np.full(4, 0.5)) == pytest.approx([1.5, 0.5, -0.5, 0.5])
    assert doubly_robust(p, t, r, np.full(4, 0.5), np.full(4, 0.5)).value == pytest.approx(0.5)
