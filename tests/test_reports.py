"""Reports from the contact log: every figure against an answer computed by hand on a small log, and honest
intervals (they cover a planted truth at their nominal rate)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from nextbest.monitoring.reports import build_report, incremental, report_frame

COSTS = {"email": 0.5, "push": 0.1, "sms": 1.0}
AS_OF = pd.Timestamp("2026-11-29T00:00:00Z")


def _row(unit, campaign, group, offer=None, channel=None, copy="", sent="2026-11-24T09:00:00Z", delivered=None,
         opened=None, clicked=None, converted=None, revenue=None):
    return {"contact_id": f"{unit}-{channel}", "unit": unit, "campaign_id": campaign, "group": group, "offer_id": offer,
            "channel": channel, "copy": copy, "variant": None, "sent_at": sent, "delivered_at": delivered,
            "opened_at": opened, "clicked_at": clicked, "converted_at": converted, "revenue": revenue}


D = "2026-11-24T09:10:00Z"  # delivered within the send hour
LATER = "2026-11-24T12:00:00Z"


def small_log() -> pd.DataFrame:
    rows = [
        # campaign c1: three treated decisions (d2 with two actions), two control, two universal, one no-action
        _row("d1", "c1", "treated", "o1", "email", delivered=D, opened=LATER, clicked=LATER, converted=LATER, revenue=10),
        _row("d2", "c1", "treated", "o1", "push", delivered=D, opened=LATER),
        _row("d2", "c1", "treated", "o2", "email", delivered=LATER),
        _row("d3", "c1", "treated", "o2", "sms", sent="2026-11-24T18:00:00Z", delivered="2026-11-24T18:05:00Z",
             converted=LATER, revenue=20),
        _row("d4", "c1", "control", converted=LATER, revenue=5),
        _row("d5", "c1", "control"),
        _row("d6", "c1", "universal"),
        _row("d7", "c1", "universal", converted=LATER, revenue=4),
        _row("d8", "c1", "no_action"),
        # campaign c2: a copy test, no control group
        _row("e1", "c2", "treated", "o3", "email", copy="A", sent="2026-11-26T09:00:00Z",
             delivered="2026-11-26T11:00:00Z", opened="2026-11-26T12:00:00Z"),
        _row("e2", "c2", "treated", "o3", "email", copy="B", sent="2026-11-26T09:00:00Z",
             delivered="2026-11-26T09:01:00Z", opened="2026-11-26T12:00:00Z", clicked="2026-11-26T12:00:00Z",
             converted="2026-11-26T13:00:00Z", revenue=8),
        # outside the week that ends on AS_OF: in no table
        _row("x1", "c1", "treated", "o1", "email", sent="2026-11-20T09:00:00Z", delivered=D, converted=LATER,
             revenue=1000),
    ]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def report():
    return build_report(report_frame(small_log(), COSTS), "week", AS_OF)


def _by(df: pd.DataFrame, **keys) -> pd.Series:
    hit = df
    for k, v in keys.items():
        hit = hit[hit[k] == v]
    assert len(hit) == 1, f"{keys}: {len(hit)} rows"
    return hit.iloc[0]


def test_funnel_per_campaign_counts_actions_inside_the_window(report):
    c1 = _by(report.tables["funnel_campaign"], campaign_id="c1")
    assert (c1["sent"], c1["delivered"], c1["opened"], c1["clicked"], c1["converted"]) == (4, 4, 2, 1, 2)
    assert c1["revenue"] == pytest.approx(30) and c1["cost"] == pytest.approx(2.1)
    assert c1["opened_rate"] == pytest.approx(0.5)
    c2 = _by(report.tables["funnel_campaign"], campaign_id="c2")
    assert (c2["sent"], c2["opened"], c2["converted"], c2["revenue"], c2["cost"]) == (2, 2, 1, 8, 1.0)


def test_funnel_per_channel_offer_and_copy(report):
    email = _by(report.tables["funnel_channel"], channel="email")
    assert (email["sent"], email["delivered"], email["opened"], email["clicked"], email["converted"]) == (4, 4, 3, 2, 2)
    assert email["revenue"] == pytest.approx(18) and email["cost"] == pytest.approx(2.0)
    assert set(report.tables["funnel_channel"]["channel"]) == {"email", "push", "sms"}  # hold-outs sent nothing
    o2 = _by(report.tables["funnel_offer"], offer_id="o2")
    assert (o2["sent"], o2["converted"], o2["revenue"]) == (2, 1, 20)
    copies = report.tables["funnel_copy"]
    b = _by(copies, campaign_id="c2", copy="B")
    a = _by(copies, campaign_id="c2", copy="A")
    assert (a["converted"], b["converted"], b["clicked_rate"]) == (0, 1, 1.0)


def test_incremental_against_the_campaign_control_with_its_interval(report):
    inc = report.tables["incremental"]
    row = _by(inc, campaign_id="c1", against="control")
    # treated decisions d1, d2, d3: converted [1, 0, 1], revenue [10, 0, 20]; control d4, d5: [1, 0], [5, 0]
    assert (row["treated_units"], row["control_units"]) == (3, 2)
    assert row["incremental_conversions"] == pytest.approx(3 * (2 / 3 - 1 / 2))
    se_conv = math.sqrt((1 / 3) / 3 + 0.5 / 2)
    assert row["incremental_conversions_low"] == pytest.approx(3 * (1 / 6 - 1.959964 * se_conv), rel=1e-5)
    assert row["incremental_revenue"] == pytest.approx(3 * (10 - 2.5))
    se_rev = math.sqrt(100 / 3 + max(12.5, 100) / 2)  # the control term takes the larger variance (conservative)
    assert row["incremental_revenue_high"] == pytest.approx(3 * (7.5 + 1.959964 * se_rev), rel=1e-5)
    assert row["cost"] == pytest.approx(2.1)
    assert row["roi"] == pytest.approx((22.5 - 2.1) / 2.1)


def test_incremental_against_the_universal_holdout_and_over_all_campaigns(report):
    inc = report.tables["incremental"]
    uni = _by(inc, campaign_id="c1", against="universal")
    assert uni["incremental_revenue"] == pytest.approx(3 * (10 - 2))  # universal d6, d7: revenue [0, 4]
    every = _by(inc, campaign_id="(all)", against="control")
    assert every["treated_units"] == 5  # d1, d2, d3, e1, e2
    assert every["incremental_revenue"] == pytest.approx(5 * (38 / 5 - 2.5))
    assert every["cost"] == pytest.approx(3.1)
    assert not (inc["campaign_id"] == "c2").any()  # no control group: no incremental figure claimed


def test_channel_roi_subtracts_the_campaign_baseline(report):
    roi = report.tables["channel_roi"]
    # c1's hold-out decisions (both kinds) earned [5, 0, 0, 4]: 2.25 each; d2's two actions share it
    email = _by(roi, channel="email")
    assert email["baseline_revenue"] == pytest.approx(2.25 + 1.125)
    assert email["incremental_revenue"] == pytest.approx(18 - 3.375)
    assert email["roi"] == pytest.approx((14.625 - 2.0) / 2.0)
    assert _by(roi, channel="push")["roi"] == pytest.approx((-1.125 - 0.1) / 0.1)
    assert _by(roi, channel="sms")["incremental_revenue"] == pytest.approx(17.75)


def test_send_time_by_chosen_hour_and_delivered_in_hour(report):
    st = report.tables["send_time"]
    email9 = _by(st, channel="email", hour=9)
    assert (email9["sent"], email9["delivered"]) == (4, 4)
    # delivered within 09:00-10:00: d1, d2's email? no (12:00), e1 no (11:00), e2 yes
    assert email9["delivered_in_hour_share"] == pytest.approx(2 / 4)
    assert _by(st, channel="sms", hour=18)["delivered_in_hour_share"] == 1.0


def test_rollups_per_day_and_week(report):
    r = report.tables["rollup"]
    assert set(r["grain"]) == {"day", "week"}  # a week's report: daily and weekly, not monthly
    day24 = _by(r, grain="day", period_start=pd.Timestamp("2026-11-24"))
    assert (day24["sent"], day24["converted"], day24["revenue"], day24["held_out"]) == (4, 2, 30, 4)
    week = _by(r, grain="week", period_start=pd.Timestamp("2026-11-23"))  # Monday
    assert (week["sent"], week["revenue"], week["cost"]) == (6, 38, pytest.approx(3.1))


def test_the_json_figures_equal_the_tables(report):
    doc = report.as_json()
    assert doc["period"] == "week" and doc["end"] == AS_OF.isoformat()
    row = next(r for r in doc["tables"]["incremental"] if r["campaign_id"] == "c1" and r["against"] == "control")
    assert row["incremental_revenue"] == pytest.approx(22.5)
    assert all(isinstance(v, (int, float, str, type(None))) for r in doc["tables"]["rollup"] for v in r.values())


def test_groups_and_copies_default_from_the_contract_variant():
    contacts = small_log().drop(columns=["group", "copy", "unit"])
    contacts["variant"] = ["treatment", "explore", "treatment", "B", "control", "control", "control", "control",
                           "no_action", "A", "B", "treatment"]
    frame = report_frame(contacts, COSTS)
    assert list(frame["group"][:5]) == ["treated", "treated", "treated", "treated", "control"]
    assert frame["copy"][3] == "B" and frame["copy"][0] == ""
    assert frame.loc[frame["group"] != "treated", "cost"].eq(0).all()


def test_intervals_cover_a_planted_truth_at_their_nominal_rate():
    # 200 seeded runs as 200 campaigns of one log. Random assignment to control; treated conversion 6 %, control
    # 4 %, revenue per conversion ~ Gamma(2, 25) (mean 50). The truth of each run is what its treated units gained
    # on average: n_t x (0.06 - 0.04) x 50.
    runs, n = 200, 2000
    rng = np.random.default_rng(11)
    control = rng.random(runs * n) < 0.2
    converted = rng.random(runs * n) < np.where(control, 0.04, 0.06)
    frame = pd.DataFrame({"unit": np.arange(runs * n).astype(str), "campaign_id": np.repeat(np.arange(runs), n).astype(str),
                          "offer_id": "o", "channel": np.where(control, "", "email"), "copy": "",
                          "group": np.where(control, "control", "treated"),
                          "sent_at": pd.Timestamp("2026-11-24", tz="UTC"),
                          "converted_at": np.where(converted, pd.Timestamp("2026-11-25", tz="UTC"), pd.NaT),
                          "revenue": np.where(converted, rng.gamma(2.0, 25.0, runs * n), 0.0), "cost": 0.0})
    for stage in ("delivered", "opened", "clicked"):
        frame[f"{stage}_at"] = pd.NaT
    inc = incremental(frame)
    inc = inc[(inc["campaign_id"] != "(all)") & (inc["against"] == "control")].set_index("campaign_id")
    treated = pd.Series(~control).groupby(frame["campaign_id"]).sum()
    truth = treated.reindex(inc.index) * (0.06 - 0.04) * 50.0
    covered = ((inc["incremental_revenue_low"] <= truth) & (truth <= inc["incremental_revenue_high"])).sum()
    assert len(inc) == runs
    assert covered / runs >= 0.9, f"the 95 % interval covered the truth in {covered}/{runs} runs"


def test_the_service_logs_become_report_rows_with_their_holdout_scope(tmp_path):
    from nextbest.features.ingest import write_raw
    from nextbest.features.settings import Settings
    from nextbest.monitoring.sources import load_frame
    from nextbest.serving.decision_log import DecisionLog

    settings = Settings(home=tmp_path / "home")
    users = pd.DataFrame({"user_id": ["a", "b", "c", "d"], "signup_at": pd.Timestamp("2026-01-01", tz="UTC"),
                          "timezone": "UTC"})
    events = pd.DataFrame({"user_id": ["c"], "ts": [pd.Timestamp("2026-11-25T10:00Z")], "type": ["purchase"],
                           "amount": [40.0]})
    write_raw({"users": users, "events": events}, settings.raw_dir)
    log = DecisionLog(settings.log_dir)
    at = "2026-11-24T09:00:00+00:00"

    def action(channel):
        return {"offer_id": "o1", "channel": channel, "send_at": at, "propensity": 0.9, "expected_value": 1.0,
                "explored": False}

    log.decisions([
        {"decision_id": "d-a", "at": at, "user_id": "a", "campaign_id": "spring", "actions": [action("email"), action("push")],
         "no_action_propensity": 0.1, "holdout": None},
        {"decision_id": "d-b", "at": at, "user_id": "b", "campaign_id": "spring", "actions": [],
         "no_action_propensity": 0.05, "holdout": "universal"},
        {"decision_id": "d-c", "at": at, "user_id": "c", "campaign_id": "spring", "actions": [],
         "no_action_propensity": 0.1, "holdout": "campaign:spring"},
        {"decision_id": "d-d", "at": at, "user_id": "d", "campaign_id": "spring", "actions": [],
         "no_action_propensity": 0.7, "holdout": None},
    ])
    log.outcome({"decision_id": "d-a", "user_id": "a", "outcome": "converted", "offer_id": "o1", "channel": "email",
                 "at": "2026-11-24T12:00:00+00:00", "revenue": 25.0, "propensity": 0.9})
    frame = load_frame(settings)
    by_group = frame.groupby("group", observed=True)["unit"].nunique().to_dict()
    assert by_group == {"treated": 1, "universal": 1, "control": 1, "no_action": 1}  # d-a's two actions: one unit
    assert frame.loc[frame["group"] == "treated", "cost"].sum() == pytest.approx(
        sum(c for ch, c in _default_costs().items() if ch in ("email", "push")))
    control = frame[frame["group"] == "control"].iloc[0]
    assert control["revenue"] == 40.0  # the hold-out's own purchase within the window, from the events
    assert frame.loc[frame["group"] == "treated", "revenue"].sum() == 25.0


def _default_costs() -> dict[str, float]:
    from nextbest.serving.config import default_config

    return {c.channel: c.cost for c in default_config().channels}


def test_the_default_end_is_the_last_send_that_has_happened():
    from nextbest.monitoring.sources import default_as_of

    frame = report_frame(small_log(), COSTS)
    now = pd.Timestamp("2026-11-25T00:00:00Z")
    assert default_as_of(frame, now) == pd.Timestamp("2026-11-24T18:00:00Z")  # d3's send; the 26th is still to come
    assert default_as_of(frame, pd.Timestamp("2026-12-31T00:00:00Z")) == pd.Timestamp("2026-11-26T09:00:00Z")
    assert default_as_of(frame.iloc[0:0], now) == now
