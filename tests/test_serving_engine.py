"""The decision engine and the contact policy as pure functions: planted numbers in, known answers out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from nextbest.features.contract import NO_SEND
from nextbest.serving import engine, policy
from nextbest.serving.config import (
    Caps,
    Channel,
    Exploration,
    Offer,
    OperatorConfig,
    Trigger,
    parse_quiet_hours,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)  # 14:00 in Berlin (CEST), 08:00 in New York


def config(**overrides) -> OperatorConfig:
    base = dict(
        offers=[Offer(offer_id="a", category="books", value=20.0), Offer(offer_id="b", category="toys", value=20.0),
                Offer(offer_id="keep", kind="retention", category="any", value=20.0, eligibility="lifecycle_stage in [customer]")],
        channels=[Channel(channel="email", cost=0.01, quiet_hours="22-8"), Channel(channel="sms", cost=0.05, quiet_hours="21-9"),
                  Channel(channel="inapp", cost=0.0, requires_consent=False)],
        exploration=Exploration(method="none"),
    )
    return OperatorConfig(**(base | overrides))


FEATURES = {"consent_email": True, "consent_sms": True, "lifecycle_stage": "customer", "timezone": "Europe/Berlin"}


def counts(cfg: OperatorConfig, **arrays) -> policy.Counts:
    c = policy.Counts(channel_day=np.zeros((len(cfg.channels), policy.WEEK + 1), dtype=np.int64),
                      offer_window=np.zeros(len(cfg.offers), dtype=np.int64),
                      capacity_used=np.zeros((len(cfg.channels), 2), dtype=np.int64))
    for k, v in arrays.items():
        setattr(c, k, v)
    return c


def reasons(result: policy.PolicyResult) -> dict[tuple, str]:
    return {(r.offer_id, r.channel): r.reason for r in result.refusals}


# --- engine -------------------------------------------------------------------------------------------

def test_uplift_not_propensity_orders_offers():
    cfg = config()
    # Offer a is a "sure thing" (high P(convert), no uplift); offer b converts less but only when contacted.
    p_convert = np.array([[0.9, 0.9, 0.9], [0.3, 0.3, 0.3], [0.1, 0.1, 0.1]])
    uplift = np.array([[0.0, 0.0, 0.0], [0.2, 0.2, 0.2], [0.01, 0.01, 0.01]])
    ev = engine.expected_values(p_convert, uplift, cfg, p_churn=0.0)
    feasible = np.ones_like(ev, dtype=bool)
    pick = engine.choose(ev, feasible, np.zeros(3), cfg.exploration, np.random.default_rng(0))
    assert pick.action == (1, 2)  # offer b through the free channel
    no_uplift = engine.expected_values(p_convert, np.full_like(uplift, np.nan), cfg, p_churn=0.0)
    assert engine.choose(no_uplift, feasible, np.zeros(3), cfg.exploration, np.random.default_rng(0)).action[0] == 0


def test_no_action_when_nothing_has_positive_value():
    cfg = config()
    uplift = np.full((3, 3), -0.01)  # contacting hurts
    ev = engine.expected_values(np.full((3, 3), 0.2), uplift, cfg, p_churn=0.0)
    pick = engine.choose(ev, np.ones_like(ev, dtype=bool), np.zeros(3), cfg.exploration, np.random.default_rng(0))
    assert pick.action is None and pick.propensity == 1.0
    # Nothing feasible is also "no action".
    none = engine.choose(np.ones((3, 3)), np.zeros((3, 3), dtype=bool), np.zeros(3), cfg.exploration, np.random.default_rng(0))
    assert none.action is None


def test_churn_risk_boosts_retention_offers_only():
    cfg = config(churn_boost=2.0)
    p = np.full((3, 3), 0.1)
    calm = engine.expected_values(p, np.full_like(p, np.nan), cfg, p_churn=0.0)
    risky = engine.expected_values(p, np.full_like(p, np.nan), cfg, p_churn=0.5)
    np.testing.assert_allclose(risky[:2], calm[:2])
    cost = np.array([0.01, 0.05, 0.0])
    np.testing.assert_allclose(risky[2], (calm[2] + cost) * (1 + 2.0 * 0.5) - cost)  # value x 2, cost unchanged


def test_epsilon_exploration_records_the_probability_it_used():
    ev = np.array([[1.0, 0.5, 0.2], [0.1, 0.1, 0.1], [0.0, 0.0, 0.0]])
    feasible = np.ones_like(ev, dtype=bool)
    exploration = Exploration(method="epsilon", rate=0.3)
    rng = np.random.default_rng(1)
    picks = [engine.choose(ev, feasible, np.zeros(3), exploration, rng) for _ in range(4000)]
    k = feasible.sum() + 1  # arms plus "no action"
    greedy = [p for p in picks if p.action == (0, 0)]
    assert greedy[0].propensity == pytest.approx(0.7 + 0.3 / k)
    assert len(greedy) / len(picks) == pytest.approx(0.7 + 0.3 / k, abs=0.03)
    other = [p for p in picks if p.action == (1, 1)]
    assert other[0].propensity == pytest.approx(0.3 / k) and other[0].explored
    assert len(other) / len(picks) == pytest.approx(0.3 / k, abs=0.01)


def test_thompson_propensity_matches_how_often_an_arm_wins():
    ev = np.array([[0.50, 0.48, -1], [-1, -1, -1], [-1, -1, -1]])
    feasible = ev > -1
    p_convert = np.array([[0.3, 0.3, 0.3], [0.1] * 3, [0.1] * 3])
    unit = np.array([20.0, 20.0, 20.0])
    exploration = Exploration(method="thompson", prior_strength=20)
    rng = np.random.default_rng(2)
    picks = [engine.choose(ev, feasible, np.zeros(3), exploration, rng, 0.0, p_convert, unit) for _ in range(600)]
    share = np.mean([p.action == (0, 0) for p in picks])
    mean_propensity = np.mean([p.propensity for p in picks if p.action == (0, 0)])
    assert 0.3 < share < 0.7  # two near-equal arms: both get tried
    assert mean_propensity == pytest.approx(share, abs=0.08)


def test_send_time_is_the_best_allowed_hour_inside_quiet_hours_and_deadline():
    grid = policy.time_grid(NOW, "Europe/Berlin", deadline=NOW + timedelta(hours=10))
    assert grid.times[0].utcoffset() == timedelta(hours=2)
    assert grid.local_hour[0] == 14 and grid.local_hour[1] == 15
    quiet = parse_quiet_hours("22-8")
    assert quiet[22] and quiet[3] and not quiet[8] and not quiet[21]
    p_open = np.zeros((1, 24))
    p_open[0, 3] = 0.9  # 03:00 is best by far, but quiet
    p_open[0, 20] = 0.5  # 20:00 is allowed and before the deadline (22:00 local)
    p_open[0, 23] = 0.8  # after the deadline
    slot_ok = (~quiet[grid.local_hour] & grid.before_deadline)[None, :]
    best = engine.best_slots(p_open, grid.local_hour, slot_ok)
    assert grid.local_hour[best[0]] == 20
    assert grid.times[best[0]].isoformat() == "2026-06-01T20:00:00+02:00"


def test_send_at_carries_the_users_offset():
    grid = policy.time_grid(NOW, "America/New_York")
    assert grid.times[0].isoformat() == "2026-06-01T08:00:00-04:00"
    assert list(grid.local_day[:17]) == [0] * 16 + [1]  # 08:00 + 16 h = midnight local


# --- policy: every rule and its reason code ----------------------------------------------------------

def test_every_offer_rule_has_its_reason():
    cfg = config(offers=[
        Offer(offer_id="ok", category="books", value=10),
        Offer(offer_id="late", category="books", value=10, valid_to=NOW - timedelta(days=1)),
        Offer(offer_id="vip", category="books", value=10, eligibility="value_tier in [high] and recency_days <= 30"),
        Offer(offer_id="capped", category="books", value=10),
        Offer(offer_id="other", category="books", value=10),
    ])
    grid = policy.time_grid(NOW, "Europe/Berlin")
    feats = FEATURES | {"value_tier": "high", "recency_days": 45}
    c = counts(cfg, offer_window=np.array([0, 0, 0, 1, 0]))
    result = policy.evaluate(cfg, feats, c, grid, NOW, allowed_offers={"ok", "late", "vip", "capped"})
    got = reasons(result)
    assert got[("late", None)] == "offer_not_valid"
    assert got[("vip", None)] == "eligibility"
    assert "recency_days <= 30" in next(r.detail for r in result.refusals if r.offer_id == "vip")
    assert got[("capped", None)] == "cap_offer"
    assert got[("other", None)] == "not_in_campaign"
    assert list(result.offer_ok) == [True, False, False, False, False]


def test_unknown_eligibility_feature_fails_closed():
    cfg = config()
    result = policy.evaluate(cfg, {k: v for k, v in FEATURES.items() if k != "lifecycle_stage"}, counts(cfg),
                             policy.time_grid(NOW, "Europe/Berlin"), NOW)
    assert reasons(result)[("keep", None)] == "eligibility"


@pytest.mark.parametrize("case, reason", [
    ("no_consent", "consent"),
    ("unknown_consent", "consent"),
    ("suppressed", "suppressed"),
    ("suppressed_all", "suppressed"),
    ("tz_unknown", "timezone_unknown"),
    ("quiet", "quiet_hours"),
    ("deadline", "deadline"),
    ("day_cap", "cap_channel_day"),
    ("week_cap", "cap_channel_week"),
    ("user_cap", "cap_user_day"),
    ("user_week_cap", "cap_user_week"),
    ("capacity", "capacity"),
    ("campaign", "not_in_campaign"),
])
def test_every_channel_rule_has_its_reason(case, reason):
    cfg = config(channels=[Channel(channel="email", cost=0.01, quiet_hours="22-8", daily_capacity=5),
                           Channel(channel="inapp", cost=0.0, requires_consent=False)],
                 caps=Caps(per_channel_day=1, per_channel_week=3, per_user_day=2))
    feats = dict(FEATURES)
    c = counts(cfg)
    now, deadline, tz_known, allowed = NOW, None, True, None
    if case == "no_consent":
        feats["consent_email"] = False
    elif case == "unknown_consent":
        del feats["consent_email"]
    elif case == "suppressed":
        c.suppressed = {"email": "complaint"}
    elif case == "suppressed_all":
        c.suppressed = {"*": "regulator"}
    elif case == "tz_unknown":
        tz_known = False
    elif case == "quiet":
        now = datetime(2026, 6, 1, 21, 30, tzinfo=UTC)  # 23:30 Berlin; next allowed is 08:00 ...
        deadline = now + timedelta(hours=8)  # ... but the campaign ends at 07:30
    elif case == "deadline":
        deadline = now - timedelta(minutes=1)
    elif case == "day_cap":
        c.channel_day[0, policy.WEEK - 1:] = 1  # today and tomorrow both used
    elif case == "week_cap":
        c.channel_day[0, :policy.WEEK - 1] = 1  # 6 contacts over the past 6 days: every 7-day window is full
    elif case == "user_cap":
        c.channel_day[1, policy.WEEK - 1:] = 2  # inapp used the user's daily budget today and tomorrow
    elif case == "user_week_cap":
        c.channel_day[1, 1:policy.WEEK - 1:2] = 1  # inapp 5, 3 and 1 days ago: 3 contacts in both 7-day windows
    elif case == "capacity":
        c.capacity_used[0] = 5
    elif case == "campaign":
        allowed = {"inapp"}
    grid = policy.time_grid(now, "Europe/Berlin", deadline)
    result = policy.evaluate(cfg, feats, c, grid, now, allowed_channels=allowed, timezone_known=tz_known)
    got = reasons(result)
    assert got[(None, "email")] == reason
    assert not result.channel_ok[0] and not result.slot_ok[0].any()
    if case == "suppressed":
        assert result.refusals[0].detail == "complaint"
    assert set(policy.REASONS) >= {r.reason for r in result.refusals}


def test_caps_count_on_the_users_local_day():
    cfg = config(caps=Caps(per_channel_day=1))
    # 23:30 in New York is already tomorrow in UTC; today's local contact must block only local today.
    now = datetime(2026, 6, 2, 3, 30, tzinfo=UTC)
    grid = policy.time_grid(now, "America/New_York")
    assert grid.local_dates[0].isoformat() == "2026-06-01"
    c = counts(cfg)
    c.channel_day[2, policy.WEEK - 1] = 1  # inapp already used on local 2026-06-01
    result = policy.evaluate(cfg, FEATURES | {"timezone": "America/New_York"}, c, grid, now)
    allowed = result.slot_ok[2]
    assert not allowed[0]  # still local today
    assert allowed[grid.local_day == 1].all()  # from local midnight on


def test_constraints_cover_every_cap_for_a_commit():
    cfg = config(channels=[Channel(channel="email", cost=0.01, daily_capacity=100)])
    send_at = datetime(2026, 6, 1, 23, 30, tzinfo=UTC)  # 01:30 on June 2 in Berlin
    charges, cons = policy.constraints_for("u1", cfg, [("a", "email", send_at)], "Europe/Berlin")
    assert ("u1", "c:email:2026-06-02") in charges and (policy.CAPACITY, "email:2026-06-01") in charges
    assert ("u1", policy.spacing_field(int(send_at.timestamp()) // 3600)) in charges  # the contact's UTC hour
    assert {c.rule for c in cons} == {"cap_channel_day", "cap_channel_week", "cap_user_day", "cap_user_week", "cap_offer",
                                      "capacity", "spacing"}


def test_config_errors_name_the_item_and_the_fix(tmp_path):
    from nextbest.serving.config import ConfigError, load_config

    path = tmp_path / "ops.yaml"
    path.write_text("""
offers:
  - {offer_id: spring, category: books, value: -5}
  - {offer_id: vip, category: any, value: 10, eligibility: "value_tier = high"}
channels:
  - {channel: sms, cost: 0.05, quiet_hours: "25-8"}
triggers:
  - {name: cart, on: add_to_cart, offers: [nope], deadline_minutes: 30}
exploration: {method: epsilon, rate: 2, sped: 1}
""")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "offers[0] (spring).value: Input should be greater than 0 (got -5)" in text
    assert "offers[1] (vip).eligibility" in text and "cannot read eligibility clause" in text
    assert "channels[0] (sms).quiet_hours" in text
    assert "exploration.rate" in text and "exploration.sped: is not a setting here" in text


def test_trigger_references_are_checked():
    with pytest.raises(ValueError, match="unknown offer"):
        config(triggers=[Trigger(name="t", on="register", offers=["nope"])])


def test_config_reloads_without_restart_and_keeps_the_last_good_one(tmp_path):
    import yaml

    from nextbest.serving.config import ConfigSource, default_config

    path = tmp_path / "ops.yaml"
    data = default_config().model_dump(mode="json")
    path.write_text(yaml.safe_dump(data))
    source = ConfigSource(path, check_every_s=0)
    assert source.current(0).offers[0].value == data["offers"][0]["value"]
    data["offers"][0]["value"] = 99.0
    path.write_text(yaml.safe_dump(data))
    assert source.current(1).offers[0].value == 99.0
    path.write_text("offers: []\nchannels: nonsense\n")
    assert source.current(2).offers[0].value == 99.0  # broken file: the last good config stays
    assert "problem" in source.error


def test_default_config_is_12_offers_by_5_channels():
    from nextbest.serving.config import default_config

    cfg = default_config()
    assert len(cfg.offers) == 12 and cfg.channel_names() == ["push", "sms", "email", "inapp", "wechat"]


def test_a_catalog_from_the_company_tables_round_trips_through_yaml(tmp_path):
    import pandas as pd

    from nextbest.features.settings import Settings
    from nextbest.serving.config import catalog_config, load_config, write_config
    from nextbest.simulation.catalog import channels_table, offers_table

    offers, channels = offers_table(pd.Timestamp("2026-06-01", tz="UTC")), channels_table()
    cfg = catalog_config(offers, channels)
    assert cfg.offer_ids() == list(offers["offer_id"]) and cfg.channel_names() == list(channels["channel"])
    by_id = {o.offer_id: o for o in cfg.offers}
    assert by_id["ret_winback"].eligibility == "lifecycle_stage in [customer] and recency_days >= 30"
    assert by_id["off_toys"].valid_from is not None and by_id["off_books"].valid_from is None
    assert {c.channel: c.daily_capacity for c in cfg.channels}["sms"] == 50_000
    # the built-in triggers name offers this catalog lacks: they choose among its coupons instead
    coupons = list(offers.loc[offers["kind"] == "coupon", "offer_id"])
    assert [t.name for t in cfg.triggers] == ["cart_abandonment", "registration"]
    assert all(t.offers == coupons for t in cfg.triggers)
    home = Settings(home=tmp_path / "home")
    assert home.operator_yaml is None  # nothing written: the built-in config
    path = write_config(cfg, home.home / "operator.yaml", note="test")
    assert load_config(path) == cfg and home.operator_yaml == path
    assert Settings(home=home.home, operator_config=tmp_path / "ops.yaml").operator_yaml == tmp_path / "ops.yaml"


# --- the batched rules and choice are the scalar ones, user by user -------------------------------------

def _random_case(rng: np.random.Generator, cfg: OperatorConfig, n: int):
    """Users with planted features, counters, suppressions, campaign limits and grids."""
    tzs = np.array(["Europe/Berlin", "America/New_York", "Asia/Shanghai", None], dtype=object)
    users = {
        "user_id": np.array([f"u{i}" for i in range(n)], dtype=object),
        "timezone": tzs[rng.integers(0, 4, n)],
        "consent_email": np.array([[True, False, None, "true"][k] for k in rng.integers(0, 4, n)], dtype=object),
        "consent_sms": rng.choice([0.0, 1.0, np.nan], n),
        "lifecycle_stage": np.array([["customer", "lead", None][k] for k in rng.integers(0, 3, n)], dtype=object),
        "recency_days": rng.choice([3.0, 30.0, 45.0, np.nan], n),
    }
    nows = [NOW + timedelta(hours=int(h)) for h in rng.integers(0, 30, n)]
    hours = np.array([None, None, "9-20", "23-1"], dtype=object)[rng.integers(0, 4, n)]  # a campaign's send hours
    grids = [policy.time_grid(t, tz, t + timedelta(hours=int(d)) if d else None, h)
             for t, tz, d, h in zip(nows, users["timezone"], rng.integers(-2, 20, n), hours, strict=True)]  # d < 0: past
    n_o, n_c = len(cfg.offers), len(cfg.channels)
    counts = [policy.Counts(channel_day=rng.integers(0, 2, (n_c, policy.WEEK + 1)) * (rng.random((n_c, policy.WEEK + 1)) < 0.3),
                            offer_window=rng.integers(0, 2, n_o), capacity_used=rng.integers(0, 6, (n_c, 2)),
                            suppressed=[{}, {"email": "complaint"}, {"*": "regulator"}, {}][int(rng.integers(0, 4))],
                            # 0-3 earlier or planned contacts around now, in UTC hours (the spacing rule's input)
                            sends=np.where(np.arange(3) < rng.integers(0, 4), policy.hour_bin(NOW) + rng.integers(-180, 40, 3),
                                           NO_SEND))
              for _ in range(n)]
    allowed_o = [None if rng.random() < 0.6 else set(rng.choice(cfg.offer_ids(), 2, replace=False)) for _ in range(n)]
    allowed_c = [None if rng.random() < 0.6 else set(rng.choice(cfg.channel_names(), 2, replace=False)) for _ in range(n)]
    return users, nows, grids, counts, allowed_o, allowed_c


def test_batched_policy_is_the_scalar_policy_for_every_user():
    cfg = config(
        offers=[Offer(offer_id="a", category="books", value=20.0),
                Offer(offer_id="keep", kind="retention", category="any", value=20.0,
                      eligibility="lifecycle_stage in [customer] and recency_days <= 30"),
                Offer(offer_id="late", category="toys", value=5.0, valid_to=NOW + timedelta(hours=12)),
                Offer(offer_id="lead", category="any", value=5.0, eligibility="lifecycle_stage == lead")],
        channels=[Channel(channel="email", cost=0.01, quiet_hours="22-8", daily_capacity=4),
                  Channel(channel="sms", cost=0.05, quiet_hours="21-9"),
                  Channel(channel="inapp", cost=0.0, requires_consent=False)],
        caps=Caps(per_channel_day=1, per_channel_week=2, per_user_day=2))
    rng = np.random.default_rng(5)
    n = 400
    users, nows, grids, counts, allowed_o, allowed_c = _random_case(rng, cfg, n)
    known = np.array([tz is not None for tz in users["timezone"]])
    rules = policy.user_rules(
        cfg, users, nows,
        np.array([[a is None or o in a for o in cfg.offer_ids()] for a in allowed_o]),
        np.array([[a is None or c in a for c in cfg.channel_names()] for a in allowed_c]),
        known, [c.suppressed for c in counts])
    batch = policy.CountsBatch(np.stack([c.channel_day for c in counts]), np.stack([c.offer_window for c in counts]),
                               np.stack([c.capacity_used for c in counts]), [c.suppressed for c in counts],
                               np.stack([c.sends for c in counts]))
    got = policy.evaluate_many(cfg, rules, batch, policy.grid_batch(grids))
    seen = set()
    for u in range(n):
        feats = {k: policy._plain(v[u]) for k, v in users.items()}
        want = policy.evaluate(cfg, feats, counts[u], grids[u], nows[u], allowed_o[u], allowed_c[u], bool(known[u]))
        one = got.one(u)
        assert one.refusals == want.refusals, u
        np.testing.assert_array_equal(one.offer_ok, want.offer_ok)
        np.testing.assert_array_equal(one.channel_ok, want.channel_ok)
        np.testing.assert_array_equal(one.slot_ok, want.slot_ok)
        seen |= {r.reason for r in want.refusals}
    assert seen == set(policy.REASONS) - {"ledger_unavailable"}  # the case covers every rule


def test_batched_counts_are_counts_from_for_every_user():
    cfg = config(caps=Caps(offer_window_days=3))
    grids = [policy.time_grid(NOW + timedelta(hours=h), tz) for h, tz in ((0, "Europe/Berlin"), (20, "America/New_York"))]
    day = grids[0].local_dates[0]
    H0 = policy.hour_bin(NOW + timedelta(hours=20))  # the second user's first slot
    user_counts = [{f"c:email:{day}": 1, f"c:sms:{day - timedelta(days=3)}": 2, f"o:a:{day + timedelta(days=2)}": 1,
                    f"o:a:{day - timedelta(days=3)}": 1, f"o:a:{day - timedelta(days=4)}": 5, "c:fax:2026-06-01": 9,
                    f"c:inapp:{day + timedelta(days=1)}": 1},
                   {f"o:keep:{day}": 2, f"c:email:{day - timedelta(days=9)}": 4,
                    policy.spacing_field(H0 - 100): 2, policy.spacing_field(H0 + 30): 1,
                    policy.spacing_field(H0 - 1000): 5}]  # too long ago to matter: not read
    capacity = {f"email:{NOW.date()}": 3, f"sms:{NOW.date() + timedelta(days=1)}": 7}
    got = policy.counts_batch(user_counts, capacity, cfg, grids, [{}, {"sms": "opt_out"}])
    for u in range(2):
        want = policy.counts_from(user_counts[u], capacity, cfg, grids[u], got.suppressed[u])
        one = got.one(u)
        np.testing.assert_array_equal(one.channel_day, want.channel_day)
        np.testing.assert_array_equal(one.offer_window, want.offer_window)
        np.testing.assert_array_equal(one.capacity_used, want.capacity_used)
        assert sorted(one.sends[one.sends != NO_SEND]) == sorted(want.sends)
    assert sorted(got.sends[1]) == [H0 - 100, H0 - 100, H0 + 30] and (got.sends[0] == NO_SEND).all()
    assert got.offer_window[0, 0] == 2 and got.channel_day[0, 0, policy.WEEK - 1] == 1


@pytest.mark.parametrize("exploration", [Exploration(method="none"), Exploration(method="epsilon", rate=0.3)])
def test_batched_choice_is_choose_with_the_same_draws(exploration):
    rng = np.random.default_rng(3)
    n, n_o, n_c = 300, 4, 3
    ev = rng.normal(0.0, 1.0, (n, n_o, n_c)).round(1)  # rounding plants ties that priority must break
    feasible = rng.random((n, n_o, n_c)) < 0.5
    priority = np.array([0, 2, 1, 2])
    g = engine.greedy_many(ev, feasible, priority, 0.2)
    a, b = np.random.default_rng(9), np.random.default_rng(9)
    for u in range(n):
        assert engine.choose_one(g, u, exploration, a) == engine.choose(ev[u], feasible[u], priority, exploration, b, 0.2)
    assert a.random() == b.random()  # the two consumed the generator identically


def test_batched_slots_and_values_are_the_scalar_ones():
    cfg = config(churn_boost=1.5)
    rng = np.random.default_rng(4)
    n = 50
    p_open = rng.random((n, 3, 24))
    grids = [policy.time_grid(NOW + timedelta(hours=int(h)), "Asia/Shanghai") for h in rng.integers(0, 24, n)]
    local_hour = np.stack([g.local_hour for g in grids])
    slot_ok = rng.random((n, 3, policy.SLOTS)) < 0.3
    best = engine.best_slots_many(p_open, local_hour, slot_ok)
    p_convert, uplift = rng.random((n, 3, 3)), np.where(rng.random((n, 3, 3)) < 0.5, rng.random((n, 3, 3)), np.nan)
    p_churn = rng.random(n)
    ev = engine.expected_values_many(p_convert, uplift, cfg, p_churn)
    for u in range(n):
        np.testing.assert_array_equal(best[u], engine.best_slots(p_open[u], local_hour[u], slot_ok[u]))
        np.testing.assert_array_equal(ev[u], engine.expected_values(p_convert[u], uplift[u], cfg, float(p_churn[u])))


class _Arm:
    """A scorer that reads one request column (and a user feature) through a lookup table."""

    def __init__(self, fn):
        self.fn = fn

    def predict(self, frame):
        return np.asarray(self.fn(frame), dtype=float)


class _FunnelModel:
    """A funnel uplift model: P(open | channel, hour) x (P(convert | opened, offer) - P(convert | control))."""

    feature_service = "uplift_v1"
    arms = ("engage", "convert", "control")

    def __init__(self):
        self.parts = {
            "engage": _Arm(lambda f: f["channel"].map({"email": 0.2, "sms": 0.5, "inapp": 0.3}) * (1 + f["local_hour"] / 100)),
            "convert": _Arm(lambda f: f["offer_id"].map({"a": 0.30, "b": 0.10, "keep": 0.05}) + 0.01 * f["score"]),
            "control": _Arm(lambda f: 0.02 + 0.01 * f["score"]),
        }

    def arm(self, name, frame):
        return self.parts[name].predict(frame)

    def lift(self, frame, control=None):
        return self.arm("convert", frame) - (self.arm("control", frame) if control is None else control)

    def predict(self, frame):
        return self.arm("engage", frame) * (self.arm("convert", frame) - self.arm("control", frame))


class _Champion:
    def __init__(self, model):
        self.name, self.version, self.model = "nextbest-uplift", "1", model


def test_funnel_uplift_is_scored_factorised_with_the_same_numbers_as_predict():
    cfg = config()
    users = {"user_id": np.array(["u1", "u2"], dtype=object), "score": np.array([0.0, 3.0])}
    models = engine.ModelSet(models={"uplift": _Champion(_FunnelModel())}, columns={"uplift": ["score"]})
    hours = np.array([[9, 10, 20], [12, 13, 8]])
    _, uplift = engine.conversion_scores(models, users, cfg, hours)

    class Plain:  # the same model without arms: scored over the full user x offer x channel frame
        feature_service = "uplift_v1"
        predict = _FunnelModel().predict

    plain = engine.ModelSet(models={"uplift": _Champion(Plain())}, columns={"uplift": ["score"]})
    _, full = engine.conversion_scores(plain, users, cfg, hours)
    np.testing.assert_allclose(uplift, full)
    # The offer that converts best after an open wins on every channel, the channel that opens best for every offer.
    assert (uplift.argmax(axis=1) == 0).all() and (uplift.argmax(axis=2) == 1).all()


class _SendTimeChampion:
    """A send-time champion's stand-in: P(open) by channel, the same at every hour (sms best for the engage arm)."""

    name, version = "nextbest-send-time", "1"

    class model:  # noqa: N801 - a champion's `model` attribute
        feature_service = "send_time_v1"

        @staticmethod
        def predict(frame):
            return frame["channel"].map({"email": 0.8, "sms": 0.05, "inapp": 0.3}).to_numpy(dtype=float)


def test_funnel_open_factor_is_the_geometric_mean_with_the_send_time_champion():
    cfg = config()
    users = {"user_id": np.array(["u1", "u2"], dtype=object), "score": np.array([0.0, 3.0])}
    funnel = {"uplift": _Champion(_FunnelModel())}
    hours = np.array([[9, 10, 20], [12, 13, 8]])
    alone = engine.ModelSet(models=funnel, columns={"uplift": ["score"]})
    both = engine.ModelSet(models=funnel | {"send_time": _SendTimeChampion()},
                           columns={"uplift": ["score"], "send_time": ["score"]})
    p_open = engine.send_time_scores(both, users, cfg)
    _, engage_only = engine.conversion_scores(alone, users, cfg, hours, p_open=p_open)  # no send-time champion
    _, without = engine.conversion_scores(both, users, cfg, hours)  # no send-time scores given
    _, blended = engine.conversion_scores(both, users, cfg, hours, p_open=p_open)
    np.testing.assert_allclose(without, engage_only)
    engage, lift = engine.funnel_factors(alone, users, cfg, hours)
    at_hour = np.take_along_axis(p_open, hours[:, :, None], axis=2)[:, :, 0]
    np.testing.assert_allclose(blended, np.sqrt(engage * at_hour)[:, None, :] * lift[:, :, None])
    # The engage arm alone sends by sms; with the send-time champion's view of the channels, email wins.
    channels = cfg.channel_names()
    assert {channels[c] for c in engage_only.max(axis=1).argmax(axis=1)} == {"sms"}
    assert {channels[c] for c in blended.max(axis=1).argmax(axis=1)} == {"email"}
