"""The bulk Redis online load gives exactly what Feast's own writer gives, read through Feast, on a real redis-server."""

from __future__ import annotations

import pandas as pd
import pytest
import redis

from nextbest.features.settings import Settings
from nextbest.features.store import feature_store, materialize, newest_rows
from tests.conftest import start_redis

pytestmark = pytest.mark.redis
IDS = [f"u{i:04d}" for i in range(200)] + ["ghost", "u0003"]


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory):
    """A redis-server of this module's own (the session's is shared with ledger tests that flush databases)."""
    proc, port = start_redis(tmp_path_factory.mktemp("online-redis"))
    yield port
    proc.terminate()
    proc.wait(timeout=10)


def online(settings: Settings, service: str) -> dict[str, list]:
    store = feature_store(settings)
    return store.get_online_features(features=store.get_feature_service(service),
                                     entity_rows=[{"user_id": u} for u in IDS]).to_dict()


def on_redis(built: Settings, port: int, db: int) -> Settings:
    redis.Redis(port=port, db=db).flushdb()
    return built.model_copy(update={"online_store": "redis", "redis_url": f"127.0.0.1:{port},db={db}"})


def test_bulk_redis_load_reads_back_as_feasts_own_write_and_as_sqlite(built, redis_port):
    bulk, feast_own = on_redis(built, redis_port, 1), on_redis(built, redis_port, 2)
    written = materialize(bulk)  # auto: the bulk writer
    assert written == materialize(feast_own, method="feast-write")
    assert written["profile"] == 200 and set(written) >= {"profile", "behaviour", "channel", "tags", "realtime"}
    for fs in feature_store(built).list_feature_services():
        got = online(bulk, fs.name)
        assert got == online(feast_own, fs.name), fs.name
        assert got == online(built, fs.name), fs.name  # the SQLite store of the same tables
        assert all(got[k][200] is None for k in got if k != "user_id")  # the ghost
    got = online(bulk, "decision_v1")
    assert any(v is None for v in got["days_since_contact_email"][:200])  # a NaN in the table: Feast's "no value"
    newest = newest_rows(built, "behaviour", pd.Timestamp.now(tz="UTC")).set_index("user_id")
    assert got["revenue_all"][7] == pytest.approx(newest.loc["u0007", "revenue_all"])
    # One hash per user (Feast's layout): 200 users in the behaviour table, nothing else in the database.
    assert redis.Redis(port=redis_port, db=1).dbsize() == len(set(IDS) - {"ghost"})


def test_a_reload_overwrites_and_a_later_push_is_read(built, redis_port):
    settings = on_redis(built, redis_port, 3)
    materialize(settings)
    materialize(settings)  # idempotent: the same answer, no duplicate keys
    assert online(settings, "decision_v1") == online(built, "decision_v1")
    store = feature_store(settings)
    store.push("realtime_push", pd.DataFrame([{
        "user_id": "u0004", "event_timestamp": pd.Timestamp.now(tz="UTC").floor("s"),
        "last_event_type": "add_to_cart", "last_event_at": 1_795_000_000, "events_1h": 3, "cart_open": 1}]))
    got = online(settings, "decision_v1")
    assert got["cart_open"][4] == 1 and got["events_1h"][4] == 3 and got["last_event_type"][4] == "add_to_cart"
    assert got["revenue_all"] == online(built, "decision_v1")["revenue_all"]  # the other views untouched
