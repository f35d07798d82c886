"""Training units on five-row frames: encoder, metrics, labels, and overfit-one-batch for the PyTorch models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


def test_encoder_round_trips_and_marks_unknown_categories_missing():
    from nextbest.training.encoding import FrameEncoder, fit_encoder

    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "seg": ["a", "b", "a"], "flag": [True, False, True]})
    enc = FrameEncoder.from_json(fit_encoder(frame, ["x", "seg", "flag"]).to_json())
    codes = enc.codes(pd.DataFrame({"x": [5.0], "seg": ["zzz"], "flag": [False]}))
    assert codes[0, 0] == 5.0 and np.isnan(codes[0, 1]) and codes[0, 2] == 0.0
    assert enc.dense(frame).shape == (3, 2 + 2)
    with pytest.raises(KeyError, match="seg"):
        enc.codes(frame.drop(columns="seg"))


def test_metrics_reward_the_right_ranking():
    from nextbest.training.metrics import capture_at, classification_metrics, uplift_metrics

    y = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    good = np.linspace(1, 0, 10)
    assert classification_metrics(y, good)["auc"] == 1.0
    assert capture_at(y, good, 0.2) == 1.0 and capture_at(y, good[::-1], 0.2) == 0.0
    rng = np.random.default_rng(0)
    n = 4000
    tau = rng.random(n)
    treated = rng.random(n) < 0.5
    outcome = (rng.random(n) < 0.1 + 0.5 * tau * treated).astype(int)
    assert uplift_metrics(outcome, treated, tau)["qini_auc"] > 0.01 > 0 > uplift_metrics(outcome, treated, -tau)["qini_auc"]


def test_labels_count_only_the_horizon():
    from nextbest.training.churn import ChurnConfig, churn_labels
    from nextbest.training.purchase import purchase_labels

    t = pd.Timestamp("2026-05-01", tz="UTC")
    rows = pd.DataFrame({"user_id": ["a", "b", "c"], "event_timestamp": [t] * 3})
    events = pd.DataFrame({"user_id": ["a", "b", "b", "c", "c"],
                           "ts": [t + pd.Timedelta(days=3), t - pd.Timedelta(days=2), t + pd.Timedelta(days=40),
                                  t - pd.Timedelta(days=1), t + pd.Timedelta(days=1)],
                           "type": ["purchase", "purchase", "purchase", "view", "account_closed"]})
    assert purchase_labels(rows, events, 30).tolist() == [1, 0, 0]
    label, eligible = churn_labels(rows, events, ChurnConfig(horizon_days=30, active_days=30))
    assert eligible.tolist() == [False, True, True]  # a was not active before t
    assert label.tolist()[1:] == [1, 1]  # b silent in the horizon; c closed the account


def _one_batch(n: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 12)).astype("float32"), rng.integers(0, 2, n)


def test_send_time_net_overfits_one_batch():
    import torch

    from nextbest.training.nets import train_net
    from nextbest.training.send_time import SendTimeNet

    torch.manual_seed(0)
    x, y = _one_batch()
    net = SendTimeNet(width=12, channels=3, hidden=64)
    inputs = {"x": x, "channel": np.arange(64) % 4, "hour": np.arange(64) % 24, "share": np.full(64, 0.1, "float32")}
    losses = train_net(net, inputs, y, epochs=200, batch=64, lr=1e-2, weight_decay=0.0)
    assert losses[0] > 0.5 and losses[-1] < 0.05


def test_send_time_net_with_rhythm_inputs_overfits_one_batch():
    import torch

    from nextbest.training.nets import train_net
    from nextbest.training.scorers import RHYTHM_INPUTS, SendTimeNet

    torch.manual_seed(0)
    x, y = _one_batch()
    net = SendTimeNet(width=12, channels=3, hidden=64, rhythm=RHYTHM_INPUTS)
    share = np.random.default_rng(2).normal(size=(64, RHYTHM_INPUTS)).astype("float32")
    inputs = {"x": x, "channel": np.arange(64) % 4, "hour": np.arange(64) % 24, "share": share}
    losses = train_net(net, inputs, y, epochs=200, batch=64, lr=1e-2, weight_decay=0.0)
    assert losses[0] > 0.5 and losses[-1] < 0.05


def test_rhythm_inputs_shrink_sparse_profiles_towards_the_population():
    from nextbest.training.scorers import rhythm_inputs

    prior = np.full(24, 0.5 / 22)
    prior[[8, 20]] = 0.25  # the population: mornings and evenings
    own = np.zeros((4, 24))
    own[:, 13] = 1.0  # every user's own activity: all at 13:00
    events = np.array([np.nan, 0.0, 2.0, 500.0])  # unknown, none, sparse, rich
    own[0] = np.nan  # no time profile served at all
    at = {h: rhythm_inputs(own, events, np.full(4, h), prior, strength=6.0) for h in (8, 13, 20)}
    log_share = {h: a[:, 0] for h, a in at.items()}
    # No profile or no events: the population's hours. Two events count as two against the population's six:
    # 13:00 rises a quarter of the way to the user's own share; five hundred events make it the user's own.
    for u in (0, 1):
        assert log_share[8][u] == log_share[20][u] > log_share[13][u]
    np.testing.assert_allclose(np.exp(log_share[13][2]) / 24, (2 * 1.0 + 6 * prior[13]) / 8, rtol=1e-5)
    assert log_share[8][2] > log_share[8][3] and log_share[13][3] > log_share[13][2] > log_share[13][1]
    np.testing.assert_allclose(log_share[20][:2], np.log(24 * 0.25), rtol=1e-6)
    # The second column is the share relative to the user's peak: 1 at the peak, below elsewhere.
    assert at[20][0, 1] == pytest.approx(1.0) and at[13][3, 1] == pytest.approx(1.0) and at[8][3, 1] < 0.05
    assert at[8].dtype == np.float32 and np.isfinite(np.concatenate(list(at.values()))).all()


def _rhythm_frame(peaks, events, rng, sd: float = 1.0) -> pd.DataFrame:
    """Rows of smoothed activity shares: each row's `events` events drawn around its peak hour (sd `sd` hours)."""
    gap = np.minimum(np.arange(24), 24 - np.arange(24))
    kernel = np.exp(-0.5 * (gap / 2.0) ** 2)
    smooth = np.stack([np.roll(kernel, h) for h in range(24)])
    counts = np.zeros((len(peaks), 24))
    for i, (peak, n) in enumerate(zip(peaks, events, strict=True)):
        np.add.at(counts[i], np.round(peak + rng.normal(0, sd, int(n))).astype(int) % 24, 1.0)
    shares = counts @ smooth.T
    shares = np.where(counts.sum(1, keepdims=True) > 0, shares / np.maximum(shares.sum(1, keepdims=True), 1e-12), 1 / 24)
    return pd.DataFrame({"rhythm_events_365d": np.asarray(events, dtype=float),
                         **{f"open_share_h{h:02d}": shares[:, h] for h in range(24)}})


def test_rhythm_clusters_give_a_sparse_user_the_prior_of_the_rhythm_their_events_show():
    """The population has mornings (8:00), lunch breaks (12:00) and evenings (20:00, most of it). A user with one
    event at 8:00 shrunk towards the one population profile peaks in the evening (the six events of the prior
    outweigh one); towards the mixture of the population's rhythms weighted by the posterior, in the morning.
    A user without events keeps the population's evening; a rich user is their own either way."""
    from nextbest.training.scorers import cluster_prior, rhythm_inputs
    from nextbest.training.send_time import rhythm_clusters, rhythm_prior

    rng = np.random.default_rng(5)
    peaks = rng.choice([8, 12, 20], size=600, p=[0.2, 0.2, 0.6])
    frame = _rhythm_frame(peaks, rng.integers(40, 120, 600), rng)
    clusters, weights = rhythm_clusters(frame, 4, min_events=30, seed=7)
    assert clusters.shape == (len(weights), 24) and weights.sum() == pytest.approx(1.0)
    assert {8, 12, 20} <= set(clusters.argmax(axis=1).tolist()) and np.allclose(clusters.sum(axis=1), 1.0)
    prior = rhythm_prior(frame)
    assert int(prior.argmax()) == 20
    users = _rhythm_frame([8, 8, 20, 12], [1, 0, 1, 200], np.random.default_rng(0), sd=0.0)
    from nextbest.training.scorers import rhythm_columns

    shares, events = rhythm_columns(users)
    hours = np.arange(24)

    def best_hour(clustered: bool) -> np.ndarray:
        score = np.stack([rhythm_inputs(shares, events, np.full(4, h), prior, 6.0, None,
                                        *((clusters, weights) if clustered else (None, None)))[:, 0] for h in hours], 1)
        return score.argmax(axis=1)

    one, mixed = best_hour(False), best_hour(True)
    assert abs(one[0] - 20) <= 1 and abs(mixed[0] - 8) <= 1  # one morning event: evening before, morning now
    assert abs(mixed[1] - 20) <= 1 and abs(one[1] - 20) <= 1  # no events: the population's evening either way
    assert abs(mixed[2] - 20) <= 1 and abs(mixed[3] - 12) <= 1 and abs(one[3] - 12) <= 1
    # No events: the posterior is the weights, and the mixture at its weights is the population's profile.
    np.testing.assert_allclose(cluster_prior(shares[[1]], np.zeros(1), clusters, weights)[0], weights @ clusters)
    assert rhythm_clusters(frame.head(20), 4) is None and rhythm_clusters(frame, 1) is None  # too few rich rows, k < 2


def _send_rows(peaks, rng, sends: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Each user's `sends` sends at uniform local hours 8-21, opened with a logit bump around their peak hour (as a
    rhythm makes opens likelier near it): (rows, 2) of (user, local hour) and opened."""
    user = np.repeat(np.arange(len(peaks)), sends)
    hour = rng.integers(8, 22, len(user))
    gap = np.abs(hour - np.asarray(peaks)[user]) % 24
    gap = np.minimum(gap, 24 - gap)
    p = 1 / (1 + np.exp(-(-2.0 + 2.5 * np.exp(-0.5 * (gap / 1.5) ** 2))))
    return np.stack([user, hour], axis=1), (rng.random(len(user)) < p).astype(int)


def test_past_opens_at_their_send_hour_move_a_user_without_events_towards_that_rhythm():
    """Each rhythm cluster's open rate per bin of send hours is learned from the sends of the users whose events
    place them (`rhythm_open_curves`); a user with no events whose opened sends went out in the morning gets the
    morning profile's prior, one whose evening sends were opened or who has no sends keeps the population's evening,
    NaN counts (columns not served) read as no sends, and a rich user stays their own. Without the time profile's
    send columns, or with no opened row, no curves are fitted (the prior reads the events alone, as before)."""
    from nextbest.training.scorers import cluster_posterior, rhythm_columns, rhythm_inputs, send_names
    from nextbest.training.send_time import rhythm_clusters, rhythm_open_curves, rhythm_prior

    rng = np.random.default_rng(5)
    peaks = rng.choice([8, 12, 20], size=600, p=[0.2, 0.2, 0.6])
    users = _rhythm_frame(peaks, rng.integers(40, 120, 600), rng)
    clusters, weights = rhythm_clusters(users, 4, min_events=30, seed=7)
    idx, opened = _send_rows(peaks, rng)
    sends, opens = send_names(8)
    rows = users.iloc[idx[:, 0]].reset_index(drop=True).assign(local_hour=idx[:, 1])
    for name in [*sends, *opens]:
        rows[name] = 0.0  # the users' earlier sends: not read by the curves' fit
    curves = rhythm_open_curves(rows, opened, clusters, weights, min_events=30)
    assert curves.shape == (len(clusters), 8) and ((curves > 0) & (curves < 1)).all()
    for k, peak in enumerate(clusters.argmax(axis=1)):  # each cluster opens most in the bin of its peak
        if 8 <= peak <= 21:
            assert abs(int(curves[k].argmax()) * 3 + 1 - peak) <= 2, (peak, curves[k].round(2))
    assert (curves[:, :2] == curves[:, :2].mean()).all()  # no send before 8:00: the rate of all rows, no evidence

    # Four users without events, one rich user at noon: counts per bin (06 = 6-8 h, 18 = 18-20 h).
    n, o = np.zeros((5, 8)), np.zeros((5, 8))
    n[:2, 2:], n[4, 2:] = 2.0, 2.0
    o[0, 2], o[1, 6], o[4, 2] = 2.0, 2.0, 2.0  # user 0 opened both morning sends, user 1 both evening ones
    n[3] = np.nan  # not served
    o[3] = np.nan
    sparse = _rhythm_frame([8, 8, 8, 8, 12], [0, 0, 0, 0, 200], np.random.default_rng(0), sd=0.0)
    shares, events = rhythm_columns(sparse)
    prior = rhythm_prior(users)

    def best(with_sends: bool) -> np.ndarray:
        extra = (n, o, curves) if with_sends else (None, None, None)
        score = np.stack([rhythm_inputs(shares, events, np.full(5, h), prior, 6.0, None, clusters, weights, *extra)[:, 0]
                          for h in range(24)], 1)
        return score.argmax(axis=1)

    before, after = best(False), best(True)
    assert all(abs(h - 20) <= 1 for h in before[:4]) and abs(before[4] - 12) <= 1
    assert abs(after[0] - 8) <= 1  # the morning opens
    assert abs(after[1] - 20) <= 1 and abs(after[2] - 20) <= 1 and abs(after[3] - 20) <= 1
    assert abs(after[4] - 12) <= 1  # 200 events at noon outweigh two morning opens
    post = cluster_posterior(shares, events, clusters, weights, n, o, curves)
    np.testing.assert_allclose(post[[2, 3]], np.tile(weights, (2, 1)))  # no sends, or not served: the weights
    morning = int(np.argmin(np.abs(clusters.argmax(axis=1) - 8)))
    assert post[0, morning] > 0.5 > weights[morning]

    assert rhythm_open_curves(rows.drop(columns=opens[0]), opened, clusters, weights) is None  # features before them
    assert rhythm_open_curves(rows, np.zeros(len(rows)), clusters, weights) is None  # a log without opens


def test_send_time_models_load_back_with_and_without_rhythm_inputs(tmp_path):
    """A send-time model saved before the rhythm inputs (raw share, no `rhythm` in its meta) still loads and scores
    as it did; one with them loads back with its prior and strength. Both by their own meta."""
    import json

    import torch

    from nextbest.training.encoding import fit_encoder
    from nextbest.training.scorers import RHYTHM_INPUTS, SendTimeNet, SendTimeScorer

    rng = np.random.default_rng(3)
    shares = rng.dirichlet(np.ones(24), size=6)
    frame = pd.DataFrame({"x": rng.normal(size=6), "channel": ["push", "sms"] * 3, "local_hour": [8, 9, 13, 20, 21, 22],
                          "rhythm_events_365d": [0.0, 3, 10, 40, 100, np.nan],
                          **{f"open_share_h{h:02d}": shares[:, h] for h in range(24)}})
    encoder = fit_encoder(frame, ["x"], request=("channel", "local_hour"))
    torch.manual_seed(0)
    legacy = SendTimeScorer(SendTimeNet(encoder.dense_width, 2, 8), encoder, ("push", "sms"), "send_time_v1", 8)
    prior = np.arange(1, 25) / 300
    new = SendTimeScorer(SendTimeNet(encoder.dense_width, 2, 8, RHYTHM_INPUTS), encoder, ("push", "sms"), "send_time_v1",
                         8, prior, 6.0)
    clusters = np.stack([np.roll(prior, 8 * k) for k in range(3)])
    mixed = SendTimeScorer(new.net_, encoder, ("push", "sms"), "send_time_v1", 8, prior, 6.0, clusters,
                           np.array([0.2, 0.3, 0.5]))
    from nextbest.training.scorers import send_names

    sends, opens = send_names(8)
    for j, (s_col, o_col) in enumerate(zip(sends, opens, strict=True)):
        frame[s_col] = [0.0, 2, 1, 3, 0, np.nan][j % 6:] + [0.0, 2, 1, 3, 0, np.nan][:j % 6]
        frame[o_col] = np.minimum(frame[s_col], [0.0, 1, 1, 0, 0, np.nan])
    curves = np.linspace(0.05, 0.4, 3 * 8).reshape(3, 8)
    opened = SendTimeScorer(new.net_, encoder, ("push", "sms"), "send_time_v1", 8, prior, 6.0, clusters,
                            np.array([0.2, 0.3, 0.5]), curves)
    for name, scorer in (("legacy", legacy), ("new", new), ("mixed", mixed), ("opened", opened)):
        scorer.save(tmp_path / name)
        back = SendTimeScorer.load(tmp_path / name)
        np.testing.assert_array_equal(back.predict(frame), scorer.predict(frame))
    assert json.loads((tmp_path / "legacy" / "meta.json").read_text())["rhythm"] is None
    assert SendTimeScorer.load(tmp_path / "legacy").rhythm_prior_ is None
    np.testing.assert_allclose(SendTimeScorer.load(tmp_path / "new").rhythm_prior_, prior)
    # A model saved before the rhythm clusters (the ninth session) has none: its one population profile, as before.
    assert SendTimeScorer.load(tmp_path / "new").rhythm_clusters_ is None
    np.testing.assert_allclose(SendTimeScorer.load(tmp_path / "mixed").rhythm_clusters_, clusters)
    np.testing.assert_allclose(SendTimeScorer.load(tmp_path / "mixed").rhythm_weights_, [0.2, 0.3, 0.5])
    assert not np.allclose(mixed.inputs(frame)["share"], new.inputs(frame)["share"])  # the clusters are read
    # A model saved before the open curves (the tenth session) has none: the prior reads the events alone.
    assert SendTimeScorer.load(tmp_path / "mixed").rhythm_open_curves_ is None
    np.testing.assert_allclose(SendTimeScorer.load(tmp_path / "opened").rhythm_open_curves_, curves)
    assert not np.allclose(opened.inputs(frame)["share"], mixed.inputs(frame)["share"])  # the past sends are read
    # Without the send columns (an older feature table) the model with curves scores as the one without.
    np.testing.assert_array_equal(opened.predict(frame.drop(columns=[*sends, *opens])), mixed.predict(frame))
    # The legacy net reads the raw share at the hour (1/24 where unknown), the new one the two rhythm columns.
    assert legacy.inputs(frame)["share"].shape == (6,) and new.inputs(frame)["share"].shape == (6, RHYTHM_INPUTS)
    assert legacy.inputs(frame)["share"][2] == pytest.approx(shares[2, 13])


def test_offer_net_overfits_one_weighted_batch():
    import torch

    from nextbest.training.nets import train_net
    from nextbest.training.offer_net import OfferNet, ipw_weights

    torch.manual_seed(0)
    x, y = _one_batch(seed=1)
    net = OfferNet(width=12, sizes={"offer_id": 3, "channel": 2, "offer_category": 3, "offer_kind": 2}, hidden=64)
    inputs = {"x": x, "offer_id": np.arange(64) % 4, "channel": np.arange(64) % 3, "offer_category": np.arange(64) % 4,
              "offer_kind": np.arange(64) % 3, "hour": np.arange(64) % 24, "value": np.ones(64, "float32")}
    weight = ipw_weights(pd.Series(np.where(np.arange(64) % 2, 0.5, 0.1)), 0.05)
    assert weight.mean() == pytest.approx(1.0) and weight[0] > weight[1]
    losses = train_net(net, inputs, y, weight, epochs=200, batch=64, lr=1e-2, weight_decay=0.0)
    assert losses[0] > 0.5 and losses[-1] < 0.05


def _matched_frame(n: int = 6) -> pd.DataFrame:
    """Rows with per-category, per-channel and per-hour feature columns plus the request columns."""
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"aff_books": rng.random(n), "aff_toys": rng.random(n),
                          "open_rate_email": rng.random(n), "open_rate_push": rng.random(n),
                          "sent_7d_email": rng.integers(0, 5, n).astype(float), "sent_7d_push": rng.integers(0, 5, n).astype(float),
                          "peak_open_hour": [20.0, 8.0, 23.0, np.nan, 0.0, 12.0],
                          **{f"open_share_h{h:02d}": rng.random(n) for h in range(24)}})
    return frame.assign(offer_category=["books", "toys", "any", None, "books", "toys"],
                        channel=["email", "push", "email", None, "sms", "push"],
                        local_hour=[21, 8, 1, 9, np.nan, 23])


def test_matched_features_pick_the_rows_own_category_channel_and_hour():
    from nextbest.training.derived import matched_columns, with_matched

    frame = _matched_frame()
    names = matched_columns(frame.columns)
    assert set(names) == {"offer_affinity", "offer_affinity_rel", "channel_open_rate", "channel_sent_7d", "hour_share", "hour_gap"}
    out = with_matched(frame, names)
    assert out["offer_affinity"].iloc[0] == frame["aff_books"].iloc[0] and out["offer_affinity"].iloc[1] == frame["aff_toys"].iloc[1]
    assert out["offer_affinity"].iloc[2] == 0.0 and np.isnan(out["offer_affinity"].iloc[3])  # "any" -> 0, missing -> NaN
    assert out["offer_affinity_rel"].iloc[0] == frame["aff_books"].iloc[0] / frame[["aff_books", "aff_toys"]].iloc[0].max()
    assert out["channel_open_rate"].iloc[1] == frame["open_rate_push"].iloc[1]
    assert np.isnan(out["channel_open_rate"].iloc[4])  # a channel without feature columns
    assert out["hour_share"].iloc[0] == frame["open_share_h21"].iloc[0] and np.isnan(out["hour_share"].iloc[4])
    assert out["hour_gap"].tolist()[:3] == [1.0, 0.0, 2.0]  # circular: 23 h vs 1 h is 2 h apart
    assert np.isnan(out["hour_gap"].iloc[3])
    # A model without request columns gets no matched features.
    assert matched_columns(["aff_books", "open_rate_email", "open_share_h01"]) == ()


def test_matched_features_are_identical_in_one_batch_and_row_by_row():
    from nextbest.training.encoding import FrameEncoder, fit_encoder

    frame = _matched_frame()
    encoder = FrameEncoder.from_json(fit_encoder(frame, list(frame.columns)).to_json())
    assert "offer_affinity" in encoder.columns and "hour_gap" in encoder.matched
    batch = encoder.codes(frame)
    one_by_one = np.vstack([encoder.codes(frame.iloc[[i]]) for i in range(len(frame))])
    np.testing.assert_array_equal(batch, one_by_one)
    # Shuffling the rows shuffles the matched values with them: nothing leaks across rows.
    order = np.array([5, 3, 1, 0, 2, 4])
    np.testing.assert_array_equal(encoder.codes(frame.iloc[order].reset_index(drop=True)), batch[order])
    # Serving passes only the feature and request columns: the matched ones are computed, never read.
    stale = frame.assign(offer_affinity=99.0)
    np.testing.assert_array_equal(encoder.codes(stale), batch)


def test_funnel_click_arm_reads_the_users_taste_only():
    """`UpliftConfig.click_inputs`: with "taste" the click arm reads, of the user's features, only the category
    affinities and click rates (still ranking a user's offers by the matched affinity); "all" (the default) reads
    every feature; a feature service without category affinities keeps every feature; an unknown value is refused by
    name."""
    from nextbest.training.datasets import TrainingSet
    from nextbest.training.tabular import FitConfig
    from nextbest.training.uplift import UpliftConfig, click_columns, fit

    rng = np.random.default_rng(5)
    n = 8_000
    books = rng.beta(2, 2, n)  # the share of interest in books; the rest in toys
    offer = rng.integers(0, 2, n)  # 0 = books, 1 = toys
    treated = rng.random(n) < 0.8
    opened = treated & (rng.random(n) < 0.5)
    clicked = opened & (rng.random(n) < 0.1 + 0.6 * np.where(offer == 0, books, 1 - books))
    converted = np.where(clicked, rng.random(n) < 0.4, rng.random(n) < 0.03)
    cats = np.array(["books", "toys"], dtype=object)
    frame = pd.DataFrame({"aff_books": books, "aff_toys": 1 - books, "click_rate_email": rng.random(n),
                          "tenure_days": rng.random(n) * 900, "offer_id": cats[offer], "offer_category": cats[offer],
                          "offer_kind": "product", "offer_value": 30.0, "channel": "email", "local_hour": 10,
                          "treated": treated.astype(int), "opened": opened.astype(int), "clicked": clicked.astype(int),
                          "label": converted.astype(int)})
    features = ("aff_books", "aff_toys", "click_rate_email", "tenure_days")
    train = TrainingSet(frame, "svc", features, ("offer_id", "offer_category", "offer_kind", "offer_value", "channel",
                                                 "local_hour"), treatment="treated")
    quick = FitConfig(trials=1, max_rounds=60)
    model = fit(train, UpliftConfig(fit=quick, learner="funnel", click_inputs="taste"))
    read = set(model.click_.encoder_.columns)
    assert {"aff_books", "aff_toys", "click_rate_email", "offer_affinity"} <= read and "tenure_days" not in read
    assert "tenure_days" in model.engage_.encoder_.columns  # the other arms keep every feature
    probe = frame.iloc[:2].assign(aff_books=[0.9, 0.9], aff_toys=[0.1, 0.1], offer_id=["books", "toys"],
                                  offer_category=["books", "toys"])
    p = model.click_.predict(probe)
    assert p[0] > p[1] + 0.2, p  # 0.64 against 0.16 in this world
    every = fit(train, UpliftConfig(fit=quick, learner="funnel"))
    assert "tenure_days" in every.click_.encoder_.columns
    assert click_columns(["taste", "noise", "click_rate_sms"], "taste") == ["taste", "noise", "click_rate_sms"]
    with pytest.raises(ValueError, match="click_inputs must be 'taste' or 'all'"):
        click_columns(list(features), "some")


def test_funnel_uplift_learns_offer_interest_from_clicks(tmp_path):
    """With tracked clicks the funnel has a click stage: which offer a user clicks is learned from clicks, and
    P(convert | opened) = P(click) x P(convert | clicked) + (1 - P(click)) x P(convert | control)."""
    from nextbest.training.datasets import TrainingSet
    from nextbest.training.tabular import FitConfig
    from nextbest.training.uplift import FunnelUpliftScorer, UpliftConfig, fit

    rng = np.random.default_rng(3)
    n = 12_000
    taste = rng.integers(0, 2, n)  # 0 = books, 1 = toys
    offer = rng.integers(0, 2, n)
    treated = rng.random(n) < 0.8
    opened = treated & (rng.random(n) < 0.4)
    clicked = opened & (rng.random(n) < np.where(offer == taste, 0.6, 0.1))
    converted = np.where(clicked, rng.random(n) < 0.5, rng.random(n) < 0.03)
    cats = np.array(["books", "toys"], dtype=object)
    frame = pd.DataFrame({"taste": taste.astype(float), "noise": rng.random(n), "offer_id": cats[offer],
                          "offer_category": cats[offer], "offer_kind": "product", "offer_value": 30.0,
                          "channel": "email", "local_hour": 10, "treated": treated.astype(int),
                          "opened": opened.astype(int), "clicked": clicked.astype(int), "label": converted.astype(int)})
    train = TrainingSet(frame, "svc", ("taste", "noise"), ("offer_id", "offer_category", "offer_kind", "offer_value",
                                                          "channel", "local_hour"), treatment="treated")
    # One fit per arm (`arm_fits` {}): the arms' own shapes (averaged arms: test_funnel_arms_average_their_seeded_fits).
    model = fit(train, UpliftConfig(fit=FitConfig(trials=1, max_rounds=60), learner="funnel", arm_fits={}))
    assert model.click_ is not None
    probe = frame.iloc[:4].assign(taste=[0.0, 0.0, 1.0, 1.0], offer_id=["books", "toys"] * 2, offer_category=["books", "toys"] * 2)
    after_open = model.arm("convert", probe)
    # each user's own category converts more after an open: 0.6 x 0.5 against 0.1 x 0.5, plus the organic rate
    assert after_open[0] > after_open[1] + 0.1 and after_open[3] > after_open[2] + 0.1
    click, after_click, control = (model.click_.predict(probe), model.convert_.predict(probe), model.arm("control", probe))
    np.testing.assert_allclose(after_open, click * after_click + (1 - click) * control)
    # The after-click arm is fitted on every opened row with whether it was clicked as an input, and predicts a
    # click: P(convert | clicked) is 0.5 whatever the taste, far from the unclicked rows' 0.03 (the trees that do not
    # split on the click pull the sparse cells, 190 clicks each, toward the unclicked rows: 0.37-0.49 here).
    from nextbest.training.scorers import StagedBooster

    assert isinstance(model.convert_, StagedBooster)
    assert ((after_click > 0.3) & (after_click < 0.7)).all(), after_click
    # Its importance names every input once: the stage input under its own name, beside the columns' own gains.
    gains = model.convert_.importance()
    assert set(gains) == {*model.convert_.encoder_.columns, StagedBooster.STAGE_INPUT}
    assert gains[StagedBooster.STAGE_INPUT] > 0
    model.save(tmp_path / "m")
    assert (tmp_path / "m" / "click_model.txt").exists()
    loaded = FunnelUpliftScorer.load(tmp_path / "m")
    assert isinstance(loaded.convert_, StagedBooster) and not isinstance(loaded.click_, StagedBooster)
    np.testing.assert_array_equal(loaded.predict(probe), model.predict(probe))
    # The earlier recipe, the after-click arm on the clicked rows alone, is kept behind `pooled_convert=False`.
    alone = fit(train, UpliftConfig(fit=FitConfig(trials=1, max_rounds=60), learner="funnel", pooled_convert=False,
                                    arm_fits={}))
    assert type(alone.convert_) is not StagedBooster and alone.click_ is not None
    # without click tracking: one stage from open to conversion
    plain = fit(TrainingSet(frame.drop(columns="clicked"), "svc", train.features, train.request, treatment="treated"),
                UpliftConfig(fit=FitConfig(trials=1, max_rounds=60), learner="funnel", arm_fits={}))
    assert plain.click_ is None


def _funnel_training_set():
    """A small contact log with opens, clicks and a control group: heavy users buy on their own, clicks convert."""
    from nextbest.training.datasets import TrainingSet

    rng = np.random.default_rng(11)
    n = 8_000
    heavy = rng.random(n)  # how much a user buys on their own
    treated = rng.random(n) < 0.6
    opened = treated & (rng.random(n) < 0.5)
    clicked = opened & (rng.random(n) < 0.3)
    converted = np.where(clicked, rng.random(n) < 0.4, rng.random(n) < 0.01 + 0.08 * heavy)
    frame = pd.DataFrame({"heavy": heavy, "noise": rng.random(n), "offer_id": "books", "offer_category": "books",
                          "offer_kind": "product", "offer_value": 30.0, "channel": "email", "local_hour": 10,
                          "treated": treated.astype(int), "opened": opened.astype(int), "clicked": clicked.astype(int),
                          "label": converted.astype(int)})
    return TrainingSet(frame, "svc", ("heavy", "noise"), ("offer_id", "offer_category", "offer_kind", "offer_value",
                                                         "channel", "local_hour"), treatment="treated")


@pytest.fixture(scope="module")
def averaged_funnels():
    """A funnel with the control arm of 3 fits and the pooled after-click arm of 2 (2-trial tuning, <= 60 rounds)."""
    from nextbest.training.tabular import FitConfig
    from nextbest.training.uplift import UpliftConfig, fit

    train = _funnel_training_set()
    quick = FitConfig(trials=2, max_rounds=60)
    averaged = fit(train, UpliftConfig(fit=quick, learner="funnel", arm_fits={"control": 3, "convert": 2}))
    return train, quick, averaged


def test_funnel_arms_average_their_seeded_fits(averaged_funnels, tmp_path):
    """`UpliftConfig.arm_fits`: a funnel arm is the mean of k fits' probabilities, each with its own seed (the first
    the one-fit arm itself), saved as k LightGBM text models and loaded back as one averaged arm with the same
    predictions; the pooled after-click arm stays staged (read as clicked) when averaged; an arm not named is one
    fit; an unknown arm or fewer than 1 fit is refused by name."""
    from nextbest.training.scorers import AveragedBooster, BoosterScorer, StagedBooster, later_stage
    from nextbest.training.uplift import OFFER_COLUMNS, FunnelUpliftScorer, UpliftConfig, fit_arm, funnel_rows

    train, quick, model = averaged_funnels
    frame = train.frame
    with pytest.raises(ValueError, match="the control arm's number of fits must be a whole number of at least 1"):
        UpliftConfig(fit=quick, learner="funnel", arm_fits={"control": 0})
    with pytest.raises(ValueError, match="unknown funnel arm.*'ctrl'.*engage, click, convert, control"):
        UpliftConfig(arm_fits={"ctrl": 2})
    assert [UpliftConfig().fits(a) for a in ("engage", "click", "convert", "control")] == [1, 1, 1, 3]  # the default
    control = frame["treated"].to_numpy() == 0
    single = fit_arm("control", frame[control], list(train.features), frame["label"].to_numpy()[control], "svc",
                     UpliftConfig(fit=quick, arm_fits={"control": 1}))
    engaged, clicked = funnel_rows(train)["click"]  # the after-click arm's rows, one fit: a StagedBooster
    one = fit_arm("convert", frame[engaged], [*train.features, *OFFER_COLUMNS], frame["label"].to_numpy()[engaged],
                  "svc", UpliftConfig(fit=quick, arm_fits={}), stage=clicked)
    assert type(single) is BoosterScorer and type(one) is StagedBooster
    assert type(model.engage_) is BoosterScorer and type(model.click_) is BoosterScorer  # not named: one fit
    arm = model.control_
    assert isinstance(arm, AveragedBooster) and len(arm.boosters_) == 3 and arm.params_["fits"] == 3
    codes = arm.encoder_.codes(frame)
    members = np.array([b.predict(codes) for b in arm.boosters_])
    assert np.abs(members[1] - members[0]).max() > 1e-3  # the fits differ: their seeds are their own
    np.testing.assert_allclose(arm.predict(frame), members.mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(members[0], single.predict(frame), rtol=0, atol=1e-12)  # the first: the one-fit arm
    np.testing.assert_allclose(model.arm("control", frame), members.mean(axis=0), rtol=0, atol=1e-12)
    # The pooled after-click arm averaged: each fit read at the later stage (clicked), as the one-fit StagedBooster.
    after = model.convert_
    assert isinstance(after, AveragedBooster) and after.staged and len(after.boosters_) == 2
    assert not AveragedBooster([single.booster_], single.encoder_, "svc").staged
    staged = np.array([b.predict(later_stage(after.encoder_.codes(frame))) for b in after.boosters_])
    np.testing.assert_allclose(after.predict(frame), staged.mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(staged[0], one.predict(frame), rtol=0, atol=1e-12)
    assert np.abs(staged[1] - staged[0]).max() > 1e-3
    gains = after.importance()
    assert set(gains) == {*after.encoder_.columns, StagedBooster.STAGE_INPUT} and gains[StagedBooster.STAGE_INPUT] > 0
    # Saved and loaded back: every fit of every averaged arm, the same predictions.
    model.save(tmp_path / "m")
    assert (tmp_path / "m" / "control_model.2.txt").exists() and not (tmp_path / "m" / "control_model.3.txt").exists()
    assert (tmp_path / "m" / "convert_model.1.txt").exists() and not (tmp_path / "m" / "convert_model.2.txt").exists()
    assert not (tmp_path / "m" / "engage_model.1.txt").exists()
    loaded = FunnelUpliftScorer.load(tmp_path / "m")
    assert isinstance(loaded.control_, AveragedBooster) and len(loaded.control_.boosters_) == 3
    assert isinstance(loaded.convert_, AveragedBooster) and loaded.convert_.staged and len(loaded.convert_.boosters_) == 2
    assert type(loaded.engage_) is BoosterScorer  # only the averaged arms have their other fits
    np.testing.assert_array_equal(loaded.predict(frame), model.predict(frame))
    for name in ("control", "convert"):
        np.testing.assert_array_equal(loaded.arm(name, frame), model.arm(name, frame))
    arm.save(tmp_path / "arm")  # on its own too: every fit, not the first alone
    alone = AveragedBooster.load(tmp_path / "arm")
    assert len(alone.boosters_) == 3
    np.testing.assert_array_equal(alone.predict(frame), arm.predict(frame))


def test_a_model_saved_in_a_newer_format_is_refused_and_older_ones_load(averaged_funnels, tmp_path):
    """`scorers.MODEL_FORMAT`: a registered model's meta.json names its file format; a format newer than the code
    reads is refused with the model's name and what to do (never read in part: an averaged arm's first fit alone);
    a model saved before the field (format 1) and today's load."""
    import hashlib
    import json

    from nextbest.training.registry import ChecksumError, ModelFormatError, load_scorer, save_scorer
    from nextbest.training.scorers import MODEL_FORMAT

    train, _, model = averaged_funnels
    folder = tmp_path / "uplift"
    save_scorer(model, folder)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["format"] == MODEL_FORMAT == 2 and meta["kind"] == "uplift_funnel"
    np.testing.assert_array_equal(load_scorer(folder).predict(train.frame), model.predict(train.frame))

    def resave(meta: dict) -> None:  # the meta.json changed and its checksum with it: only the format differs
        (folder / "meta.json").write_text(json.dumps(meta))
        sums = json.loads((folder / "checksums.json").read_text())
        sums["meta.json"] = hashlib.sha256((folder / "meta.json").read_bytes()).hexdigest()
        (folder / "checksums.json").write_text(json.dumps(sums))

    resave({**meta, "format": MODEL_FORMAT + 1})
    with pytest.raises(ModelFormatError, match=f"nextbest-uplift version 9: saved in model file format "
                                               f"{MODEL_FORMAT + 1}, newer than this code reads \\(up to "
                                               f"{MODEL_FORMAT}\\).*Upgrade nextbest.*nextbest rollback") as refused:
        load_scorer(folder, label="nextbest-uplift version 9")
    assert isinstance(refused.value, ChecksumError)  # refused wherever an unverifiable model is (CLI exit 2, serving)
    resave({**meta, "format": "2"})
    with pytest.raises(ModelFormatError, match="not a format number"):
        load_scorer(folder)
    resave({k: v for k, v in meta.items() if k != "format"})  # saved before the field: format 1, loads as it is
    np.testing.assert_array_equal(load_scorer(folder).predict(train.frame), model.predict(train.frame))
