"""The bulk SQLite online reader gives exactly what Feast's own reader gives, on a real store."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

import pandas as pd
import pytest
from feast import FeatureService

from nextbest.features.online_sqlite import OnlineReader
from nextbest.features.settings import Settings
from nextbest.features.store import feature_store
from tests.conftest import copy_home


def feast_dict(store, service: str | FeatureService, ids: list[str]) -> dict[str, list]:
    fs = store.get_feature_service(service) if isinstance(service, str) else service
    return store.get_online_features(features=fs, entity_rows=[{"user_id": u} for u in ids]).to_dict()


@pytest.fixture
def home(built, tmp_path) -> Settings:
    return copy_home(built, tmp_path / "home")


def test_every_feature_service_matches_feast_for_known_missing_and_repeated_users(built):
    store = feature_store(built)
    ids = ["u0003", "nobody", "u0150", "u0003", "u0199", "u0000"]
    for fs in store.list_feature_services():
        got = OnlineReader(store, fs.name).read(ids).to_dict()
        want = feast_dict(store, fs.name, ids)
        assert got == want, fs.name
        assert all(v is None for k, v in ((k, got[k][1]) for k in got) if k != "user_id")  # the unknown user
    everyone = [f"u{i:04d}" for i in range(200)]
    assert OnlineReader(store, "decision_v1").read(everyone).to_dict() == feast_dict(store, "decision_v1", everyone)


def test_types_are_feasts_types(built):
    store = feature_store(built)
    got = OnlineReader(store, "decision_v1").read(["u0003"]).to_dict()
    want = feast_dict(store, "decision_v1", ["u0003"])
    assert {k: type(v[0]) for k, v in got.items()} == {k: type(v[0]) for k, v in want.items()}
    assert isinstance(got["timezone"][0], str) and isinstance(got["consent_email"][0], bool)
    assert isinstance(got["age"][0], int) and isinstance(got["revenue_all"][0], float)


def test_matches_feast_after_feast_writes_deleted_rows_and_empty_values(home):
    store = feature_store(home)
    # Feast's own writer (a push) stores the realtime view row by row with its own encoding.
    store.push("realtime_push", pd.DataFrame([{
        "user_id": "u0004", "event_timestamp": pd.Timestamp(datetime(2026, 11, 23, 9, tzinfo=UTC)),
        "last_event_type": "add_to_cart", "last_event_at": 1_795_000_000, "events_1h": 3, "cart_open": 1}]))
    reader = OnlineReader(store, "decision_v1")
    path = store.config.online_store.path
    with sqlite3.connect(path) as c:
        behaviour, profile = f"{store.config.project}_behaviour", f"{store.config.project}_profile"
        # One user loses a double row and a string row; another has an empty value (Feast's "no value").
        first = c.execute(f'SELECT entity_key FROM "{behaviour}" ORDER BY entity_key LIMIT 1 OFFSET 5').fetchone()[0]
        c.execute(f'DELETE FROM "{behaviour}" WHERE entity_key = ? AND feature_name = ?', (first, "revenue_all"))
        c.execute(f'DELETE FROM "{profile}" WHERE entity_key = ? AND feature_name = ?', (first, "timezone"))
        second = c.execute(f'SELECT entity_key FROM "{behaviour}" ORDER BY entity_key LIMIT 1 OFFSET 9').fetchone()[0]
        c.execute(f'UPDATE "{behaviour}" SET value = x\'\' WHERE entity_key = ? AND feature_name = ?', (second, "events_7d"))
    ids = [f"u{i:04d}" for i in range(200)] + ["ghost"]
    got = reader.read(ids).to_dict()
    want = feast_dict(store, "decision_v1", ids)
    assert got == want
    assert got["cart_open"][4] == 1 and got["last_event_type"][4] == "add_to_cart" and got["events_1h"][4] == 3
    assert sum(v is None for v in got["revenue_all"]) == 2 and sum(v is None for v in got["timezone"]) == 2  # + the ghost
    assert None in got["events_7d"]


def test_rows_of_a_feature_the_view_no_longer_has_are_ignored(home):
    # A renamed or dropped feature leaves its rows in the table: materialising upserts and never deletes.
    store = feature_store(home)
    behaviour = f"{store.config.project}_behaviour"
    with sqlite3.connect(store.config.online_store.path) as c:
        c.execute(f'INSERT INTO "{behaviour}" (entity_key, feature_name, value, event_ts, created_ts) '
                  f"SELECT entity_key, 'opens_hourly_total_90d', value, event_ts, created_ts FROM \"{behaviour}\" "
                  f"WHERE feature_name = 'revenue_all'")
    ids = [f"u{i:04d}" for i in range(50)]
    got = OnlineReader(store, "decision_v1").read(ids).to_dict()
    assert "opens_hourly_total_90d" not in got
    assert got == feast_dict(store, "decision_v1", ids)


def test_a_projection_of_part_of_a_view_reads_only_its_features(home):
    store = feature_store(home)
    profile = store.get_feature_view("profile")
    tags = store.get_feature_view("tags")
    partial = FeatureService(name="partial_v1", features=[profile[["timezone", "age"]], tags[["value_tier"]]])
    store.apply([partial])
    ids = ["u0010", "u0011", "nobody"]
    got = OnlineReader(store, "partial_v1").read(ids).to_dict()
    assert list(got) == ["user_id", "timezone", "age", "value_tier"]
    assert got == feast_dict(store, "partial_v1", ids)


def test_empty_request_and_non_sqlite_store(built):
    store = feature_store(built)
    reader = OnlineReader(store, "decision_v1")
    empty = reader.read([])
    assert empty.to_dict() == {"user_id": [], **{n: [] for n in reader.names}}
    redis = feature_store(built.model_copy(update={"online_store": "redis"}))
    with pytest.raises(ValueError, match="SQLite"):
        OnlineReader(redis, "decision_v1")


def test_batch_read_takes_the_materialised_files_and_still_matches_feast(home):
    """`read_batch` reads each view's rows from the feature table it was materialised from, checked per user against
    the online event time: a pushed view, a user rewritten online since, an unknown user are read online."""
    import numpy as np

    from nextbest.features.online_sqlite import write_view
    from nextbest.features.store import materialized_tables, read_table

    store = feature_store(home)
    tables = materialized_tables(home)
    assert set(tables) == {v.name for v in store.list_feature_views()}  # materialise recorded every file it read
    store.push("realtime_push", pd.DataFrame([{
        "user_id": "u0004", "event_timestamp": pd.Timestamp(datetime(2026, 11, 23, 9, tzinfo=UTC)),
        "last_event_type": "add_to_cart", "last_event_at": 1_795_000_000, "events_1h": 3, "cart_open": 1}]))
    # u0007's behaviour rewritten online with another value at another time: the file no longer holds it.
    newer = read_table(home, "behaviour").query("user_id == 'u0007'").tail(1).copy()
    newer["event_timestamp"] += pd.Timedelta(days=3)
    newer["revenue_all"] = 12345.5
    write_view(store, store.get_feature_view("behaviour"), newer)
    reader = OnlineReader(store, "decision_v1")
    asked: list[list[str]] = []
    read = reader.read
    reader.read = lambda ids, selects=None: asked.append(list(ids)) or read(ids, selects)
    ids = [f"u{i:04d}" for i in range(200)] + ["ghost", "u0007"]
    got = reader.read_batch(ids, tables).to_dict()
    assert got == feast_dict(store, "decision_v1", ids)
    assert got["revenue_all"][7] == got["revenue_all"][-1] == 12345.5 and got["cart_open"][4] == 1
    # Read online in full: only the rewritten user (twice, as asked) and the unknown one; the rest from the files.
    assert asked[0] == ["u0007", "ghost", "u0007"] and set(asked[1]) == set(ids) - {"u0007", "ghost"}
    assert np.isnan(reader.read_batch(["ghost"], tables).doubles).all()


def test_batch_read_of_a_file_built_again_since_materialising_reads_online(home):
    import os

    from nextbest.features.store import materialized_tables

    store = feature_store(home)
    path = materialized_tables(home)["behaviour"]
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1))  # e.g. `features build` without materialise
    tables = materialized_tables(home)
    assert "behaviour" not in tables and "profile" in tables
    ids = [f"u{i:04d}" for i in range(0, 200, 3)]
    assert OnlineReader(store, "decision_v1").read_batch(ids, tables).to_dict() == feast_dict(store, "decision_v1", ids)
