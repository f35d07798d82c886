"""Trigger campaigns keep their own settings through the real service (TestClient on the BentoML app): the control
group by serving/holdout.py's one rule, logged as control decisions; `max_sends` and `budget` exactly, the rest
given back; priority between campaigns owning one trigger; and, competing with an audience campaign for the same
users, the ledger's contact caps."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pytest
from starlette.testclient import TestClient

from nextbest.campaigns import execution, segments
from nextbest.campaigns.store import CampaignStore, store_path
from nextbest.features.ingest import read_raw
from nextbest.serving import holdout as holdout_rule
from nextbest.serving.config import Trigger, load_config, write_config
from nextbest.serving.ledger import open_ledger
from tests.conftest import copy_home, service_app

BASE_URL = "http://127.0.0.1:3000"
NOW = datetime(2026, 10, 5, 9, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def service(trained, tmp_path_factory):
    """One service over a private copy of the trained home, with three event triggers over every offer."""
    home = copy_home(trained, tmp_path_factory.mktemp("triggers") / "home", fresh_ledger=True)
    config = load_config(home.operator_yaml)
    triggers = [Trigger(name=name, on=on, deadline_minutes=240, offers=config.offer_ids())
                for name, on in (("browsed", "view"), ("searched", "search"), ("carted", "add_to_cart"))]
    write_config(config.model_copy(update={"triggers": [*config.triggers, *triggers]}), home.operator_yaml)
    mp = pytest.MonkeyPatch()
    mp.setenv("NEXTBEST_HOME", str(home.home))
    mp.setattr("nextbest.serving.clock.system_clock", lambda: NOW)
    users = read_raw(home.raw_dir, "users")["user_id"].astype(str).tolist()
    with TestClient(service_app(), base_url=BASE_URL) as client:
        yield home, client, users, CampaignStore(store_path(home.home))
    mp.undo()


def _launch(client, campaign_id: str, spec: dict) -> None:
    r = client.post("/campaigns/create", json={"spec": spec, "actor": "ann", "campaign_id": campaign_id})
    assert r.status_code == 200, r.text
    for command, actor in (("submit", "ann"), ("approve", "bob"), ("start", "bob")):
        r = client.post("/campaigns/command", json={"campaign_id": campaign_id, "command": command, "actor": actor})
        assert r.status_code == 200, r.text


def _fire(client, users: list[str], event: str, minutes_ago: int = 1) -> list[dict]:
    ts = (NOW - timedelta(minutes=minutes_ago)).isoformat()
    r = client.post("/events", json={"events": [{"user_id": u, "type": event, "ts": ts} for u in users]})
    assert r.status_code == 200, r.text
    return r.json()["triggered"]


def _logged(home, name: str) -> list[dict]:
    path = home.log_dir / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_trigger_campaign_holds_out_its_control_group_and_logs_it(service):
    home, client, users, store = service
    offers = load_config(home.operator_yaml).offer_ids()
    _launch(client, "browse", {"name": "browse follow-up", "trigger": "browsed", "control_pct": 50,
                               "offers": [{"offer_id": o} for o in offers]})
    audience = users[:60]
    decided = {d["user_id"]: d for d in _fire(client, audience, "view")}
    assert set(decided) == set(audience)
    holdout = holdout_rule.with_campaign_shares(load_config(home.operator_yaml).holdout, {"browse": 0.5})
    expected = {u: holdout_rule.control_of(u, "browse", holdout, NOW) for u in audience}
    held = [u for u in audience if expected[u]]
    assert 15 <= len(held) <= 45  # about half, by the per-user hash
    for u, d in decided.items():
        scope = expected[u]
        assert d["holdout"] == (scope[0] if scope else None), u
        if scope:
            assert d["actions"] == [] and d["holdout_share"] == scope[1] and d["no_action_propensity"] >= scope[1]
    sent = store.sends("browse")
    assert sent and not {s["user_id"] for s in sent} & set(held)
    assert execution.control_mask(store.get("browse"), audience, load_config(home.operator_yaml).holdout, NOW).sum() \
        == len(held)  # the dry run's and the batches' rule is the service's
    logged = {r["decision_id"]: r for r in _logged(home, "decisions.jsonl")}
    controls = [logged[d["decision_id"]] for d in decided.values() if d["holdout"] == "campaign:browse"]
    assert controls and all(r["campaign_id"] == "browse" and r["actions"] == [] for r in controls)
    assert client.post("/campaigns/command", json={"campaign_id": "browse", "command": "stop",
                                                   "actor": "ann"}).status_code == 200


def test_a_trigger_campaign_stops_at_its_send_limit_then_its_rival_at_its_budget(service):
    home, client, users, store = service
    config = load_config(home.operator_yaml)
    cost = {c.channel: c.cost for c in config.channels}
    dearest = max(cost, key=cost.get)
    offers = [{"offer_id": o} for o in config.offer_ids()]
    _launch(client, "search-high", {"name": "search, first", "trigger": "searched", "priority": 5,
                                    "caps": {"max_sends": 3}, "offers": offers})
    _launch(client, "search-low", {"name": "search, second", "trigger": "searched", "priority": 1,
                                   "channels": [dearest], "caps": {"budget": 2.5 * cost[dearest]}, "offers": offers})
    batch = users[100:160]
    first = _fire(client, batch, "search")
    acted = [d for d in first if d["actions"]]
    back = [d for d in first if any(f["reason"] == "campaign_limit" for f in d["filtered"])]
    assert len(acted) == 3 and len(back) > 0, (len(acted), len(back))
    assert {s["decision_id"] for s in store.sends("search-high")} == {d["decision_id"] for d in acted}
    assert all("max_sends (3)" in f["detail"] for d in back for f in d["filtered"] if f["reason"] == "campaign_limit")
    # Given back: released in the ledger (no counter left for these fresh users) and reported not_sent.
    ledger = open_ledger(home.ledger_backend, home.ledger_path, home.redis_url, home.ledger_identity_path)
    counts = ledger.read([d["user_id"] for d in back]).user_counts
    assert all(not any(counts[d["user_id"]].values()) for d in back)
    not_sent = {r["decision_id"] for r in _logged(home, "outcomes.jsonl") if r["outcome"] == "not_sent"}
    assert {d["decision_id"] for d in back} <= not_sent
    # The same events again (a caller's retry): the same decisions, the given-back ones still without an action.
    again = {d["decision_id"]: d for d in _fire(client, batch, "search")}
    assert set(again) == {d["decision_id"] for d in first}
    assert {i for i, d in again.items() if d["actions"]} == {d["decision_id"] for d in acted}
    # Full: the trigger goes to the next campaign by priority, which stops within its budget (2 sends).
    second = _fire(client, users[160:220], "search", minutes_ago=2)
    low = store.sends("search-low")
    assert len(low) == 2 and sum(s["cost"] for s in low) <= 2.5 * cost[dearest]
    assert {s["channel"] for s in low} == {dearest} and len(store.sends("search-high")) == 3
    assert sum(bool(d["actions"]) for d in second) == 2
    assert _fire(client, users[220:240], "search", minutes_ago=3) == []  # no campaign of the trigger has room left


def test_trigger_and_audience_campaigns_over_the_same_users_keep_the_ledgers_caps(service):
    home, client, users, store = service
    config = load_config(home.operator_yaml)
    path = home.home / "scorecards.parquet"  # the ~100 users with the highest scorecard: both campaigns' users
    segments.export(home.feature_dir, "scorecard > -100000", lambda name: None, path)
    cut = float(pd.read_parquet(path)["scorecard"].sort_values().iloc[-100])
    store.save_segment(segments.Segment("rivals", f"scorecard >= {cut}"))
    rivals = segments.member_ids(home.feature_dir, f"scorecard >= {cut}", lambda name: None)
    offers = [{"offer_id": o} for o in config.offer_ids()]
    _launch(client, "wave", {"name": "audience wave", "audience": "rivals", "offers": offers, "priority": 2})
    run = client.post("/campaigns/run", json={"campaign_id": "wave", "batch": 200})
    assert run.status_code == 200 and run.json()["sends"] > 0, run.text
    _launch(client, "cart", {"name": "cart follow-up", "trigger": "carted", "offers": offers})
    fired = [d for k in (1, 2, 3) for d in _fire(client, rivals, "add_to_cart", minutes_ago=k)]
    assert any(d["actions"] for d in fired)
    # The caps bind across the two campaigns: some of the trigger's decisions are refused by one. (With the default
    # spacing, a rival who had the wave's contact and the operator trigger's has 2 in 168 hours: the campaign's
    # trigger is refused for them all, reason `spacing`.)
    assert any(f["reason"].startswith("cap_") for d in fired for f in d["filtered"])
    assert any(f["reason"] == "spacing" for d in fired for f in d["filtered"])
    caps = config.caps
    counts = open_ledger(home.ledger_backend, home.ledger_path, home.redis_url,
                         home.ledger_identity_path).read(rivals).user_counts
    per_channel_day, per_day = Counter(), Counter()
    for user, keys in counts.items():
        hours = sorted(int(k[2:]) for k, n in keys.items() if k.startswith("h:") for _ in range(n))
        assert all(hours[k + caps.spacing_contacts] - hours[k] >= caps.spacing_hours
                   for k in range(len(hours) - caps.spacing_contacts))  # no 168 hours hold more than 2 contacts
        for key, n in keys.items():
            if key.startswith("h:"):
                continue
            kind, channel, day = key.split(":")  # c:<channel>:<local day> or o:<offer>:<local day>
            if kind == "c":
                per_channel_day[(user, channel, day)] += n
                per_day[(user, date.fromisoformat(day))] += n
    assert per_day and max(per_day.values()) <= caps.per_user_day
    assert max(per_channel_day.values()) <= caps.per_channel_day
    for (user, day) in per_day:  # every 7 local days ending on a day with contacts
        week = sum(per_day.get((user, day - timedelta(days=k)), 0) for k in range(7))
        assert week <= caps.per_user_week, (user, day)


def test_a_trigger_campaign_keeps_its_schedule_and_local_send_hours(service):
    home, client, users, store = service
    offers = [{"offer_id": o} for o in load_config(home.operator_yaml).offer_ids()]
    later = (NOW + timedelta(days=1)).isoformat()
    _launch(client, "browse-later", {"name": "not yet", "trigger": "browsed", "priority": 9, "start": later,
                                     "offers": offers})
    _launch(client, "browse-evening", {"name": "evenings", "trigger": "browsed", "priority": 1, "send_hours": "18-22",
                                       "offers": offers})
    decided = _fire(client, users[500:560], "view")
    sent = store.sends("browse-evening")
    assert sent and store.sends("browse-later") == []  # before its start a campaign owns its trigger but sends nothing
    assert {s["decision_id"] for s in sent} == {d["decision_id"] for d in decided if d["actions"]}
    assert {datetime.fromisoformat(s["send_at"]).hour for s in sent} <= {18, 19, 20, 21}  # the user's local clock
    assert any(f["reason"] == "send_window" for d in decided for f in d["filtered"])
