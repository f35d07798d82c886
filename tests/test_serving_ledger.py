"""The contact ledger, SQLite and a real Redis: caps hold under concurrency, idempotency, fail closed."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nextbest.features.contract import spacing_ok
from nextbest.serving.config import Caps, Channel, Offer, OperatorConfig
from nextbest.serving.ledger import LedgerUnavailable, RedisLedger, Reservation, SQLiteLedger
from nextbest.serving.policy import constraints_for

CFG = OperatorConfig(
    offers=[Offer(offer_id=o, category="any", value=10) for o in ("a", "b", "c")],
    channels=[Channel(channel="email", cost=0.0, daily_capacity=7), Channel(channel="push", cost=0.0)],
    caps=Caps(per_channel_day=2, per_channel_week=3, per_user_day=3, per_offer=2, offer_window_days=7),
)
DAY = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "redis"])
def ledger(request, tmp_path):
    if request.param == "sqlite":
        return SQLiteLedger(tmp_path / "ledger.db")
    url = request.getfixturevalue("redis_url")
    host, port = url.split(":")
    led = RedisLedger(f"{host}:{port},db={1 + abs(hash(tmp_path)) % 14}")
    led._r.flushdb()
    return led


def reserve(user: str, offer: str, channel: str, at: datetime, key: str | None = None) -> Reservation:
    charges, cons = constraints_for(user, CFG, [(offer, channel, at)], "UTC")
    record = {"decision_id": uuid.uuid4().hex, "user_id": user, "actions": [{"offer_id": offer, "channel": channel}]}
    return Reservation(record["decision_id"], user, charges, cons, record, key)


def counter(ledger, user: str, field: str) -> int:
    return ledger.read([user]).user_counts[user].get(field, 0)


def test_caps_are_never_exceeded_under_concurrent_commits(ledger):
    results: list[str] = []
    lock = threading.Lock()

    def worker(seed: int) -> None:
        for k in range(12):
            offer = "abc"[(seed + k) % 3]
            channel = ("email", "push")[k % 2]
            users = ("u1", "u2", "u3")
            out = ledger.commit([reserve(users[(seed * 7 + k) % 3], offer, channel, DAY + timedelta(hours=k % 3))])
            with lock:
                results.append(out[0].status)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert "ok" in results and "refused" in results
    snap = ledger.read(["u1", "u2", "u3"])
    for user, counts in snap.user_counts.items():
        day = {ch: counts.get(f"c:{ch}:2026-06-01", 0) for ch in ("email", "push")}
        assert all(n <= CFG.caps.per_channel_day for n in day.values()), (user, day)
        assert sum(day.values()) <= CFG.caps.per_user_day
        assert all(counts.get(f"o:{o}:2026-06-01", 0) <= CFG.caps.per_offer for o in "abc")
    assert snap.capacity.get("email:2026-06-01", 0) <= 7
    assert results.count("ok") == sum(sum(v for k, v in c.items() if k.startswith("c:")) for c in snap.user_counts.values())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from(["email", "push"]), st.integers(0, 9)), min_size=1, max_size=30))
def test_any_sequence_of_commits_respects_every_cap(tmp_path_factory, steps):
    ledger = SQLiteLedger(tmp_path_factory.mktemp("prop") / "l.db")
    accepted: list[tuple[str, str, int]] = []
    for offer, channel, day in steps:
        status = ledger.commit([reserve("u", offer, channel, DAY + timedelta(days=day))])[0].status
        if status == "ok":
            accepted.append((offer, channel, day))
    for _offer, channel, day in accepted:
        same_day = [a for a in accepted if a[2] == day]
        assert sum(1 for a in same_day if a[1] == channel) <= CFG.caps.per_channel_day
        assert len(same_day) <= CFG.caps.per_user_day
    for start in range(-6, 10):  # every 7-day window
        window = [a for a in accepted if start <= a[2] < start + 7]
        for channel in ("email", "push"):
            assert sum(1 for a in window if a[1] == channel) <= CFG.caps.per_channel_week
        for offer in "abc":
            assert sum(1 for a in window if a[0] == offer) <= CFG.caps.per_offer
    # The first step is always allowed by these caps: the ledger is not simply refusing everything.
    assert accepted[0] == steps[0]


def test_idempotency_key_replays_and_charges_once(ledger):
    first = reserve("u9", "a", "push", DAY, key="k-1")
    assert ledger.commit([first])[0].status == "ok"
    again = reserve("u9", "b", "push", DAY, key="k-1")  # same key, a different fresh decision
    out = ledger.commit([again])[0]
    assert out.status == "replay" and out.record == first.record
    assert ledger.replay("k-1") == first.record
    assert counter(ledger, "u9", "c:push:2026-06-01") == 1


def test_release_gives_the_charge_back_once(ledger):
    r = reserve("u5", "a", "email", DAY)
    ledger.commit([r])
    assert ledger.decision(r.decision_id) == r.record
    assert ledger.release(r.decision_id) and not ledger.release(r.decision_id)
    assert counter(ledger, "u5", "c:email:2026-06-01") == 0


def test_suppressions_keep_their_first_reason(ledger):
    ledger.suppress([("u1", "sms", "complaint", "2026-06-01T00:00:00Z")])
    ledger.suppress([("u1", "sms", "manual", "2026-06-02T00:00:00Z"), ("u1", "*", "regulator", "2026-06-02T00:00:00Z")])
    assert ledger.read(["u1"]).suppressed["u1"] == {"sms": "complaint", "*": "regulator"}


def test_pending_trigger_is_cancelled_and_released(ledger):
    charges, cons = constraints_for("u7", CFG, [("a", "push", DAY)], "UTC")
    r = Reservation("d7", "u7", charges, cons, {"decision_id": "d7", "user_id": "u7", "actions": []},
                    pending=("purchase", DAY.timestamp() + 600))
    ledger.commit([r])
    assert ledger.cancel_pending("u7", "view", DAY.timestamp()) == []
    assert ledger.cancel_pending("u7", "purchase", DAY.timestamp() + 60) == ["d7"]
    assert counter(ledger, "u7", "c:push:2026-06-01") == 0


def test_outcomes_are_recorded_once(ledger):
    assert ledger.record_outcome("d1", "opened", "a", "push") == "first"
    assert ledger.record_outcome("d1", "opened", "a", "push") == "repeat"
    assert ledger.record_outcome("d1", "clicked", "a", "push") == "first"


def test_unreachable_redis_raises_ledger_unavailable():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ledger = RedisLedger(f"127.0.0.1:{port}")
    with pytest.raises(LedgerUnavailable):
        ledger.commit([reserve("u", "a", "push", DAY)])
    with pytest.raises(LedgerUnavailable):
        ledger.read(["u"])


def test_unusable_sqlite_file_raises_ledger_unavailable(tmp_path):
    path = tmp_path / "ledger.db"
    path.mkdir()  # a directory where the database file should be
    with pytest.raises(LedgerUnavailable):
        SQLiteLedger(path)


def _spaced_everywhere(bins: list[int]) -> bool:
    """No 168 consecutive hours hold more than 2 of `bins` (the default spacing), checked contact by contact."""
    return all(spacing_ok([bins[:k] + bins[k + 1:]], [b], CFG.caps.spacing_contacts, CFG.caps.spacing_hours)[0]
               for k, b in enumerate(bins))


def test_spacing_is_rechecked_at_charge_time_also_against_a_later_planned_contact(ledger):
    # Default spacing: no contact when the user has 2 contacts in the last 168 hours. Each commit is planned alone.
    at = [DAY + timedelta(hours=h) for h in (100, 150, 50, 268, 317)]
    status = [ledger.commit([reserve("s", "abc"[k % 3], "email", t)])[0] for k, t in enumerate(at)]
    assert [c.status for c in status] == ["ok", "ok", "refused", "ok", "refused"]
    # 50 h: its own past is empty, but the contact planned for 150 h would then have 2 in the 168 hours before it.
    assert status[2].rule == "spacing" and status[4].rule == "spacing"  # 317 h: 150 and 268 are within 168 hours
    bins = [int(f[2:]) for f, n in ledger.read(["s"]).user_counts["s"].items() if f.startswith("h:") for _ in range(n)]
    assert len(bins) == 3 and _spaced_everywhere(bins)


def test_concurrent_commits_cannot_both_pass_the_spacing_rule(ledger):
    results: list[str] = []
    lock = threading.Lock()

    def worker(seed: int) -> None:
        for k in range(6):  # hours spread over two weeks, in an order that plans earlier contacts after later ones
            out = ledger.commit([reserve("t", "abc"[k % 3], ("email", "push")[seed % 2],
                                         DAY + timedelta(hours=(seed * 53 + k * 97) % 336))])
            with lock:
                results.append(out[0].status)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bins = [int(f[2:]) for f, n in ledger.read(["t"]).user_counts["t"].items() if f.startswith("h:") for _ in range(n)]
    assert results.count("ok") == len(bins) >= 2 and "refused" in results
    assert _spaced_everywhere(bins)
