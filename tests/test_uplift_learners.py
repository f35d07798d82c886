"""Uplift metrics (scikit-uplift's definitions, per offer) and the meta-learners, on data with a planted effect."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nextbest.training.datasets import TrainingSet
from nextbest.training.metrics import (
    fold_interval,
    per_offer_uplift_metrics,
    qini_auc_score,
    uplift_at_k,
    uplift_auc_score,
)
from nextbest.training.tabular import FitConfig
from nextbest.training.uplift import (
    UpliftConfig,
    candidates,
    choose_learner,
    evaluate,
    fit,
    fit_learner,
    offer_scores,
    paired_qini,
    pick_learner,
)

# scikit-uplift 0.5.1's qini_auc_score and uplift_auc_score on this small log, computed once with the library itself
# (it is not a dependency; ours matched it to 0.0 on random logs with ties too).
SKLIFT_QINI, SKLIFT_AUUC = 0.6957446808510639, 0.5202380952380952
_Y = np.array([1, 0, 1, 0, 0, 1, 0, 1, 0, 0, 1, 0])
_T = np.array([1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 0, 0])
_S = np.array([0.9, 0.8, 0.1, 0.7, 0.3, 0.2, 0.6, 0.75, 0.4, 0.5, 0.35, 0.3])


def test_normalised_qini_and_auuc_follow_scikit_uplift():
    perfect = _Y * _T - _Y * (1 - _T)
    assert qini_auc_score(_Y, _T, perfect) == pytest.approx(1.0)
    assert qini_auc_score(_Y, _T, _S) == pytest.approx(SKLIFT_QINI, abs=1e-9)
    assert uplift_auc_score(_Y, _T, _S) == pytest.approx(SKLIFT_AUUC, abs=1e-9)
    # Top 8 of 12: treated 2 of 6 converted, control 1 of 2.
    assert uplift_at_k(_Y, _T, _S, 8 / 12) == pytest.approx(2 / 6 - 1 / 2)
    assert np.isnan(uplift_at_k(_Y, _T, _S, 0.25))  # the top 3 are all treated: no control to compare with
    assert qini_auc_score(_Y, _T, -perfect) < 0  # the reversed perfect ranking is worse than random
    # Ties move together: a constant score is the random ranking.
    assert qini_auc_score(_Y, _T, np.zeros(len(_Y))) == pytest.approx(0.0, abs=1e-12)


def planted(n: int, seed: int) -> TrainingSet:
    """Offer A lifts conversion by 0.2 where f1 > 0, offer B where f1 < 0; a third of the users are controls."""
    rng = np.random.default_rng(seed)
    f1, f2 = rng.normal(size=n), rng.normal(size=n)
    arm = rng.integers(0, 3, n)  # 0 control, 1 offer A, 2 offer B
    lift = np.where(arm == 1, 0.2 * (f1 > 0), np.where(arm == 2, 0.2 * (f1 < 0), 0.0))
    y = (rng.random(n) < 0.05 + 0.05 * (f2 > 0) + lift).astype("int64")
    offer = np.where(arm == 1, "A", np.where(arm == 2, "B", None))
    frame = pd.DataFrame({
        "user_id": [f"u{i}" for i in range(n)], "event_timestamp": pd.Timestamp("2026-01-01", tz="UTC"),
        "f1": f1, "f2": f2, "offer_id": offer, "offer_category": np.where(arm > 0, "any", None),
        "offer_kind": np.where(arm > 0, "product", None), "offer_value": np.where(arm == 1, 10.0, np.where(arm == 2, 20.0, np.nan)),
        "channel": np.where(arm > 0, "email", None), "local_hour": 10, "treated": (arm > 0).astype("int64"),
        "opened": 0, "clicked": 0, "label": y,
    })
    return TrainingSet(frame, "uplift_v1", ("f1", "f2"), ("offer_id", "offer_category", "offer_kind", "offer_value",
                                                          "channel", "local_hour"), treatment="treated")


def truth_scores(data: TrainingSet) -> dict[str, np.ndarray]:
    f1 = data.frame["f1"].to_numpy()
    return {"A": (f1 > 0).astype(float), "B": (f1 < 0).astype(float)}


def test_per_offer_metrics_score_the_controls_for_each_offer():
    data = planted(6_000, seed=1)
    treated = data.frame["treated"].to_numpy() == 1
    offers = data.frame["offer_id"].to_numpy()
    right = per_offer_uplift_metrics(data.y, treated, offers, truth_scores(data))
    assert set(right) == {"A", "B"} and all(m["qini_auc"] > 0.15 for m in right.values())
    # Controls scored as something else (an empty offer a model rates lower or higher) sort the arms apart: the
    # figure then measures the arms' score levels, not the targeting (here doubled, or gone).
    for shift in (-1.0, 1.0):
        off = {k: np.where(treated, v, v + shift) for k, v in truth_scores(data).items()}
        wrong = per_offer_uplift_metrics(data.y, treated, offers, off)
        assert all(abs(wrong[o]["qini_auc"] - right[o]["qini_auc"]) > 0.1 for o in ("A", "B"))


_QUICK = UpliftConfig(fit=FitConfig(trials=1, max_rounds=60), folds=2, select_rounds=40)


@pytest.mark.parametrize("learner", ["s", "t", "x", "dr"])
def test_each_learner_recovers_the_planted_effect_per_offer(learner, tmp_path):
    train, holdout = planted(6_000, seed=2), planted(3_000, seed=3)
    scorer = fit_learner(learner, train, _QUICK)
    metrics = evaluate(scorer, holdout)
    truth = per_offer_uplift_metrics(holdout.y, holdout.frame["treated"].to_numpy() == 1,
                                     holdout.frame["offer_id"].to_numpy(), truth_scores(holdout))
    for offer in ("A", "B"):  # random ranking: 0 +- 0.03 here; the true effect's ranking: about 0.2
        assert metrics[f"qini_auc/{offer}"] > 0.6 * truth[offer]["qini_auc"], (offer, metrics)
    assert scorer.params_["learner"] == learner  # logged with the run's params in MLflow
    rows, scores = offer_scores(scorer, holdout)
    controls_for_a = rows[~rows["_treated"] & (rows["_offer"] == "A")]
    assert len(controls_for_a) == int((holdout.frame["treated"] == 0).sum())  # every control, scored for offer A
    assert set(controls_for_a["offer_id"]) == {"A"} and set(controls_for_a["offer_value"]) == {10.0}
    assert set(controls_for_a["channel"]) == {"email"}
    assert np.isnan(scores["A"][(rows["_offer"] == "B").to_numpy()]).all()
    # The registry loads it back from its safe-format files, by its kind, with the same scores.
    from nextbest.training.registry import load_scorer, save_scorer

    digest = save_scorer(scorer, tmp_path / learner)
    loaded = load_scorer(tmp_path / learner, digest)
    assert type(loaded) is type(scorer)
    np.testing.assert_array_equal(loaded.predict(holdout.frame), scorer.predict(holdout.frame))


def test_auto_choice_is_cross_fitted_recorded_and_funnel_needs_opens():
    train = planted(4_000, seed=4)
    assert candidates(train) == ("s", "t", "x", "dr")  # no tracked opens: no funnel learner
    with pytest.raises(ValueError, match="open tracking"):
        fit_learner("funnel", train, _QUICK)
    with pytest.raises(ValueError, match="choose auto or one of s, t, x, dr, funnel"):
        fit_learner("q", train, _QUICK)
    table = choose_learner(train, _QUICK, learners=("t", "dr"))
    assert set(table) == {"s", "t", "dr"}  # the S-learner always: every other is paired with it
    for row in table.values():
        assert row["folds"] == 2 and row["qini_auc_low"] <= row["qini_auc"] <= row["qini_auc_high"]
        assert row["qini_auc"] > 0.1
        assert row["gap_to_s_low"] <= row["gap_to_s"] <= row["gap_to_s_high"] and row["gap_folds"] == 2
    assert (table["s"]["gap_to_s"], table["s"]["gap_to_s_high"]) == (0.0, 0.0)
    assert table["t"]["gap_to_s"] == pytest.approx(table["t"]["qini_auc"] - table["s"]["qini_auc"])  # same folds
    scorer = fit(train, _QUICK)
    assert scorer.params_["learner"] in ("s", "t", "x", "dr")
    recorded = {name: {k.removeprefix("cv_").split("/")[0]: v for k, v in scorer.selection_.items()
                       if k.endswith(f"/{name}")} for name in ("s", "t", "x", "dr")}
    assert (scorer.params_["learner"], scorer.params_["learner_choice"]) == pick_learner(recorded)


def no_heterogeneity(n: int, seed: int) -> TrainingSet:
    """`planted`'s shape, but offers A and B lift conversion by 0.05 for everyone: no learner can rank users by
    uplift better than another (every true Qini AUC is 0), so any gap between learners is noise."""
    data = planted(n, seed)
    rng = np.random.default_rng(seed + 1000)
    f2, treated = data.frame["f2"].to_numpy(), data.frame["treated"].to_numpy() == 1
    y = (rng.random(n) < 0.05 + 0.05 * (f2 > 0) + 0.05 * treated).astype("int64")
    return TrainingSet(data.frame.assign(label=y), data.feature_service, data.features, data.request,
                       treatment="treated")


def through_opens(n: int, seed: int) -> TrainingSet:
    """A contact lifts conversion by 0.2 only when opened, and whether it is opened follows f1 (P = 1 / (1 +
    exp(-5 f1))); opens are tracked. The funnel learner reads the open stage directly: fitted on 8,000 users and
    scored on 60,000 fresh ones its Qini AUC beat the S-learner's by 0.012 (seeds 0 and 1: 0.125 against 0.113,
    0.121 against 0.109)."""
    data = planted(n, seed)
    rng = np.random.default_rng(seed + 2000)
    f1, f2 = data.frame["f1"].to_numpy(), data.frame["f2"].to_numpy()
    treated = data.frame["treated"].to_numpy() == 1
    opened = treated & (rng.random(n) < 1 / (1 + np.exp(-5 * f1)))
    y = (rng.random(n) < 0.1 + 0.1 * (f2 > 0) + 0.2 * opened).astype("int64")
    return TrainingSet(data.frame.assign(label=y, opened=opened.astype("int64")), data.feature_service,
                       data.features, data.request, treatment="treated")


def test_auto_keeps_s_where_another_learner_beats_it_by_noise_only():
    """Issue 19, Thornton: `auto` took t over s on a cross-fitted difference of 0.005 with intervals of +-0.12. Here
    every true Qini is 0 and dr's cross-fitted Qini is above s's (by noise): the highest figure would take dr, `auto`
    keeps s because no paired gap's interval is above 0. (Over 20 such worlds, seeds 0-19, the rule kept s in 19; the highest
    figure took another learner in 13.)"""
    train = no_heterogeneity(4_000, seed=6)
    table = choose_learner(train, replace_folds(3))
    assert max(table[n]["qini_auc"] for n in ("t", "x", "dr")) > table["s"]["qini_auc"] + 0.01  # noise "beats" s
    assert all(table[n]["gap_to_s_low"] < 0 < table[n]["gap_to_s_high"] for n in ("t", "x", "dr"))
    chosen, reason = pick_learner(table)
    assert chosen == "s" and reason.startswith("kept s: no candidate's paired gap to s is surely above 0")
    scorer = fit(train, replace_folds(3))
    assert scorer.params_["learner"] == "s" and scorer.params_["learner_choice"] == reason
    assert scorer.selection_["cv_gap_to_s/t"] == pytest.approx(table["t"]["gap_to_s"])


def test_auto_takes_a_learner_that_is_surely_better_than_s():
    """Where the effect works through tracked opens the funnel learner is surely better than s (planted, checked on
    fresh users: `through_opens`): its paired gap's interval is above 0, and `auto` fits it. (At 8,000 users the
    interval cleared 0 on 3 of seeds 0-5: a small true gap is not always detected, and then s is kept.)"""
    train = through_opens(8_000, seed=1)
    table = choose_learner(train, replace_folds(3))
    assert table["funnel"]["gap_to_s_low"] > 0
    chosen, reason = pick_learner(table)
    assert chosen == "funnel" and reason.startswith("funnel: paired gap to s +")
    assert all(table[n]["gap_to_s"] < table["funnel"]["gap_to_s"] for n in ("t", "x", "dr"))  # the best of the sure


def test_auto_defaults_to_the_funnel_where_opens_are_tracked_unless_s_is_surely_better():
    """On a targeted log with tracked opens the funnel learner is the default (it learns from the opens the others
    ignore; on the demo world a 20,000-row choice could not tell it from s surely, and the NBA with s's uplift earned
    90 % of the history oracle against 95 %): kept unless its gap to s is surely below 0; a candidate surely above
    s still wins; without opens (no funnel in the table) s is the default."""
    def row(gap, low, high):
        return {"folds": 3.0, "qini_auc": 0.1 + gap, "gap_to_s": gap, "gap_to_s_low": low, "gap_to_s_high": high,
                "gap_folds": 3.0}

    s, t = row(0.0, 0.0, 0.0), row(0.01, -0.05, 0.07)
    chosen, reason = pick_learner({"s": s, "t": t, "funnel": row(0.061, -0.032, 0.154)})
    assert chosen == "funnel" and reason.startswith("funnel: the default where opens are tracked")
    assert pick_learner({"s": s, "t": t, "funnel": row(-0.09, -0.15, -0.03)})[0] == "s"  # s surely better: s
    assert pick_learner({"s": s, "t": row(0.08, 0.02, 0.14), "funnel": row(0.03, -0.02, 0.08)})[0] == "t"  # sure wins
    assert pick_learner({"s": s, "t": t})[0] == "s"  # no tracked opens: s


def replace_folds(folds: int) -> UpliftConfig:
    from dataclasses import replace

    return replace(_QUICK, folds=folds)


def test_the_bootstrap_resamples_qini_exactly_and_pairs_each_resample():
    """`qini_auc_replicates` on a resample's row counts equals `qini_auc_score` on the rows repeated that often
    (ties included); all ones is the plain figure."""
    from nextbest.training.metrics import qini_auc_replicates

    rng = np.random.default_rng(0)
    n = 400
    y, t = (rng.random(n) < 0.3).astype(int), (rng.random(n) < 0.6).astype(int)
    score = np.round(rng.random(n), 1)  # many ties
    draws = rng.multinomial(n, np.full(n, 1 / n), size=4)
    expected = [qini_auc_score(np.repeat(y, w), np.repeat(t, w), np.repeat(score, w)) for w in draws]
    np.testing.assert_allclose(qini_auc_replicates(y, t, score, draws), expected, rtol=1e-12)
    assert qini_auc_replicates(y, t, score, np.ones((1, n)))[0] == pytest.approx(qini_auc_score(y, t, score))


def test_fold_interval_is_a_t_interval_and_needs_two_folds():
    mean, low, high = fold_interval([0.1, 0.2, 0.3])
    assert mean == pytest.approx(0.2) and high - mean == pytest.approx(mean - low)
    assert high - mean == pytest.approx(4.302652729911275 * 0.1 / np.sqrt(3))  # t(0.975, 2 df) x se
    assert np.isnan(fold_interval([0.1])[1]) and fold_interval([np.nan, 0.4])[0] == pytest.approx(0.4)


def test_the_choice_reads_a_bounded_sample_of_whole_users():
    from nextbest.training.uplift import _user_sample

    data = planted(3_000, seed=8)
    data = data.subset(np.r_[np.arange(3_000), np.arange(1_000)])  # 1,000 users with two rows each
    sample = _user_sample(data, 1_500, seed=7)
    assert 1_400 <= len(sample.frame) <= 1_500
    counts = data.frame["user_id"].value_counts()
    assert (sample.frame["user_id"].value_counts() == counts.reindex(sample.frame["user_id"].unique())).all()
    assert _user_sample(data, 10_000, seed=7) is data


def test_the_s_learner_scores_an_action_against_no_action():
    """Uplift = the one model with the action minus the same model with the action's columns empty (as the control
    rows were fitted): the same whether a control row arrives with its logged offer or with none."""
    from nextbest.training.scorers import S_ACTION_COLUMNS

    train, holdout = planted(4_000, seed=9), planted(1_000, seed=10)
    scorer = fit_learner("s", train, _QUICK)
    sent = holdout.frame.assign(offer_id="A", offer_category="any", offer_kind="product", offer_value=10.0,
                                channel="email")
    uplift = scorer.predict(sent)
    none = sent.assign(**{c: None for c in S_ACTION_COLUMNS})
    with_action = scorer.booster_.predict(scorer.encoder_.codes(sent))
    without = scorer.booster_.predict(scorer.encoder_.codes(none))
    np.testing.assert_allclose(uplift, with_action - without)
    np.testing.assert_allclose(scorer.predict(none), 0.0)  # no action: no uplift
    f1 = holdout.frame["f1"].to_numpy()
    assert uplift[f1 > 0].mean() > uplift[f1 < 0].mean() + 0.1  # offer A works where f1 > 0 (planted 0.2)


class _Ranking:
    """A fixed ranking of the planted holdout: the true effect's (sign 1), reversed (-1), with seeded noise."""

    def __init__(self, sign: float = 1.0, noise: float = 0.0, seed: int = 0):
        self.sign, self.noise, self.seed = sign, noise, seed

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        f1, a = frame["f1"].to_numpy(), (frame["offer_id"].astype(str) == "A").to_numpy()
        right = np.where(a, f1 > 0, f1 < 0).astype(float)
        return self.sign * right + self.noise * np.random.default_rng(self.seed).normal(size=len(frame))


def test_the_paired_qini_tells_a_better_ranking_from_a_lucky_one():
    """The uplift gate's evidence: challenger minus champion Qini AUC on the same holdout, with a paired bootstrap
    interval over users. A model against itself: exactly 0. The true ranking against its reverse: surely better.
    Two equally noisy rankings, one higher on this holdout by chance: its interval reaches below 0."""
    holdout = planted(1_500, seed=3)
    same = paired_qini(_Ranking(), _Ranking(), holdout)
    assert same["difference"] == same["low"] == same["high"] == 0.0 and same["users"] == 1_500
    better = paired_qini(_Ranking(), _Ranking(-1.0), holdout)
    assert better["challenger"] == pytest.approx(evaluate(_Ranking(), holdout)["qini_auc"])  # evaluate's own figure
    assert better["low"] > 0.1 and better["difference"] > 0.3
    worse = paired_qini(_Ranking(-1.0), _Ranking(), holdout)
    assert worse["high"] < 0
    lucky = paired_qini(_Ranking(noise=2.0, seed=4), _Ranking(noise=2.0, seed=100), holdout)
    assert lucky["challenger"] > lucky["champion"] and lucky["low"] < 0 < lucky["high"]
