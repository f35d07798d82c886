"""The fast batch path (factorised send-time model, bulk online read, compiled scorers) against a straightforward
reference on real trained champions: Feast's own online read and training's pandas path with the full dense
send-time input. Decisions must be the same offer, channel and send time, with the same EV within 1e-6."""

from __future__ import annotations

import time

import numpy as np
import pytest

from nextbest.features.store import materialized_tables, read_table
from nextbest.serving import engine
from nextbest.serving.runtime import Runtime
from nextbest.serving.schemas import CampaignContext
from nextbest.training.compiled import Rows
from tests.conftest import TRAINED_NOW

NOW = TRAINED_NOW
pytestmark = pytest.mark.usefixtures("clock_at_trained_now")  # the server clock stands at NOW


@pytest.fixture(scope="module")
def ids(trained) -> list[str]:
    return read_table(trained, "profile")["user_id"].astype(str).head(400).tolist()  # the reference path is slow


def _decisions(rt: Runtime, ids: list[str], context: CampaignContext, reference: bool, batch: bool = False) -> list[dict]:
    """`Runtime.score` on the fast path (with `batch`, on the features of the dry run's batch read, the feature files
    materialised online), or on the reference path: Feast's own online read, training's pandas frames (the send-time
    model on its full dense input) and every user x offer x channel (x hour) scored."""
    fast_models, every_pair, every_channel = rt.models.current, engine.conversion_scores, engine.send_time_scores
    with pytest.MonkeyPatch.context() as mp:
        if reference:
            rt.models.current = fast_models.pandas()
            mp.setattr(rt.features, "reader", lambda: None)  # OnlineFeatures.fetch falls back to get_online_features
            mp.setattr(engine, "conversion_scores", lambda models, users, config, hours, candidates=None, p_open=None:
                       every_pair(models, users, config, hours, p_open=p_open))
            mp.setattr(engine, "send_time_scores", lambda models, users, config, candidates=None:
                       every_channel(models, users, config))
        rt.rng = np.random.default_rng(0)  # the same exploration draws on both paths
        try:
            return rt.score(ids, context, NOW, n_actions=2, features=rt.features.fetch_batch(ids) if batch else None)
        finally:
            rt.models.current = fast_models


@pytest.mark.parametrize("campaign", ["every offer", "a campaign's offers"])
def test_fast_batch_decisions_equal_the_reference_computation(trained_runtime, ids, campaign):
    offers = trained_runtime.config.current(time.monotonic()).offer_ids()
    context = CampaignContext(campaign_id="fast-vs-reference", offers=None if campaign == "every offer" else offers[1:4])
    fast, reference = _decisions(trained_runtime, ids, context, False), _decisions(trained_runtime, ids, context, True)
    batch = _decisions(trained_runtime, ids, context, False, batch=True)
    assert len(fast) == len(reference) == len(batch) == len(ids)
    assert trained_runtime.models.current.compiled["send_time"].factored  # the factorised model is what ran
    assert len(materialized_tables(trained_runtime.settings)) >= 5  # the batch read took the files (not all online)
    sent = 0
    for f, r in [*zip(fast, reference, strict=True), *zip(batch, reference, strict=True)]:
        assert f["user_id"] == r["user_id"] and not f["degraded"] and not r["degraded"]
        assert [(a["offer_id"], a["channel"], a["send_at"]) for a in f["actions"]] == \
            [(a["offer_id"], a["channel"], a["send_at"]) for a in r["actions"]], f["user_id"]
        for a, b in zip(f["actions"], r["actions"], strict=True):
            assert abs(a["expected_value"] - b["expected_value"]) <= 1e-6
            assert abs(a["p_convert"] - b["p_convert"]) <= 1e-6
            assert a["propensity"] == b["propensity"]
        assert [x["reason"] for x in f["filtered"]] == [x["reason"] for x in r["filtered"]]
        sent += len(f["actions"])
    assert sent > len(ids) // 10  # real choices were compared, not a run of "no contact"


def test_factorised_send_time_scores_equal_the_full_dense_input(trained_runtime, ids):
    """Every user x channel x hour, including the rows where hostile values zero or clip the per-row columns."""
    models, config = trained_runtime.models.current, trained_runtime.config.current(time.monotonic())
    compiled = models.compiled["send_time"]
    assert compiled.factored and compiled.row_names  # the per-row columns exist (matched to channel and hour)
    feats, _, _ = trained_runtime.features.fetch(ids[:200])
    feats = {k: v.copy() for k, v in feats.items()}
    # Hostile values in the columns the per-row features are picked from: missing (-> 0) and huge (clipped).
    for k in [k for k in feats if k.startswith(("open_rate_", "click_rate_", "open_share_h", "peak_open_hour"))]:
        feats[k][::5] = np.nan
        feats[k][1::7] = 1e6
    users = engine.user_columns(feats)
    grid = engine.request_grid(config)
    n_u, n_c = users.n, grid.n_channels
    x = Rows(users, np.repeat(np.arange(n_u), n_c * 24), np.tile(np.repeat(np.arange(n_c), 24), n_u),
             np.tile(np.arange(24, dtype="float64"), n_u * n_c), grid)
    fast, dense = compiled.predict(x), compiled._predict_dense(x)
    np.testing.assert_allclose(fast, dense, rtol=0, atol=1e-6)
    assert dense.std() > 0.01
    pandas = engine.send_time_scores(models.pandas(), feats, config)
    np.testing.assert_allclose(engine.send_time_scores(models, feats, config), pandas, rtol=0, atol=1e-6)


def test_the_copy_draw_takes_numpys_choice_from_the_same_stream():
    """The planner's copy draw (`_choice`) picks what `Generator.choice(k, p=p)` picks and leaves the stream where it
    does, for uneven, even and zero shares: the decisions' random stream is unchanged by the faster draw."""
    from nextbest.serving.runtime import _choice, _variant_draw

    for seed in range(60):
        g = np.random.default_rng(seed)
        raw = g.random(1 + seed % 6) if seed % 3 else np.ones(1 + seed % 6)
        raw[1::4] = 0.0
        shares = {f"v{i}": float(x / raw.sum()) for i, x in enumerate(raw)}
        names, probabilities, cdf = _variant_draw(shares)
        p = np.array(list(shares.values()))
        numpy_rng, ours = np.random.default_rng(seed + 100), np.random.default_rng(seed + 100)
        for _ in range(50):
            k = _choice(ours, cdf)
            assert k == int(numpy_rng.choice(len(names), p=p / p.sum())) and probabilities[k] == float(p[k] / p.sum())
        assert numpy_rng.random() == ours.random()
