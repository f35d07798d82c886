"""The decision runtime on a real Feast store, real ledgers and real (tiny) LightGBM models."""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from nextbest.features.settings import Settings
from nextbest.serving.ledger import RedisLedger
from nextbest.serving.runtime import ConflictError, NotFoundError, Runtime
from nextbest.serving.schemas import DecideRequest, EventsRequest, FeedbackRequest, ProfileRequest
from tests.conftest import copy_home

NOW = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
CLOCK = datetime(2026, 11, 23, 14, 6, tzinfo=UTC)  # the server clock in these tests: just after every time they send
CHANNELS = ["push", "sms", "email", "inapp", "wechat"]


@dataclass(frozen=True)
class Champion:
    name: str
    version: str
    model: object


class LightGBMScorer:
    """A real LightGBM model behind the registry's Scorer interface (channel and hour as plain codes)."""

    def __init__(self, feature_service: str, columns: list[str], booster: lgb.Booster):
        self.feature_service, self.columns, self.booster = feature_service, columns, booster

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        x = frame[self.columns].copy()
        if "channel" in x:
            x["channel"] = x["channel"].map({c: i for i, c in enumerate(CHANNELS)}).astype(float)
        return self.booster.predict(x.astype(float).to_numpy())


def train(kind: str, favourite: str, seed: int = 0) -> LightGBMScorer:
    """A model that learned `favourite` channel converts (or opens) best, and evenings open best."""
    rng = np.random.default_rng(seed)
    n = 3000
    channel = rng.integers(0, len(CHANNELS), n)
    hour = rng.integers(0, 24, n)
    p = 0.02 + 0.3 * (channel == CHANNELS.index(favourite)) + 0.1 * (hour >= 18)
    y = rng.random(n) < p
    columns = ["channel", "local_hour"] + (["offer_value"] if kind == "conversion" else [])
    x = np.column_stack([channel, hour] + ([rng.uniform(5, 50, n)] if kind == "conversion" else []))
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_leaves": 7, "seed": seed},
                        lgb.Dataset(x, y.astype(int)), num_boost_round=20)
    return LightGBMScorer(f"{kind}_v1", columns, booster)


def champions(favourite: str, version: str) -> dict[str, Champion]:
    return {kind: Champion(f"nextbest-{kind}", version, train(kind, favourite)) for kind in ("conversion", "send_time")}


@pytest.fixture(autouse=True)
def server_clock(monkeypatch):
    """The service's clock stands still at CLOCK: caller times are checked against it (serving/clock.py)."""
    monkeypatch.setattr("nextbest.serving.clock.system_clock", lambda: CLOCK)


@pytest.fixture(scope="module")
def models_v1():
    return champions("email", "1")


@pytest.fixture(scope="module")
def models_v2():
    return champions("push", "2")


@pytest.fixture
def home(built, tmp_path) -> Settings:
    """A private copy of the session's Feast store, so events and the ledger do not leak between tests."""
    return copy_home(built, tmp_path / "home")


def consenting_user(settings: Settings, channel: str = "email") -> str:
    users = pd.read_parquet(settings.feature_dir / "profile.parquet")
    row = users[users[f"consent_{channel}"].astype(bool) & ~users["user_id"].isin(["u0000", "u0001", "u0002"])]
    return str(row["user_id"].iloc[0])


def test_models_in_force_drive_the_decision(home, models_v1):
    rt = Runtime(home, loader=lambda s: models_v1)
    user = consenting_user(home)
    d = rt.decide(DecideRequest(user_id=user, now=NOW, context={"channels": ["email", "push", "inapp"]}, explain=True))
    assert d["model_versions"] == {"conversion": "nextbest-conversion/1", "send_time": "nextbest-send_time/1"}
    assert not d["degraded"]
    action = d["actions"][0]
    assert action["channel"] == "email"  # the model learned email converts best
    send_at = datetime.fromisoformat(action["send_at"])
    assert send_at.hour >= 18 and send_at.hour < 23  # evening opens best; 23-7 is email's quiet time
    assert 0 < action["propensity"] <= 1
    assert d["explanation"]["candidates"]


def test_no_models_means_rule_based_and_flagged(home):
    rt = Runtime(home, loader=lambda s: {})
    d = rt.decide(DecideRequest(user_id=consenting_user(home), now=NOW))
    assert d["degraded"] and set(d["degraded_reasons"]) == {"rule_based_conversion", "rule_based_send_time"}
    assert d["model_versions"] == {}


def test_online_store_down_means_population_defaults_and_consent_fails_closed(home):
    rt = Runtime(home, loader=lambda s: {})
    online = home.feast_dir / "online.db"
    online.unlink()
    online.mkdir()  # the store's file is gone and cannot be recreated
    d = rt.decide(DecideRequest(user_id="anyone", now=NOW))
    assert "features_unavailable" in d["degraded_reasons"]
    refused = {r["channel"]: r["reason"] for r in d["filtered"] if r["channel"]}
    assert refused["email"] == refused["sms"] == refused["push"] == "consent"  # consent is never guessed
    assert all(a["channel"] == "inapp" for a in d["actions"])


def test_registry_unreachable_keeps_the_last_good_models(home, models_v1):
    state = {"up": True}

    def loader(settings):
        if not state["up"]:
            raise ConnectionError("registry unreachable")
        return models_v1

    rt = Runtime(home, loader=loader)
    state["up"] = False
    rt.models.refresh()
    assert rt.models.current.versions()["conversion"] == "nextbest-conversion/1"
    assert "unreachable" in rt.models.error
    d = rt.decide(DecideRequest(user_id=consenting_user(home), now=NOW))
    assert not d["degraded"]


def test_hot_swap_drops_no_request(home, models_v1, models_v2):
    current = {"m": models_v1}
    rt = Runtime(home, loader=lambda s: current["m"])
    users = pd.read_parquet(home.feature_dir / "profile.parquet")["user_id"].astype(str).tolist()[3:40]
    seen: list[list[str]] = [[] for _ in range(3)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def hammer(k: int) -> None:
        i = 0
        while not stop.is_set() or i < 5:
            try:
                d = rt.decide(DecideRequest(user_id=users[(i * 3 + k) % len(users)], now=NOW, dry_run=True))
                seen[k].append(d["model_versions"]["conversion"])
            except BaseException as err:  # noqa: BLE001 - any failure is what the test looks for
                errors.append(err)
            i += 1

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    while min(len(s) for s in seen) < 5:
        pass
    current["m"] = models_v2
    rt.models.refresh()
    n_at_swap = [len(s) for s in seen]
    while min(len(s) - n for s, n in zip(seen, n_at_swap, strict=True)) < 5:
        pass
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    for s in seen:
        switched = s.index("nextbest-conversion/2")
        assert set(s[:switched]) == {"nextbest-conversion/1"} and set(s[switched:]) == {"nextbest-conversion/2"}


def test_idempotency_replays_the_same_decision_and_charges_once(home, models_v1):
    rt = Runtime(home, loader=lambda s: models_v1)
    user = consenting_user(home)
    first = rt.decide(DecideRequest(user_id=user, now=NOW, idempotency_key="camp-1:" + user))
    again = rt.decide(DecideRequest(user_id=user, now=NOW, idempotency_key="camp-1:" + user))
    assert again["decision_id"] == first["decision_id"] and again["replayed"] and again["actions"] == first["actions"]
    counts = rt.ledger.read([user]).user_counts[user]
    assert sum(v for k, v in counts.items() if k.startswith("c:")) == len(first["actions"]) == 1
    with pytest.raises(ConflictError):
        rt.decide(DecideRequest(user_id="u0100", now=NOW, idempotency_key="camp-1:" + user))
    lines = (home.log_dir / "decisions.jsonl").read_text().splitlines()
    assert len(lines) == 1 and user not in lines[0]  # logged once, pseudonymised


def test_caps_hold_when_many_requests_race_for_one_user(home, models_v1):
    rt = Runtime(home, loader=lambda s: models_v1)
    user = consenting_user(home)
    out: list[dict] = []

    def worker() -> None:
        for _ in range(6):
            out.append(rt.decide(DecideRequest(user_id=user, now=NOW, n_actions=2)))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    caps = rt.config.current(0).caps
    sent = [a for d in out for a in d["actions"]]
    per_day: dict[tuple, int] = {}
    for a in sent:
        key = (a["channel"], a["send_at"][:10])
        per_day[key] = per_day.get(key, 0) + 1
    assert sent and all(n <= caps.per_channel_day for n in per_day.values())
    days = {a["send_at"][:10] for a in sent}
    assert all(sum(1 for a in sent if a["send_at"][:10] == day) <= caps.per_user_day for day in days)
    assert len({a["offer_id"] for a in sent}) == len(sent)  # per-offer cap 1 in 7 days


def test_concurrent_single_decisions_share_planner_calls_and_keep_their_own_answers(home, models_v1):
    rt = Runtime(home, loader=lambda s: models_v1)
    calls: list[int] = []
    run = rt._combiner.run
    rt._combiner.run = lambda jobs: calls.append(len(jobs)) or run(jobs)
    users = read_table_ids(home)[:40]
    answers: dict[str, object] = {}
    start = threading.Barrier(8)

    def worker(k: int) -> None:
        start.wait()
        for user in users[k::8] + (["nobody-knows-me"] if k == 3 else []):
            try:
                answers[user] = rt.decide(DecideRequest(user_id=user, now=NOW, dry_run=True, explain=True))
            except NotFoundError as err:
                answers[user] = err

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert isinstance(answers.pop("nobody-knows-me"), NotFoundError)  # only the caller who erred gets the error
    assert sorted(answers) == sorted(users) and all(answers[u]["user_id"] == u for u in users)
    assert max(calls) > 1  # requests that arrived together were planned together
    alone = Runtime(home, loader=lambda s: models_v1)
    for u in users[:10]:  # every candidate scored as when deciding alone (the pick itself may explore)
        mine = alone.decide(DecideRequest(user_id=u, now=NOW, dry_run=True, explain=True))
        assert mine["explanation"] == answers[u]["explanation"] and mine["filtered"] == answers[u]["filtered"]


def read_table_ids(settings: Settings) -> list[str]:
    return pd.read_parquet(settings.feature_dir / "profile.parquet")["user_id"].astype(str).tolist()


def test_unreachable_ledger_means_no_contact_flagged(home, models_v1):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rt = Runtime(home, loader=lambda s: models_v1, ledger=RedisLedger(f"127.0.0.1:{port}"))
    d = rt.decide(DecideRequest(user_id=consenting_user(home), now=NOW))
    assert d["actions"] == [] and d["degraded"] and d["degraded_reasons"] == ["ledger_unavailable"]
    assert d["filtered"][0]["reason"] == "ledger_unavailable"
    assert not rt.ready()[0]


def test_unknown_user_is_rejected_and_nothing_is_written(home):
    rt = Runtime(home, loader=lambda s: {})
    with pytest.raises(NotFoundError, match="nobody"):
        rt.decide(DecideRequest(user_id="nobody", now=NOW))
    assert not (home.log_dir / "decisions.jsonl").exists()


def test_cart_trigger_waits_and_a_purchase_cancels_it(home, models_v1):
    rt = Runtime(home, loader=lambda s: models_v1)
    user = consenting_user(home, "push")
    ts = datetime(2026, 11, 23, 14, 0, tzinfo=UTC)
    out = rt.events(EventsRequest(events=[{"user_id": user, "type": "add_to_cart", "ts": ts.isoformat()}]))
    assert out["accepted"] == 1 and not out["degraded"]
    [decision] = out["triggered"]
    [action] = decision["actions"]
    assert action["offer_id"] == "payment_reminder"  # eligible because the push made cart_open = 1
    send_at = datetime.fromisoformat(action["send_at"])
    assert ts + timedelta(minutes=10) <= send_at <= ts + timedelta(minutes=180)
    profile = rt.profile(ProfileRequest(user_id=user, now=ts))
    assert profile["features"]["cart_open"] == 1 and profile["features"]["last_event_type"] == "add_to_cart"
    assert sum(v["today"] for v in profile["contacts"].values()) == 1
    later = rt.events(EventsRequest(events=[{"user_id": user, "type": "purchase", "ts": (ts + timedelta(minutes=5)).isoformat()}]))
    assert later["cancelled"] == [decision["decision_id"]]
    assert rt.profile(ProfileRequest(user_id=user))["features"]["cart_open"] == 0
    replay = rt.events(EventsRequest(events=[{"user_id": user, "type": "add_to_cart", "ts": ts.isoformat()}]))
    assert replay["triggered"][0]["decision_id"] == decision["decision_id"]  # the same event twice decides once


def test_complaint_suppresses_the_channel_and_is_logged(home, models_v1):
    rt = Runtime(home, loader=lambda s: models_v1)
    user = consenting_user(home)
    d = rt.decide(DecideRequest(user_id=user, now=NOW, context={"channels": ["email"]}))
    [action] = d["actions"]
    out = rt.feedback(FeedbackRequest(decision_id=d["decision_id"], outcome="complained"))
    assert out == {"recorded": True, "suppressed": "email", "released": False}
    assert not rt.feedback(FeedbackRequest(decision_id=d["decision_id"], outcome="complained"))["recorded"]
    rt.clock = lambda: NOW + timedelta(days=3)
    nxt = rt.decide(DecideRequest(user_id=user, now=NOW + timedelta(days=3), context={"channels": ["email"]}))
    assert nxt["actions"] == []
    assert {"reason": "suppressed", "offer_id": None, "channel": "email", "detail": "complaint"} in nxt["filtered"]
    assert rt.profile(ProfileRequest(user_id=user))["suppressions"] == {"email": "complaint"}
    [logged] = [json.loads(x) for x in (home.log_dir / "outcomes.jsonl").read_text().splitlines()]
    assert logged["outcome"] == "complained" and logged["user_id"] != user and logged["propensity"] == action["propensity"]
    with pytest.raises(NotFoundError):
        rt.feedback(FeedbackRequest(decision_id="nope", outcome="opened"))


def test_raw_suppressions_are_honoured(home):
    rt = Runtime(home, loader=lambda s: {})
    d = rt.decide(DecideRequest(user_id="u0001", now=NOW))  # make_raw suppresses u0001 on every channel ("*")
    suppressed = {r["channel"]: r["detail"] for r in d["filtered"] if r["reason"] == "suppressed"}
    assert suppressed == {c: "regulator" for c in CHANNELS}
    assert d["actions"] == []


@pytest.mark.parametrize("n_actions", [1, 2])
def test_a_batch_decides_what_single_requests_decide(home, models_v1, n_actions):
    from nextbest.serving.schemas import BatchDecideRequest

    users = [f"u{i:04d}" for i in range(0, 120)]
    ctx = {"channels": ["email", "push", "inapp", "sms"]}
    single = Runtime(home, loader=lambda s: models_v1, rng=np.random.default_rng(11))
    one_by_one = [single.decide(DecideRequest(user_id=u, now=NOW, context=ctx, n_actions=n_actions, dry_run=True, explain=True))
                  for u in users]
    batch = Runtime(home, loader=lambda s: models_v1, rng=np.random.default_rng(11))
    together = batch.decide_batch(BatchDecideRequest(user_ids=users, now=NOW, context=ctx, n_actions=n_actions,
                                                     dry_run=True, explain=True))
    strip = [{k: v for k, v in d.items() if k != "decision_id"} for d in together]
    assert strip == [{k: v for k, v in d.items() if k != "decision_id"} for d in one_by_one]
    assert any(len(d["actions"]) == n_actions for d in together) and any(d["filtered"] for d in together)


def test_a_batch_commit_charges_the_caps_like_single_commits(home, models_v1):
    from nextbest.serving.schemas import BatchDecideRequest

    users = [f"u{i:04d}" for i in range(3, 63)]
    rt = Runtime(home, loader=lambda s: models_v1, rng=np.random.default_rng(2))
    first = rt.decide_batch(BatchDecideRequest(user_ids=users, now=NOW, n_actions=2, idempotency_key="wave-1"))
    again = rt.decide_batch(BatchDecideRequest(user_ids=users, now=NOW, n_actions=2, idempotency_key="wave-1"))
    assert [d["decision_id"] for d in again] == [d["decision_id"] for d in first] and all(d["replayed"] for d in again)
    counts = rt.ledger.read(users).user_counts
    for d in first:
        charged = sum(v for k, v in counts[d["user_id"]].items() if k.startswith("c:"))
        assert charged == len(d["actions"])
    later = rt.decide_batch(BatchDecideRequest(user_ids=users, now=NOW + timedelta(minutes=5), n_actions=2))
    caps = rt.config.current(0).caps
    per_channel_day: dict[tuple, int] = {}
    per_user_day: dict[tuple, int] = {}
    for d in first + later:  # both waves together never exceed a cap
        for a in d["actions"]:
            day = a["send_at"][:10]
            per_channel_day[(d["user_id"], a["channel"], day)] = per_channel_day.get((d["user_id"], a["channel"], day), 0) + 1
            per_user_day[(d["user_id"], day)] = per_user_day.get((d["user_id"], day), 0) + 1
    assert max(per_channel_day.values()) <= caps.per_channel_day and max(per_user_day.values()) <= caps.per_user_day
    assert any(any(r["reason"].startswith("cap_") for r in d["filtered"]) for d in later)


def test_the_feast_registry_is_reread_only_when_its_file_changes(home):
    from nextbest.features.store import apply

    rt = Runtime(home, loader=lambda s: {})
    before = rt.decide(DecideRequest(user_id=consenting_user(home), now=NOW, dry_run=True))
    assert not rt.features.refresh()  # unchanged: no reload on any path
    assert rt.features.store.config.registry.cache_ttl_seconds == 0  # Feast itself never reloads on a request
    apply(home)  # a new registry file (the lead re-applies definitions)
    assert rt.features.refresh()
    after = rt.decide(DecideRequest(user_id=consenting_user(home), now=NOW, dry_run=True))
    assert after["filtered"] == before["filtered"] and not rt.features.refresh()


def test_spacing_refuses_the_third_contact_in_a_week_and_the_log_carries_the_reason(home, models_v1):
    # Caps alone (2 a day, 3 a week, one per channel a day) let a third contact go out tomorrow on in-app; the
    # default spacing (no contact after 2 in the last 168 hours) refuses it, and the decision log carries the reason
    # (its refused pairs are what off-policy evaluation takes as infeasible).
    from nextbest.serving.config import load_config, write_config

    users = pd.read_parquet(home.feature_dir / "profile.parquet")
    many = users[users[["consent_email", "consent_push"]].astype(bool).all(axis=1)]  # in-app needs no consent
    user = str(many["user_id"].iloc[0])
    context = {"channels": ["email", "push", "inapp"]}
    rt = Runtime(home, loader=lambda s: models_v1)
    out = [rt.decide(DecideRequest(user_id=user, now=NOW + timedelta(minutes=k), context=context)) for k in range(3)]
    assert [len(d["actions"]) for d in out] == [1, 1, 0]
    refused = {r["channel"]: r["reason"] for r in out[2]["filtered"] if r["offer_id"] is None}
    assert "spacing" in refused.values()
    logged = json.loads((home.log_dir / "decisions.jsonl").read_text().splitlines()[-1])
    assert {(r[0], r[2]) for r in logged["reasons"] if r[1] is None} >= {("spacing", c) for c, why in refused.items()
                                                                        if why == "spacing"}
    path = home.home / "operator.yaml"  # the same world without spacing: the third contact goes out
    config = load_config(path)
    write_config(config.model_copy(update={"caps": config.caps.model_copy(update={"spacing_contacts": 0})}), path)
    third = Runtime(home, loader=lambda s: models_v1).decide(DecideRequest(user_id=user, now=NOW + timedelta(minutes=3),
                                                                           context=context))
    assert [a["channel"] for a in third["actions"]] == [c for c, why in refused.items() if why == "spacing"]
