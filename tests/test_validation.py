"""Honest validation: folds grouped by user, out-of-fold scores only, the champion's recipe on the challenger's
folds, the refit on every row, and the BG/NBD baseline recovering a planted customer base."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nextbest.training.datasets import TrainingSet
from nextbest.training.scorers import BlendScorer
from nextbest.training.tabular import FitConfig, fit_booster
from nextbest.training.validation import (
    bgnbd_expected,
    booster_recipe,
    champion_on_folds,
    cross_validate,
    fit_bgnbd,
    fit_linear,
    fold_metrics,
    repeat_purchase_stats,
    training_rows,
    user_folds,
    validate,
)


def test_training_rows_leave_out_every_row_of_the_scored_folds_users():
    """Rows of a user in fold k never train fold k's model, whatever fold the row itself is in (snapshot rows of one
    user can fall in several folds when folds are not grouped); rows left out of the CV (-1) never train."""
    rng = np.random.default_rng(3)
    users = np.array([f"{x:05d}" for x in rng.integers(0, 400, 3_000)], dtype=object)  # ids are text ("00042")
    folds = rng.integers(-1, 5, len(users))
    for k in range(5):
        train = training_rows(folds, k, users)
        scored = set(users[folds == k])
        want = np.array([f >= 0 and f != k and u not in scored for f, u in zip(folds, users, strict=True)])
        np.testing.assert_array_equal(train, want)
        assert 0 < train.sum() < (folds >= 0).sum()
    np.testing.assert_array_equal(training_rows(folds, 2), (folds >= 0) & (folds != 2))  # without users: the folds


def _xor_set(n_users: int = 300, per_user: int = 3, seed: int = 0) -> TrainingSet:
    """Users with several rows each; the label is the XOR of two signs: a tree learns it, a linear model cannot."""
    rng = np.random.default_rng(seed)
    users = np.repeat([f"u{i:04d}" for i in range(n_users)], per_user)
    a, b = rng.normal(size=len(users)), rng.normal(size=len(users))
    p = np.where((a > 0) ^ (b > 0), 0.85, 0.15)
    frame = pd.DataFrame({"user_id": users, "event_timestamp": pd.Timestamp("2026-01-01", tz="UTC"), "a": a, "b": b,
                          "noise": rng.normal(size=len(users)), "label": (rng.random(len(users)) < p).astype(int)})
    return TrainingSet(frame, "svc_v1", ("a", "b", "noise"), ())


def _tuned(data: TrainingSet):
    return fit_booster(data.frame, data.inputs, data.y, data.feature_service, FitConfig(trials=1, max_rounds=60))


def test_folds_group_every_row_of_a_user_together_and_a_sample_keeps_whole_users():
    data = _xor_set()
    folds = user_folds(data.frame["user_id"], data.y, 3, seed=1)
    assert set(folds) == {0, 1, 2}
    users = data.frame["user_id"].to_numpy()
    for k in range(3):
        assert not set(users[folds == k]) & set(users[folds != k])  # no user on both sides
    sampled = user_folds(data.frame["user_id"], data.y, 3, seed=1, max_rows=300)
    kept = pd.Series(sampled >= 0).groupby(users).agg(["min", "max"])
    assert (kept["min"] == kept["max"]).all()  # a user is in or out with all its rows
    assert 250 <= (sampled >= 0).sum() <= 350


def test_out_of_fold_scores_never_come_from_a_model_that_saw_the_user():
    data = _xor_set()
    folds = user_folds(data.frame["user_id"], data.y, 3, seed=1)
    seen = []

    def spy(train: TrainingSet, test: TrainingSet) -> np.ndarray:
        seen.append((set(train.frame["user_id"]), set(test.frame["user_id"])))
        return np.full(len(test.frame), 0.5)

    scores = cross_validate(spy, data, folds)
    assert len(seen) == 3 and all(not (tr & te) for tr, te in seen)
    assert not np.isnan(scores).any()
    m = fold_metrics(data.y, cross_validate(booster_recipe(_tuned(data).params_), data, folds), folds)
    assert m["folds"] == 3 and m["auc"] > 0.75  # the planted XOR is learnt out of fold
    for name in ("auc", "logloss", "brier", "calibration_error"):
        assert m[f"{name}_folds_low"] <= m[name] <= m[f"{name}_folds_high"]


def test_the_model_is_the_better_candidate_by_cv_refit_on_every_row_with_the_baselines_beside_it():
    data = _xor_set()
    folds = user_folds(data.frame["user_id"], data.y, 3, seed=1)
    fitted_on = []

    def tuned(rows: TrainingSet):
        fitted_on.append(len(rows.frame))
        return _tuned(rows)

    v = validate(data, tuned, folds, {"constant": lambda train, test: np.full(len(test.frame), train.y.mean())})
    assert fitted_on == [len(data.frame)]  # tuned and refit on all rows, never on a fold only
    assert v.metrics["lightgbm_auc"] > v.metrics["logistic_auc"] + 0.2 and v.metrics["constant_auc"] == 0.5
    best = max(("lightgbm", "logistic", "blend"), key=lambda n: v.metrics[f"{n}_auc"])
    assert v.learner == best and v.metrics["chosen_auc"] == v.metrics[f"{best}_auc"]
    # the reported figure is the nested choice's: on a XOR no fold's inner CV picks the linear model
    assert len(v.choices) == 3 and "logistic" not in v.choices
    assert v.metrics["auc"] <= v.metrics["chosen_auc"] and v.metrics["logistic_auc_gain_low"] > 0.1  # paired over folds
    assert v.scorer.predict(data.frame).shape == (len(data.frame),)
    # the logistic candidate, when chosen, is refit on every row too: its scales are those of all rows
    linear = fit_linear(data)
    assert linear.encoder_.means["a"] == pytest.approx(data.frame["a"].mean())


def test_gate_judges_the_champions_recipe_on_the_same_folds():
    data = _xor_set()
    folds = user_folds(data.frame["user_id"], data.y, 3, seed=1)
    v = validate(data, _tuned, folds)
    # a challenger identical to the champion scores exactly the champion's figure: the gate (strictly better) keeps it
    assert champion_on_folds(v.scorer, data, folds) == v.metrics["chosen_auc"]
    # a champion made by a clearly worse recipe (linear, on a XOR) loses on the same folds
    assert champion_on_folds(fit_linear(data), data, folds) < v.metrics["auc"] - 0.2
    # a blend champion's recipe is its two learners' recipes: the same figure as the blend's out-of-fold scores
    blend = BlendScorer(_tuned(data), fit_linear(data))
    assert champion_on_folds(blend, data, folds) == pytest.approx(v.metrics["blend_auc"], abs=1e-12)


def _bgnbd_world(n: int = 3000, weeks: float = 78, seed: int = 0) -> pd.DataFrame:
    """Purchases drawn from BG/NBD with r=0.25, alpha=4, a=0.8, b=2.5 (the CDNOW estimates), one per day at most."""
    rng = np.random.default_rng(seed)
    lam, p = rng.gamma(0.25, 1 / 4.0, n), rng.beta(0.8, 2.5, n)
    rows = []
    for i in range(n):
        t = 0.0
        rows.append((i, t))
        while True:
            t += rng.exponential(1 / lam[i])
            if t > weeks:
                break
            rows.append((i, t))
            if rng.random() < p[i]:
                break
    ev = pd.DataFrame(rows, columns=["user_id", "weeks"])
    return pd.DataFrame({"user_id": ev["user_id"].astype(str), "type": "purchase",
                         "ts": pd.Timestamp("2020-01-01", tz="UTC") + pd.to_timedelta(ev["weeks"] * 7, unit="D")})


def test_bgnbd_recovers_a_planted_customer_base_and_forecasts_its_repeat_purchases():
    events = _bgnbd_world(seed=3)
    cut = pd.Timestamp("2020-01-01", tz="UTC") + pd.Timedelta(weeks=39)
    rows = pd.DataFrame({"user_id": events["user_id"].unique(), "event_timestamp": cut})
    s = repeat_purchase_stats(rows, events)
    model = fit_bgnbd(s["x"].to_numpy(), s["t_x"].to_numpy(), s["T"].to_numpy())
    assert model.r == pytest.approx(0.25, rel=0.2) and model.alpha == pytest.approx(4.0, rel=0.2)
    assert model.a / (model.a + model.b) == pytest.approx(0.8 / 3.3, rel=0.2)  # the mean dropout probability
    expected = bgnbd_expected(model, s["x"].to_numpy(), s["t_x"].to_numpy(), s["T"].to_numpy(), 39)
    actual = events[events["ts"] >= cut].assign(day=lambda e: e["ts"].dt.floor("D")).drop_duplicates(["user_id", "day"])
    assert expected.sum() == pytest.approx(len(actual), rel=0.1)
    bought = rows["user_id"].isin(actual["user_id"]).to_numpy()
    assert expected[bought].mean() > 2 * expected[~bought].mean()


def test_linear_and_blend_models_load_back_and_score_the_same_compiled(tmp_path):
    from nextbest.training.compiled import RequestGrid, Rows, UserColumns
    from nextbest.training.registry import load_scorer, save_scorer

    data = _xor_set(n_users=100)
    frame = data.frame.copy()
    frame.loc[::7, "a"] = np.nan  # a missing number scores as the mean in the linear part
    for model in (fit_linear(data), BlendScorer(_tuned(data), fit_linear(data))):
        save_scorer(model, tmp_path / model.kind)
        loaded = load_scorer(tmp_path / model.kind)
        assert type(loaded) is type(model)
        np.testing.assert_array_equal(loaded.predict(frame), model.predict(frame))
        users = {c: frame[c].to_numpy() for c in ("user_id", "a", "b", "noise")}
        x = Rows(UserColumns(users), np.arange(len(frame)), np.zeros(len(frame), dtype="int64"), None,
                 RequestGrid([], ["email"]))
        np.testing.assert_allclose(loaded.compile(list(data.features), []).predict(x), model.predict(frame), rtol=1e-12)


def test_bgnbd_baseline_scores_users_without_a_purchase_by_their_own_rate_not_as_new_customers():
    """BG/NBD starts at a customer's first purchase; prospects who never bought (most users of an app or a shop's
    newsletter list) rarely buy. Scored as customers of age 0 they ranked above most real customers (AUC ~0.5 on
    the demo world); the baseline gives them the training rows' share of prospects who bought."""
    from sklearn.metrics import roc_auc_score

    from nextbest.training.validation import bgnbd_recipe

    rng = np.random.default_rng(5)
    customers = _bgnbd_world(n=800, seed=5)
    cut = pd.Timestamp("2020-01-01", tz="UTC") + pd.Timedelta(weeks=39)
    prospects = [f"p{i:05d}" for i in range(1600)]
    first_buys = [u for u in prospects if rng.random() < 0.05]  # 5 % buy for the first time within the horizon
    events = pd.concat([customers, pd.DataFrame({"user_id": first_buys, "type": "purchase",
                                                 "ts": cut + pd.Timedelta(days=30)})], ignore_index=True)
    users = [*customers["user_id"].unique(), *prospects]
    window = events[(events["ts"] >= cut) & (events["ts"] < cut + pd.Timedelta(days=273))]
    frame = pd.DataFrame({"user_id": users, "event_timestamp": cut,
                          "label": pd.Series(users).isin(window["user_id"]).astype(int)})
    data = TrainingSet(frame, "svc_v1", (), ())
    folds = user_folds(frame["user_id"], data.y, 3, seed=2)
    scores = cross_validate(bgnbd_recipe(events, 273), data, folds)
    is_prospect = frame["user_id"].str.startswith("p").to_numpy()
    for k in range(3):  # each fold's prospects get the training folds' share of prospects who bought
        train = (folds != k) & is_prospect
        assert np.allclose(scores[(folds == k) & is_prospect], data.y[train].mean())
    assert scores[is_prospect].max() < np.median(scores[~is_prospect])  # below the typical customer, as in truth
    assert roc_auc_score(data.y, scores) > 0.7


def _weekly_set(n_users: int = 120, weeks: int = 30, seed: int = 0) -> TrainingSet:
    """Users x weekly snapshot dates; the label (a purchase in the next 28 days) follows a feature."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2026-01-05", periods=weeks, freq="7D", tz="UTC")
    frame = pd.DataFrame({"user_id": np.repeat([f"u{i:04d}" for i in range(n_users)], weeks),
                          "event_timestamp": np.tile(dates, n_users)})
    frame["a"] = rng.normal(size=len(frame))
    frame["label"] = (rng.random(len(frame)) < np.where(frame["a"] > 0, 0.7, 0.2)).astype(int)
    return TrainingSet(frame, "svc_v1", ("a",), ())


def test_time_folds_with_an_embargo_never_train_on_a_label_window_overlapping_the_validation_window():
    from nextbest.training.validation import time_folds

    data = _weekly_set()
    times = data.frame["event_timestamp"]
    folds = time_folds(times, 5)
    order = pd.DataFrame({"t": times, "k": folds}).groupby("k")["t"].agg(["min", "max"])  # -2 (train only) first
    assert list(order.index) == [-2, 0, 1, 2, 3, 4]
    assert (order["min"].iloc[1:].to_numpy() > order["max"].iloc[:-1].to_numpy()).all()  # contiguous blocks of dates
    horizon = pd.Timedelta(days=28)
    calls = []

    def spy(train: TrainingSet, test: TrainingSet) -> np.ndarray:
        calls.append((train.frame[["user_id", "event_timestamp"]], test.frame[["user_id", "event_timestamp"]]))
        return np.full(len(test.frame), 0.5)

    cross_validate(spy, data, folds, embargo_days=28)
    assert len(calls) == 5
    for train, test in calls:
        # every training row's outcome window [t, t + 28 d) has closed before the validation rows' first date: no
        # training outcome overlaps a validation outcome, and no training row is newer than a validation row
        assert (train["event_timestamp"] + horizon <= test["event_timestamp"].min()).all()
        assert len(train) > 0
    # the weeks just before each fold (their outcomes happen inside its window) are what the embargo leaves out
    newest = [train["event_timestamp"].max() for train, _ in calls]
    assert all(test["event_timestamp"].min() - t >= horizon for t, (_, test) in zip(newest, calls, strict=True))
    assert all(test["event_timestamp"].min() - t < horizon + pd.Timedelta(days=7) for t, (_, test) in zip(newest, calls, strict=True))
    # the planted signal is still learnt through the embargoed folds, by the whole validation
    v = validate(data, _tuned, folds, embargo_days=28)
    assert v.metrics["folds"] == 5 and v.metrics["lightgbm_auc"] > 0.65


def test_an_embargo_longer_than_the_dates_allow_is_a_clear_error():
    from nextbest.training.validation import time_folds

    data = _weekly_set(weeks=4)  # four weekly dates cannot keep a 90-day outcome window apart from any fold
    with pytest.raises(ValueError, match="must span well beyond the label window"):
        cross_validate(booster_recipe({"num_boost_round": 5}), data, time_folds(data.frame["event_timestamp"], 2),
                       embargo_days=90)
    with pytest.raises(ValueError, match="needs at least 6 snapshot dates"):
        time_folds(data.frame["event_timestamp"], 5)


def test_the_nested_choice_picks_each_folds_learner_without_its_rows():
    """The model's reported AUC is out of sample for the choice of learner too: each fold's learner is chosen by an
    inner CV that never fits or scores a user of that fold (user folds), or by the earlier folds only (time folds)."""
    from nextbest.training.validation import nested_choice

    data = _xor_set(n_users=150)
    folds = user_folds(data.frame["user_id"], data.y, 3, seed=1)
    seen: list[set[str]] = []

    def part(signal: float):
        def recipe(train: TrainingSet, test: TrainingSet) -> np.ndarray:
            seen.append(set(train.frame["user_id"]) | set(test.frame["user_id"]))
            return signal * test.y + np.random.default_rng(len(seen)).normal(size=len(test.frame))
        return recipe

    # "logistic" ranks by the label, "lightgbm" against it: every fold's inner CV must pick the logistic
    choices = nested_choice({"lightgbm": part(-1.0), "logistic": part(1.0)}, data, folds, {})
    assert choices == ["logistic"] * 3
    users = data.frame["user_id"].to_numpy()
    assert len(seen) == 3 * 2  # outer folds x the two parts: one inner fit each
    for k in range(3):  # the inner calls of outer fold k touch none of fold k's users
        assert all(not (calls & set(users[folds == k])) for calls in seen[2 * k: 2 * k + 2])

    # time folds: the earlier folds' out-of-fold scores decide, nothing is refit; the first fold takes the default
    weekly = _weekly_set(weeks=12)
    from nextbest.training.validation import time_folds

    tf = time_folds(weekly.frame["event_timestamp"], 3)
    signal = weekly.frame["a"].to_numpy()
    outer = {"lightgbm": -signal, "logistic": signal, "blend": np.zeros(len(signal))}

    def never(train, test):
        raise AssertionError("time folds refit nothing for the nested choice")

    assert nested_choice({"lightgbm": never, "logistic": never}, weekly, tf, outer, embargo_days=28) == \
        ["lightgbm", "logistic", "logistic"]


def test_bgnbd_inputs_are_fitted_on_the_training_rows_and_both_scoring_paths_compute_them_alike(tmp_path):
    """The encoder fits BG/NBD on its training rows and appends E[purchases in the window] and P(alive), computed
    from the same three behaviour columns by the pandas and the compiled path; they rank next-period buyers."""
    from sklearn.metrics import roc_auc_score

    from nextbest.training.compiled import InputPlan, RequestGrid, Rows, UserColumns
    from nextbest.training.customer_base import INPUTS
    from nextbest.training.encoding import FrameEncoder, fit_encoder

    events = _bgnbd_world(n=1500, seed=4)
    cut = pd.Timestamp("2020-01-01", tz="UTC") + pd.Timedelta(weeks=39)
    rows = pd.DataFrame({"user_id": events["user_id"].unique(), "event_timestamp": cut})
    s = repeat_purchase_stats(rows, events)
    frame = rows.assign(purchase_days_all=s["x"] + 1, customer_age_days=(s["T"] * 7).round(),
                        purchase_span_days=(s["t_x"] * 7).round())
    frame.loc[::40, ["purchase_days_all", "customer_age_days", "purchase_span_days"]] = 0  # never bought
    frame.loc[3::97, "customer_age_days"] = np.nan  # a missing feature
    cols = ["purchase_days_all", "customer_age_days", "purchase_span_days"]
    enc = FrameEncoder.from_json(fit_encoder(frame, cols, customer_base_weeks=39).to_json())
    assert enc.columns[-2:] == INPUTS and enc.customer_base["r"] == pytest.approx(0.25, rel=0.3)
    codes = enc.codes(frame)
    users = {c: frame[c].to_numpy() for c in ("user_id", *cols)}
    x = Rows(UserColumns(users), np.arange(len(frame)), np.zeros(len(frame), dtype="int64"), None,
             RequestGrid([], ["email"]))
    np.testing.assert_array_equal(InputPlan(enc, cols, []).codes(x), codes)  # value for value, NaN where NaN
    expected, alive = codes[:, -2], codes[:, -1]
    assert (expected[::40] == 0).all() and (alive[::40] == 0).all()  # not a customer yet
    assert np.isnan(expected[3::97][1:]).all()
    after = events[events["ts"] >= cut]["user_id"].unique()
    bought = rows["user_id"].isin(after).to_numpy()
    ok = ~np.isnan(expected)
    assert roc_auc_score(bought[ok], expected[ok]) > 0.7
    # P(alive) is 1 without a repeat purchase (BG/NBD's convention): among repeat buyers it ranks who comes back
    repeat = ok & (frame["purchase_days_all"].to_numpy() >= 2)
    assert roc_auc_score(bought[repeat], alive[repeat]) > 0.6
    # no window asked, or no repeat buyers (an attribute table): no BG/NBD inputs
    assert fit_encoder(frame, cols).customer_base is None
    flat = frame.assign(purchase_days_all=0, customer_age_days=0, purchase_span_days=0)
    assert fit_encoder(flat, cols, customer_base_weeks=39).columns == tuple(cols)


def test_the_customer_base_candidate_is_bgnbds_inputs_alone_and_the_gate_can_redo_it(tmp_path):
    """Where the encoder has BG/NBD's inputs, a logistic regression on them alone is a candidate; its weights are 0
    on every other column, it saves and loads as a linear model, and the gate redoes its recipe on the same folds."""
    from nextbest.training.customer_base import INPUTS
    from nextbest.training.registry import load_scorer, save_scorer
    from nextbest.training.validation import CUSTOMER_BASE_C, logistic_recipe

    events = _bgnbd_world(n=800, seed=6)
    cut = pd.Timestamp("2020-01-01", tz="UTC") + pd.Timedelta(weeks=39)
    rows = pd.DataFrame({"user_id": events["user_id"].unique(), "event_timestamp": cut})
    s = repeat_purchase_stats(rows, events)
    rng = np.random.default_rng(6)
    frame = rows.assign(purchase_days_all=s["x"] + 1, customer_age_days=(s["T"] * 7).round(),
                        purchase_span_days=(s["t_x"] * 7).round(), noise=rng.normal(size=len(rows)),
                        label=rows["user_id"].isin(events.loc[events["ts"] >= cut, "user_id"]).astype(int))
    data = TrainingSet(frame, "svc_v1", ("purchase_days_all", "customer_age_days", "purchase_span_days", "noise"), (),
                       customer_base_weeks=39)
    folds = user_folds(frame["user_id"], data.y, 3, seed=1)
    auc = fold_metrics(data.y, cross_validate(logistic_recipe(CUSTOMER_BASE_C, customer_base=True), data, folds),
                       folds)["auc"]
    assert auc > 0.7  # the planted customer base is recovered out of fold
    model = fit_linear(data, CUSTOMER_BASE_C, customer_base=True)
    dense = model.encoder_.numeric
    assert {dense[j] for j in np.flatnonzero(model.coef_)} == set(INPUTS)
    save_scorer(model, tmp_path / "cb")
    loaded = load_scorer(tmp_path / "cb")
    np.testing.assert_array_equal(loaded.predict(frame), model.predict(frame))
    assert champion_on_folds(loaded, data, folds) == pytest.approx(auc, abs=1e-12)
    # rows without enough repeat buyers to fit BG/NBD (a fold of a mostly non-buying table): the base rate, no crash
    few = data.subset(frame["purchase_days_all"].to_numpy() <= 1)
    assert np.allclose(fit_linear(few, CUSTOMER_BASE_C, customer_base=True).predict(few.frame), few.y.mean())
