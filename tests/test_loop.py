"""The closed loop in simulation: decide -> outcomes -> feedback -> retrain, with the value rising."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nextbest.features.ingest import read_raw, write_raw
from nextbest.features.settings import Settings
from nextbest.pipelines.loop import LoopConfig, run_loop, write_loop_chart
from nextbest.pipelines.retrain import RetrainConfig, load_state, retrain
from nextbest.simulation import WorldConfig, simulate
from nextbest.simulation.truth import Truth

MODELS = ("conversion", "uplift", "send_time", "churn")


@pytest.fixture(scope="module")
def looped(tmp_path_factory):
    """A young world (a short logged history: weak first models), trained, then three rounds of the loop."""
    settings = Settings(home=tmp_path_factory.mktemp("loop") / "home")
    world = simulate(WorldConfig(n_users=LOOP_USERS, days=LOOP_HISTORY_DAYS, seed=3))
    write_raw(world.tables, settings.raw_dir)
    world.truth.save(settings.truth_dir)
    retrain(settings, RetrainConfig(trials=1, evaluate=False, models=MODELS, uplift_learner="funnel"), resume=False)
    before = {t: read_raw(settings.raw_dir, t) for t in ("contacts", "events", "suppressions")}
    table = run_loop(settings, LoopConfig(rounds=3, days=14, trials=1, models=MODELS, uplift_learner="funnel"))
    return settings, world, before, table


LOOP_USERS = 2_000
LOOP_HISTORY_DAYS = 28


@pytest.mark.slow
def test_the_value_rises_from_the_first_round_without_breaking_a_rule(looped):
    settings, _, _, table = looped
    assert list(table.index) == [1, 2, 3]
    assert (table["violations"] == 0).all()
    assert (table["contacts"] > 0).all() and (table["controls"] > 0).all()
    share = table["share_of_oracle"].to_numpy()
    assert share[-1] > share[0], f"share of the oracle per round: {share}"
    # the champions the rounds decided with changed: retraining promoted something, through the policy gate
    assert table["models"].iloc[0] != table["models"].iloc[-1]
    gate = load_state(settings)["steps"]["evaluate"]["decision"]  # the last retraining's
    assert gate["by"] == "simulation" and gate["promoted"] is (gate["challenger_revenue"] > gate["champion_revenue"])
    chart = write_loop_chart(table, settings.home / "reports")
    assert chart.stat().st_size > 10_000


@pytest.mark.slow
def test_feedback_reveals_only_what_has_happened(looped):
    settings, world, before, _ = looped
    truth = Truth.load(settings.truth_dir)
    end = pd.Timestamp(truth.end_ns, tz="UTC")
    assert end == world.config.end_ts + pd.Timedelta(days=3 * 14)  # the world advanced by rounds x days
    contacts = read_raw(settings.raw_dir, "contacts")
    loop = contacts[contacts["contact_id"].astype(str).str.startswith("L")]
    assert len(contacts) == len(before["contacts"]) + len(loop)  # the history is kept, loop rows appended
    # decided inside the rounds; a send decided on a round's last day may be scheduled into the next morning
    assert (loop["sent_at"] >= world.config.end_ts).all() and (loop["sent_at"] < end + pd.Timedelta(days=1)).all()
    for col in ("delivered_at", "opened_at", "clicked_at", "converted_at", "unsubscribed_at", "complained_at"):
        t = pd.to_datetime(loop[col], utc=True)
        assert (t.dropna() < end).all(), f"{col} reveals the future"  # an outcome after the end is still pending
        assert (t.dropna() >= pd.to_datetime(loop.loc[t.notna(), "sent_at"], utc=True)).all()
    control = loop["variant"].astype(str) == "control"
    assert control.any() and loop.loc[control, "channel"].isna().all()
    assert loop.loc[control, ["opened_at", "clicked_at"]].isna().all().all()
    assert ((loop["propensity"] > 0) & (loop["propensity"] <= 1)).all()
    # the newest sends' outcomes are still pending: a send on the last day cannot show a 7-day window yet
    assert (settings.home / "loop" / "contacts.parquet").exists()
    events = read_raw(settings.raw_dir, "events")
    assert len(events) > len(before["events"]) and (events["ts"] < end).all()
    new_events = events.iloc[len(before["events"]):]
    assert (new_events["ts"] >= world.config.end_ts).all()
    # every complaint and unsubscribe seen so far suppresses that user's channel
    supp = read_raw(settings.raw_dir, "suppressions")
    added = supp.iloc[len(before["suppressions"]):]
    complained = loop[pd.to_datetime(loop["complained_at"], utc=True).notna()]
    assert len(added) == loop[["unsubscribed_at", "complained_at"]].notna().to_numpy().sum()
    assert set(zip(complained["user_id"].astype(str), complained["channel"].astype(str), strict=True)) <= set(
        zip(added["user_id"].astype(str), added["channel"].astype(str), strict=True))
    assert np.isin(added["reason"].astype(str), ["complaint", "opt_out"]).all()
