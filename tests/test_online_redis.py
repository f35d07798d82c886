"""The bulk Redis online load gives exactly what Feast's own writer gives, read through Feast, on a real redis-server."""

from __future__ import annotations

import pandas as pd
import pytest
import redis

from nextbest.features.feature_views import table_path
from nextbest.features.settings import Settings
from nextbest.features.store import feature_store, materialize, newest_rows
from tests.conftest import copy_home, start_redis

pytestmark = pytest.mark.redis
IDS = [f"u{i:04d}" for i in range(200)] + ["ghost", "u0003"]


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory):
    """A redis-server of this module's own (the session's is shared with ledger tests that flush databases)."""
    proc, port = start_redis(tmp_path_factory.mktemp("online-redis"))
    yield port
    proc.terminate()
    proc.wait(timeout=10)


def online(settings: Settings, service: str, stamps: bool = False) -> dict[str, list]:
    """What Feast reads for IDS; `stamps`: with each feature's stored event time (`<feature>__ts`, epoch seconds)."""
    store = feature_store(settings)
    return store.get_online_features(features=store.get_feature_service(service),
                                     entity_rows=[{"user_id": u} for u in IDS]).to_dict(include_event_timestamps=stamps)


def on_redis(home: Settings, port: int, db: int) -> Settings:
    redis.Redis(port=port, db=db).flushdb()
    return home.model_copy(update={"online_store": "redis", "redis_url": f"127.0.0.1:{port},db={db}"})


def test_bulk_redis_load_reads_back_as_feasts_own_write_and_as_sqlite(built, redis_port, tmp_path):
    home = copy_home(built, tmp_path / "home")
    # Plant missing values: a NaN double and a None string in the newest rows (Feast stores both as "no value").
    for table, column, user in (("behaviour", "revenue_all", "u0007"), ("tags", "lifecycle_stage", "u0008")):
        path = table_path(home.feature_dir, table)
        df = pd.read_parquet(path)
        df.loc[(df["user_id"] == user) & (df["event_timestamp"] == df["event_timestamp"].max()), column] = None
        df.to_parquet(path, index=False)
    bulk, feast_own = on_redis(home, redis_port, 1), on_redis(home, redis_port, 2)
    written = materialize(bulk)  # auto: the bulk writer
    assert written == materialize(feast_own, method="feast-write") == materialize(home)
    assert written["profile"] == 200 and set(written) >= {"profile", "behaviour", "channel", "tags", "realtime"}
    for fs in feature_store(home).list_feature_services():
        got = online(bulk, fs.name, stamps=True)
        assert got == online(feast_own, fs.name, stamps=True), fs.name  # values and stored event times
        got = online(bulk, fs.name)
        assert got == online(home, fs.name), fs.name  # the SQLite store of the same tables
        assert all(got[k][200] is None for k in got if k != "user_id")  # the ghost
    got = online(bulk, "decision_v1")
    assert got["revenue_all"][7] is None and got["lifecycle_stage"][8] is None
    newest = newest_rows(home, "behaviour", pd.Timestamp.now(tz="UTC")).set_index("user_id")
    assert got["revenue_all"][9] == pytest.approx(newest.loc["u0009", "revenue_all"])
    # The event time stored is the row's own, in whole seconds (a microsecond column once read as nanoseconds: 1970)
    assert online(bulk, "decision_v1", stamps=True)["revenue_all__ts"][9] == int(newest.loc["u0009", "event_timestamp"].timestamp())
    # One hash per user (Feast's layout), nothing else in the database.
    assert redis.Redis(port=redis_port, db=1).dbsize() == 200


def test_a_reload_overwrites_and_a_later_push_is_read(built, redis_port):
    settings = on_redis(built, redis_port, 3)  # the shared home's tables, read only
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


def test_build_and_materialize_loads_each_slice_while_the_next_is_built(built, redis_port, tmp_path):
    """The overlapped path (each slice of users online as soon as it is written) leaves what build + apply +
    materialize leave: the same values and event times online, every view recorded as materialised; a build that
    fails puts the last good tables back online."""
    from nextbest.features.build import BuildConfig, build_features
    from nextbest.features.store import build_and_materialize, materialized_tables

    settings = on_redis(copy_home(built, tmp_path / "home"), redis_port, 4)
    files: list[tuple[str, str]] = []

    def build(written):
        def seen(name, path):
            files.append((name, path.name))
            written(name, path)
        return build_features(settings, BuildConfig(users_per_pass=70), written=seen)  # 200 users: 3 slices

    rows, users = build_and_materialize(settings, build)
    # every per-user table, the tags and real-time seeds too, went online a slice of users at a time
    assert {(name, "part-00002.parquet") for name in ("behaviour", "tags", "realtime")} <= set(files)
    assert ("tags", "tags.parquet") not in files and ("profile", "profile.parquet") in files
    now = pd.Timestamp.now(tz="UTC")
    assert users == {v: len(newest_rows(settings, v, now)) for v in users} and users["behaviour"] == 200
    assert set(materialized_tables(settings)) == set(users) == {v.name for v in feature_store(settings).list_feature_views()}
    for fs in feature_store(settings).list_feature_services():  # the tables built in one pass, loaded into SQLite
        assert online(settings, fs.name, stamps=True) == online(built, fs.name, stamps=True), fs.name
    before = online(settings, "decision_v1", stamps=True)

    def broken(written):
        def seen(name, path):
            if name == "tags":
                raise RuntimeError("disk full")
            if name == "behaviour":  # other values, so a load that is not undone would show
                df = pd.read_parquet(path)
                df["revenue_all"] += 1.0
                path = tmp_path / path.name
                df.to_parquet(path, index=False)
            written(name, path)
        return build_features(settings, BuildConfig(users_per_pass=70), written=seen)

    with pytest.raises(RuntimeError, match="disk full"):
        build_and_materialize(settings, broken)  # every slice of behaviour went online before the failure
    assert online(settings, "decision_v1", stamps=True) == before
