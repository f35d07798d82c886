"""Running campaigns on the trained simulated world: nothing before approval, batches through the engine of /decide
(caps across competing campaigns), resumable without double charges, within budget, and the copy experiment finds
the planted best copy from the outcomes reported to /feedback."""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nextbest.campaigns import execution, segments
from nextbest.campaigns.model import CampaignOffer, CampaignSpec, Caps, Experiment, Variant
from nextbest.campaigns.store import CampaignStore, store_path
from nextbest.serving.config import Trigger, load_config, write_config
from nextbest.serving.runtime import Runtime, UserError
from nextbest.serving.schemas import BatchDecideRequest, EventsRequest, FeedbackRequest
from nextbest.simulation.copies import copy_effects, draw_responses
from tests.conftest import copy_home

NOW = datetime(2026, 9, 30, 9, 30, tzinfo=UTC)


@pytest.fixture(autouse=True)
def server_clock(monkeypatch):
    monkeypatch.setattr("nextbest.serving.clock.system_clock", lambda: NOW)


@pytest.fixture(scope="module")
def world(trained, tmp_path_factory):
    """A private copy of the trained home with one runtime and the campaign store (module-wide: a runtime loads the
    champions once)."""
    home = copy_home(trained, tmp_path_factory.mktemp("campaigns") / "home", fresh_ledger=True)
    # An event trigger for the trigger campaign test (views of the catalog's first offer).
    config = load_config(home.operator_yaml)
    trigger = Trigger(name="browsed", on="view", deadline_minutes=240, offers=[config.offers[0].offer_id])
    write_config(config.model_copy(update={"triggers": [*config.triggers, trigger]}), home.operator_yaml)
    mp = pytest.MonkeyPatch()
    mp.setattr("nextbest.serving.clock.system_clock", lambda: NOW)
    rt = Runtime(home, rng=np.random.default_rng(1))
    store = CampaignStore(store_path(home.home))
    columns = set(segments.table_columns(home.feature_dir))
    store.save_segment(segments.Segment("everyone", "scorecard > -100000"), columns)
    yield home, rt, store
    rt.close()
    mp.undo()


def _spec(rt, name: str, **kw) -> CampaignSpec:
    offers = rt.config.current(0).offer_ids()
    variants = [Variant(id=v, text=f"copy {v}") for v in "ABCD"]
    return CampaignSpec(name=name, audience="everyone", offers=[CampaignOffer(offer_id=o, variants=variants)
                                                                for o in offers], **kw)


def _approved(store, spec, cid):
    c = store.create(spec, "ann", cid)
    store.command(c.id, "submit", "ann")
    store.command(c.id, "approve", "bob")
    return store.command(c.id, "start", "bob")


def test_nothing_runs_before_approval_and_the_dry_run_charges_nothing(world):
    home, rt, store = world
    c = store.create(_spec(rt, "preview"), "ann", "preview")
    ids = execution.audience(home, store, c)
    before = rt.ledger.read(ids[:50])
    report = execution.dry_run(home, store, c.id, rt)
    assert report["audience"] == len(ids) > 100
    assert report["would_send"] == sum(report["by_offer"].values()) == sum(report["by_channel"].values()) \
        == sum(report["by_hour"].values()) > 0
    assert report["would_send"] + report["no_contact"] + report["not_online"] == report["audience"]
    assert report["filtered"]  # why users get nothing, by reason
    with pytest.raises(execution.ExecutionError, match="approved and started"):
        execution.execute(home, store, c.id, rt)
    assert rt.ledger.read(ids[:50]) == before and store.sends(c.id) == []


def test_a_campaign_runs_in_resumable_batches_and_a_replayed_batch_charges_nothing_twice(world):
    home, rt, store = world
    c = _approved(store, _spec(rt, "autumn", priority=5, control_pct=10, experiment=Experiment(mode="bandit")), "autumn")
    first = execution.execute(home, store, c.id, rt, batch=150, max_batches=1)
    assert first["stopped"] == "batch limit of this run" and first["done"] == 150 and first["state"] == "running"
    sent = store.sends(c.id)
    assert sent and all(rt.ledger.decision(s["decision_id"]) for s in sent)
    # A crash after the decisions but before the cursor moved: the batch runs again and replays its decisions.
    with sqlite3.connect(store.path) as con:
        con.execute("UPDATE campaign_runs SET cursor = 0, held_out = 0 WHERE id = ?", (c.id,))  # the batch unrecorded
    again = execution.execute(home, store, c.id, rt, batch=150, max_batches=1)
    assert again["sends"] == len(sent) and [s["decision_id"] for s in store.sends(c.id)] == [s["decision_id"] for s in sent]
    done = execution.execute(home, store, c.id, rt, batch=150)
    assert done["done"] == done["audience"] and done["state"] == "finished"
    sends = store.sends(c.id)
    assert len({s["decision_id"] for s in sends}) == len(sends) == done["sends"]
    assert all(0 < s["probability"] <= 1 and s["variant"] in "ABCD" for s in sends)
    assert len({s["user_id"] for s in sends}) == len(sends)  # one contact per user per run
    # Its control group (10 %, serving/holdout.py's rule) is never contacted by it.
    ids = execution.audience(home, store, c)
    held = execution.control_mask(c, ids, rt.config.current(0).holdout, NOW)
    assert done["held_out"] == int(held.sum()) and 0.05 < held.mean() < 0.15
    assert not {s["user_id"] for s in sends} & {u for u, h in zip(ids, held, strict=True) if h}


def test_a_campaign_control_group_is_stable_per_user_and_campaign_and_includes_the_universal_holdout():
    from nextbest.campaigns.model import Campaign
    from nextbest.serving.config import Holdout

    def campaign(cid: str, pct: float) -> Campaign:
        spec = CampaignSpec(name=cid, audience="everyone", control_pct=pct,
                            offers=[CampaignOffer(offer_id="o1", variants=[Variant(id="A", text="a")])])
        return Campaign(id=cid, version=1, state="running", spec=spec, created_by="ann", updated_at=NOW)

    ids = [f"u{i}" for i in range(20_000)]
    none, universal = Holdout(), Holdout(share=0.05)
    a = execution.control_mask(campaign("a", 20), ids, none, NOW)
    assert abs(a.mean() - 0.20) < 0.015
    assert (execution.control_mask(campaign("a", 20), ids, none, NOW + timedelta(days=1)) == a).all()  # same period
    b = execution.control_mask(campaign("b", 20), ids, none, NOW)
    assert abs((a & b).mean() - 0.04) < 0.01  # another campaign draws its own control group
    assert not execution.control_mask(campaign("a", 0), ids, none, NOW).any()
    with_universal = execution.control_mask(campaign("a", 20), ids, universal, NOW)
    assert (with_universal >= a).all() and abs(with_universal.mean() - (0.20 + 0.05 - 0.01)) < 0.015


def test_competing_campaigns_keep_every_contact_cap_and_the_budget(world):
    home, rt, store = world
    config = rt.config.current(0)
    cost = {ch.channel: ch.cost for ch in config.channels}
    budget = 3 * max(cost.values())
    _approved(store, _spec(rt, "high", priority=9, caps=Caps(budget=budget)), "high")
    _approved(store, _spec(rt, "low", priority=1, caps=Caps(max_sends=40)), "low")
    _approved(store, _spec(rt, "mid", priority=4), "mid")
    results = execution.execute_due(home, store, rt, batch=200)
    assert [r["campaign_id"] for r in results] == ["high", "mid", "low"]  # by priority
    by = {r["campaign_id"]: r for r in results}
    assert 0 < by["high"]["cost"] <= budget and by["high"]["stopped"] == "budget or send limit reached"
    assert by["low"]["sends"] <= 40
    # Across all campaigns of this world (including the earlier test's): the contact policy's caps per user.
    per_user_day, per_channel_day = Counter(), Counter()
    for cid in ("autumn", "high", "mid", "low"):
        for s in store.sends(cid):
            day = datetime.fromisoformat(s["send_at"]).date()
            per_user_day[(s["user_id"], day)] += 1
            per_channel_day[(s["user_id"], s["channel"], day)] += 1
    assert per_user_day and max(per_user_day.values()) <= config.caps.per_user_day
    assert max(per_channel_day.values()) <= config.caps.per_channel_day


def test_the_fixed_copy_test_records_the_planted_best_copy_and_rolls_it_out(world, monkeypatch):
    home, rt, store = world
    # A week after the other campaigns of this world, so their contacts do not hold this one's caps.
    monkeypatch.setattr("nextbest.serving.clock.system_clock", lambda: NOW + timedelta(days=8))
    effects = copy_effects(4, best=2, lift=11.0)  # copy C gets 12x the clicks of the others
    exp = Experiment(mode="fixed", metric="clicked", mde=5.0, baseline=0.05, test_share=0.5, alpha=0.05)
    offer = rt.config.current(0).offer_ids()[0]
    spec = CampaignSpec(name="copy test", audience="everyone", experiment=exp, offers=[
        CampaignOffer(offer_id=offer, variants=[Variant(id=v) for v in "ABCD"])])
    c = _approved(store, spec, "copytest")
    first = execution.execute(home, store, c.id, rt, batch=500)
    assert first["stopped"] == "waiting for the copy experiment's winner"
    sends = store.sends(c.id)
    variants = np.array(["ABCD".index(s["variant"]) for s in sends])
    assert len(set(variants)) == 4 and all(s["probability"] == 0.25 for s in sends)
    clicked = draw_responses(0.05, variants, effects, np.random.default_rng(4))
    for s, hit in zip(sends, clicked, strict=True):
        if hit:
            rt.feedback(FeedbackRequest(decision_id=s["decision_id"], outcome="clicked", offer_id=s["offer_id"]))
    campaign, report = execution.evaluate_experiments(home, store, c.id)
    assert campaign.winners == {offer: "ABCD"[effects.best]} and report[0]["winner"] == "C", report
    assert any(e["command"] == "winner" for e in store.events(c.id))
    rest = execution.execute(home, store, c.id, rt, batch=500)
    later = store.sends(c.id)[len(sends):]
    assert rest["state"] == "finished" and all(s["variant"] == "C" and s["probability"] == 1.0 for s in later)


def _charged(snapshot) -> tuple[dict, dict]:
    """The ledger's non-zero counters (a released charge leaves its key at 0)."""
    return ({u: {k: v for k, v in c.items() if v} for u, c in snapshot.user_counts.items()},
            {k: v for k, v in snapshot.capacity.items() if v})


def test_a_pause_while_a_batch_is_decided_gives_the_batch_back(world, monkeypatch):
    home, rt, store = world
    monkeypatch.setattr("nextbest.serving.clock.system_clock", lambda: NOW + timedelta(days=16))
    c = _approved(store, _spec(rt, "paused midway"), "midway")
    ids = execution.audience(home, store, c)[:100]
    before = _charged(rt.ledger.read(ids))
    decide = rt.decide_batch

    def decide_then_pause(request):  # the marketer pauses while the service is deciding the first batch
        out = decide(request)
        store.command(c.id, "pause", "ann")
        return out

    monkeypatch.setattr(rt, "decide_batch", decide_then_pause)
    result = execution.execute(home, store, c.id, rt, batch=100)
    given_back = re.search(r"its (\d+) decisions given back", result["stopped"])
    assert given_back and int(given_back.group(1)) > 0, result["stopped"]
    assert store.sends(c.id) == [] and result["state"] == "paused" and result["done"] == 100
    assert _charged(rt.ledger.read(ids)) == before  # every charge of the batch released


def _logged(home) -> dict[str, dict]:
    """decisions.jsonl by decision id."""
    lines = (home.log_dir / "decisions.jsonl").read_text().splitlines()
    return {r["decision_id"]: r for r in map(json.loads, lines)}


def test_the_engine_draws_each_copy_and_logs_it_with_its_probability(world, monkeypatch):
    home, rt, store = world
    monkeypatch.setattr("nextbest.serving.clock.system_clock", lambda: NOW + timedelta(days=24))
    c = _approved(store, _spec(rt, "logged copies", experiment=Experiment(mode="bandit")), "logged")
    execution.execute(home, store, c.id, rt, batch=120, max_batches=1)
    sends, logged = store.sends(c.id), _logged(home)
    assert sends
    for s in sends:  # the campaign's record is the decision log's: the copy and the probability it was drawn with
        [action] = [a for a in logged[s["decision_id"]]["actions"] if a["offer_id"] == s["offer_id"]]
        assert (action["variant"], action["variant_probability"]) == (s["variant"], s["probability"])
        assert logged[s["decision_id"]]["campaign_id"] == c.id
    # The draw follows the context's probabilities (a winner gets every send; 0.8/0.2 about 4:1).
    users = execution.audience(home, store, c)[:200]
    offer = rt.config.current(0).offer_ids()
    shares = {o: {"A": 0.8, "B": 0.2, "C": 0.0} for o in offer}
    out = rt.decide_batch(BatchDecideRequest(user_ids=users, context={"campaign_id": "direct", "variants": shares}))
    drawn = Counter(a["variant"] for d in out for a in d["actions"])
    assert drawn["C"] == 0 and drawn["A"] > 2 * drawn["B"] > 0, drawn
    assert all(a["variant_probability"] == {"A": 0.8, "B": 0.2}[a["variant"]] for d in out for a in d["actions"])
    with pytest.raises(UserError, match="context.variants names offer"):
        rt.decide_batch(BatchDecideRequest(user_ids=users[:1], context={"offers": offer[:1],
                                                                         "variants": {offer[-1]: {"A": 1.0}}}))


def test_a_campaign_sends_only_inside_its_local_send_hours(world, monkeypatch):
    home, rt, store = world
    monkeypatch.setattr("nextbest.serving.clock.system_clock", lambda: NOW + timedelta(days=32))
    c = _approved(store, _spec(rt, "evenings", send_hours="18-21", send_window_hours=48), "evenings")
    done = execution.execute(home, store, c.id, rt, batch=150, max_batches=1)
    hours = Counter(datetime.fromisoformat(s["send_at"]).hour for s in store.sends(c.id))  # the user's local clock
    assert done["sends"] > 0 and set(hours) <= {18, 19, 20}, hours
    report = execution.dry_run(home, store, c.id, rt)
    assert set(report["by_hour"]) <= {18, 19, 20}


def test_a_trigger_sends_only_while_its_campaign_runs_on_an_approved_version(world, monkeypatch):
    from nextbest.campaigns.api import TriggerCampaigns

    home, rt, store = world
    at = NOW + timedelta(days=40)
    monkeypatch.setattr("nextbest.serving.clock.system_clock", lambda: at)
    monkeypatch.setattr(rt, "trigger_campaigns", TriggerCampaigns(store, rt))
    offer = load_config(home.operator_yaml).offers[0].offer_id
    spec = CampaignSpec(name="browse follow-up", trigger="browsed", offers=[
        CampaignOffer(offer_id=offer, variants=[Variant(id="A"), Variant(id="B")])])
    users = segments.member_ids(home.feature_dir, store.segment("everyone").rule, store.segment_rule)

    def fire(k: int) -> list[dict]:  # each call: 15 other users view something (no caps charged before)
        events = [{"user_id": u, "type": "view", "ts": (at - timedelta(minutes=k)).isoformat()}
                  for u in users[15 * k:15 * k + 15]]
        return rt.events(EventsRequest(events=events))["triggered"]

    assert any(d["actions"] for d in fire(1)), "a trigger no campaign names fires as the operator config says"
    c = store.create(spec, "ann", "browse")
    store.command(c.id, "submit", "ann")
    store.command(c.id, "approve", "bob")
    assert fire(2) == []  # the trigger belongs to the campaign now, approved but not started: nothing is decided
    store.command(c.id, "start", "bob")
    sent = [d for d in fire(3) if d["actions"]]
    assert sent and all(a["offer_id"] == offer and a["variant"] in "AB" and a["variant_probability"] == 0.5
                        for d in sent for a in d["actions"])
    assert {s["decision_id"] for s in store.sends(c.id)} == {d["decision_id"] for d in sent}
    assert all(_logged(home)[d["decision_id"]]["campaign_id"] == c.id for d in sent)
    store.command(c.id, "pause", "ann")
    assert fire(4) == []


_RIVAL = st.fixed_dictionaries({
    "priority": st.integers(-5, 5),
    "max_sends": st.one_of(st.none(), st.integers(1, 40)),
    "budget_sends": st.one_of(st.none(), st.integers(1, 30)),  # a budget of this many sends at the dearest channel
    "channels": st.one_of(st.none(), st.sets(st.integers(0, 4), min_size=1, max_size=3)),
    "offers": st.sets(st.integers(0, 5), min_size=1, max_size=3),
    "control_pct": st.sampled_from([0.0, 25.0]),
    "send_hours": st.sampled_from([None, "9-20", "20-8"]),
})
_DAYS = iter(range(60, 10_000, 10))  # each example on its own days: caps from earlier examples have expired


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_RIVAL, min_size=2, max_size=3))
def test_no_contact_rule_breaks_across_competing_campaigns(world, monkeypatch, rivals):
    """Random campaigns over the same users, run by priority: every contact cap, capacity, budget, send limit,
    channel list, send-hour window and control group holds across them."""
    home, rt, store = world
    now = NOW + timedelta(days=next(_DAYS))
    monkeypatch.setattr("nextbest.serving.clock.system_clock", lambda: now)
    config = rt.config.current(0)
    offers, channels, cost = config.offer_ids(), config.channel_names(), {c.channel: c.cost for c in config.channels}
    if store.segment_rule("rivals") is None:  # ~120 users with the highest scorecard: small, shared by every rival
        path = home.home / "everyone.parquet"
        segments.export(home.feature_dir, store.segment("everyone").rule, store.segment_rule, path)
        cut = float(np.sort(pd.read_parquet(path)["scorecard"].to_numpy())[-120])
        store.save_segment(segments.Segment("rivals", f"scorecard >= {cut}"), set(segments.table_columns(home.feature_dir)))
    made = []
    for k, r in enumerate(rivals):
        allowed = [channels[j % len(channels)] for j in sorted(r["channels"])] if r["channels"] else None
        dearest = max(cost[c] for c in allowed or channels)
        budget = r["budget_sends"] * dearest if r["budget_sends"] and dearest > 0 else None
        spec = CampaignSpec(name=f"rival {k}", audience="rivals", priority=r["priority"], control_pct=r["control_pct"],
                            channels=sorted(set(allowed)) if allowed else None, send_hours=r["send_hours"],
                            caps=Caps(max_sends=r["max_sends"], budget=budget),
                            offers=[CampaignOffer(offer_id=offers[j % len(offers)]) for j in sorted(r["offers"])])
        made.append(_approved(store, spec, None))
    for c in sorted(made, key=lambda c: (-c.spec.priority, c.id)):  # what execute_due does: priority first
        execution.execute(home, store, c.id, rt, batch=200)
    per_user_day, per_channel_day, per_offer = Counter(), Counter(), Counter()
    for c in made:
        sends = store.sends(c.id)
        spec = c.spec
        assert spec.caps.max_sends is None or len(sends) <= spec.caps.max_sends
        assert spec.caps.budget is None or sum(s["cost"] for s in sends) <= spec.caps.budget + 1e-9
        assert len({s["user_id"] for s in sends}) == len(sends)  # one contact per user per campaign run
        assert {s["channel"] for s in sends} <= set(spec.channels or channels)
        assert {s["offer_id"] for s in sends} <= {o.offer_id for o in spec.offers}
        if spec.send_hours:
            window = {"9-20": range(9, 20), "20-8": [*range(20, 24), *range(0, 8)]}[spec.send_hours]
            assert {datetime.fromisoformat(s["send_at"]).hour for s in sends} <= set(window)
        held = execution.control_mask(c, [s["user_id"] for s in sends], config.holdout, now)
        assert not held.any()  # nobody of its control group
        for s in sends:
            day = datetime.fromisoformat(s["send_at"]).date()  # the user's local day
            per_user_day[(s["user_id"], day)] += 1
            per_channel_day[(s["user_id"], s["channel"], day)] += 1
            per_offer[(s["user_id"], s["offer_id"])] += 1
    assert not per_user_day or max(per_user_day.values()) <= config.caps.per_user_day
    assert not per_channel_day or max(per_channel_day.values()) <= config.caps.per_channel_day
    assert not per_offer or max(per_offer.values()) <= config.caps.per_offer
