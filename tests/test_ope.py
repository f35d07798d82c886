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


def clustered_log(users: int, per_user: int, seed: int):
    """A log where clustering matters: each user buys organically (or not) once in the week, and that purchase is the
    reward of every one of the user's `per_user` decisions (as one purchase converts every send of the week before
    it); the logging policy sends with probability 0.3, the target policy always sends. True value: 0.25."""
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(users), per_user)
    bought = rng.random(users) < 0.25
    sent = rng.random(len(user)) < 0.3
    p = np.where(sent, 0.3, 0.7)
    return user, p, sent.astype(float), bought[user].astype(float)


def test_clustered_intervals_cover_where_per_row_ones_are_too_narrow():
    """Brute force: over 300 planted logs, the per-row standard error of IPS, SNIPS and DR is well below the spread of
    the estimates (each user's 8 rewards are one purchase), the user-clustered one matches it, and the clustered
    intervals cover the true value at about 95 %."""
    from nextbest.training.ope import doubly_robust

    values = {m: [] for m in ("IPS", "SNIPS", "DR")}
    se = {m: [] for m in values}
    se_rows = {m: [] for m in values}
    covered = {m: 0 for m in values}
    for seed in range(300):
        user, p, t, r = clustered_log(200, 8, seed)
        for e in (ips(p, t, r, user), snips(p, t, r, user),
                  doubly_robust(p, t, r, np.full(len(r), 0.2), np.full(len(r), 0.2), user)):
            values[e.method].append(e.value)
            se[e.method].append(e.se)
            se_rows[e.method].append(e.se_rows)
            covered[e.method] += e.low <= 0.25 <= e.high
            assert e.clusters == 200
    for m in values:
        spread = np.std(values[m], ddof=1)
        assert np.mean(se[m]) == pytest.approx(spread, rel=0.15), m  # clustered: the estimates' real spread
        assert np.mean(se_rows[m]) < 0.75 * spread, m  # per row: far too narrow
        assert covered[m] >= 0.9 * 300, m


def test_clustered_standard_error_by_hand_and_one_row_per_user_is_the_per_row_form():
    from nextbest.training.ope import paired_difference

    # IPS terms w r = [2, 0, 2, 0] (p 0.5, always matched), users [a, a, b, c]: mean 1, centred sums per user
    # (1 + -1, 1, -1) / 4 = (0, 0.25, -0.25); SE = sqrt((0 + 1/16 + 1/16) x 3 / 2) = sqrt(3/16)
    p, t, r = np.full(4, 0.5), np.ones(4), np.array([1.0, 0.0, 1.0, 0.0])
    e = ips(p, t, r, ["a", "a", "b", "c"])
    assert e.value == 1.0 and e.se == pytest.approx(np.sqrt(3 / 16)) and e.clusters == 3
    assert e.se_rows == pytest.approx(np.std([2, 0, 2, 0], ddof=1) / 2)
    rng = np.random.default_rng(5)
    p, t, r = rng.uniform(0.1, 1, 500), (rng.random(500) < 0.5).astype(float), (rng.random(500) < 0.3).astype(float)
    ids = np.arange(500)
    for plain, clustered in ((ips(p, t, r), ips(p, t, r, ids)), (paired_difference(r, t), paired_difference(r, t, ids))):
        assert clustered.se == pytest.approx(plain.se) and clustered.value == plain.value
        assert plain.clusters is None and clustered.clusters == 500
    s = snips(p, t, r, ids)  # the delta method's per-row form has no n / (n - 1): only that factor apart
    assert s.se == pytest.approx(snips(p, t, r).se * np.sqrt(500 / 499))
    with pytest.raises(ValueError, match="one cluster"):
        ips(p, t, r, ids[:10])
