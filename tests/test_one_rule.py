"""One definition per rule: serving, the policy gate's replay and the simulator agree on the same inputs."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd

from nextbest.features.contract import offer_valid
from nextbest.pipelines.evaluate import ModelPolicy
from nextbest.serving import engine
from nextbest.serving.config import Caps, Exploration
from nextbest.serving.engine import choose
from nextbest.simulation.replay import ReplayConfig, Rules, Situation
from nextbest.training.jobs import DEFAULT_MODELS


def test_training_by_default_trains_what_decisions_read_and_batch_scoring_writes_back():
    assert set(engine.REQUEST_COLUMNS) <= set(DEFAULT_MODELS)
    assert set(DEFAULT_MODELS) - set(engine.REQUEST_COLUMNS) == {"purchase"}  # no model that nothing reads


def test_a_replay_without_an_operator_config_judges_under_the_service_default_caps():
    assert Rules() == Rules.of(Caps()) == ReplayConfig().rules
    stricter = Caps(per_user_week=2, per_channel_week=1, per_offer=2, offer_window_days=14)
    assert Rules.of(stricter) == Rules(per_user_per_week=2, per_user_channel_per_week=1, per_offer=2, offer_window_days=14)


def test_an_offer_window_is_half_open_everywhere():
    start, end = datetime(2026, 7, 1, tzinfo=UTC), datetime(2026, 7, 8, tzinfo=UTC)
    assert offer_valid(start, start, end) and not offer_valid(end, start, end)  # the last instant is not included
    assert offer_valid(end, None, None) and offer_valid(end, pd.NaT, pd.NaT)
    assert not offer_valid(pd.Timestamp(start) - pd.Timedelta(seconds=1), pd.Timestamp(start), pd.NaT)


def _inputs(seed: int = 0, n: int = 400, n_o: int = 6, n_c: int = 4):
    rng = np.random.default_rng(seed)
    ev = rng.normal(0.0, 1.0, (n, n_o, n_c)).round(1)  # rounded: ties happen, priority must break them the same way
    eligible, allowed = rng.random((n, n_o)) < 0.7, rng.random((n, n_c)) < 0.6
    priority = rng.integers(0, 3, n_o).astype(float)
    return ev, eligible, allowed, priority


def _situation(eligible, allowed) -> Situation:
    n, n_c = allowed.shape
    return Situation(0, pd.Timestamp("2026-07-01", tz="UTC"), allowed, eligible, np.zeros(n, dtype=np.int64),
                     np.ones((n_c, 24), dtype=bool), np.full(n_c, np.inf), {})


def test_serving_and_the_policy_gate_make_the_same_choice_for_the_same_inputs():
    ev, eligible, allowed, priority = _inputs()
    feasible = eligible[:, :, None] & allowed[:, None, :]
    hours = np.zeros(allowed.shape, dtype=np.int64)
    gate = ModelPolicy("nba", ev, hours, 0.0, priority, min_ev=0.25).choose(_situation(eligible, allowed), np.random.default_rng(1))
    none = Exploration(method="none")
    for u in range(len(ev)):  # serving's per-user rule (serving/engine.py choose), user by user
        pick = choose(ev[u], feasible[u], priority, none, np.random.default_rng(2), min_ev=0.25)
        assert (gate.offer[u], gate.channel[u]) == (pick.action if pick.action else (-1, gate.channel[u])), u
        assert gate.propensity[u] == pick.propensity == 1.0
    assert (gate.offer >= 0).mean() > 0.3 and (gate.offer < 0).any()  # both kinds of answer were compared


def test_exploring_the_gate_logs_the_propensities_serving_logs():
    ev, eligible, allowed, priority = _inputs(seed=3, n=20_000)
    feasible = eligible[:, :, None] & allowed[:, None, :]
    rate = 0.2
    gate = ModelPolicy("nba", ev, np.zeros(allowed.shape, dtype=np.int64), rate, priority).choose(
        _situation(eligible, allowed), np.random.default_rng(4))
    greedy = engine.greedy_many(ev, feasible, priority)
    k = greedy.n_arms + 1
    chose_greedy = np.where(gate.offer >= 0, gate.offer * allowed.shape[1] + gate.channel, -1) == greedy.best
    has = greedy.n_arms > 0
    expected = np.where(chose_greedy, 1 - rate + rate / k, rate / k)
    assert np.allclose(gate.propensity[has], expected[has])
    # serving's draw for one user gives the same propensity for the same pick
    u = int(np.flatnonzero(has)[0])
    pick = engine.choose_one(greedy, u, Exploration(method="epsilon", rate=rate), np.random.default_rng(5))
    assert pick.propensity == (1 - rate + rate / k[u] if not pick.explored else rate / k[u])
    # and the share of greedy picks is what the propensity promises: 1 - rate + rate / k on average
    assert abs(chose_greedy[has].mean() - (1 - rate + rate / k[has]).mean()) < 0.01


def test_quiet_hours_stages_and_event_types_have_one_reading_everywhere():
    from nextbest.features import build, contract
    from nextbest.serving import policy
    from nextbest.serving.config import default_config
    from nextbest.simulation import campaigns, catalog
    from nextbest.simulation.replay import hour_ok_matrix

    config = default_config()  # quiet hours "22-8", "21-9", "23-7" and none
    table = pd.DataFrame({"quiet_hours": [c.quiet_hours for c in config.channels]})
    grid = policy.time_grid(datetime(2026, 7, 1, 0, 0, tzinfo=UTC), "UTC")
    served = policy.evaluate(config, {f"consent_{c}": True for c in config.channel_names()},
                             policy.counts_from({}, {}, config, grid, {}), grid, grid.times[0])
    # the hours serving leaves open on a day with no caps binding are the hours the replay calls allowed
    open_by_hour = np.zeros((len(config.channels), 24), dtype=bool)
    open_by_hour[:, grid.local_hour] = served.slot_ok
    assert (open_by_hour == hour_ok_matrix(table)).all()
    assert not hour_ok_matrix(table)[[c.channel for c in config.channels].index("sms"), [21, 23, 0, 8]].any()
    assert build.STAGES is contract.STAGES is campaigns.STAGES and catalog.EVENT_TYPES is contract.EVENT_TYPES
    assert set(contract.STAGE_OF_TYPE) <= set(contract.EVENT_TYPES)
