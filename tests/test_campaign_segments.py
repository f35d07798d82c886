"""Segments: the rule language compiled to DuckDB means what serving's eligibility check means; point in time;
references to other segments; and no way to make the language run anything."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nextbest.campaigns import segments
from nextbest.campaigns.segments import SegmentError
from nextbest.campaigns.store import CampaignStore

T0 = pd.Timestamp("2026-01-01", tz="UTC")
T1 = pd.Timestamp("2026-02-01", tz="UTC")


def _tables(n: int = 60, seed: int = 0) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    ids = [f"u{i:03d}" for i in range(n)]
    profile = pd.DataFrame({
        "user_id": ids, "event_timestamp": [T0 - pd.Timedelta(days=int(d)) for d in rng.integers(1, 300, n)],
        "country": rng.choice(["de", "fr", "3", None], n), "age": rng.integers(18, 80, n).astype(float),
        "consent_email": rng.random(n) < 0.5})
    profile.loc[::7, "age"] = np.nan
    profile.loc[n - 1, "event_timestamp"] = T1 + pd.Timedelta(days=3)  # signs up after both snapshots
    tags = pd.concat([pd.DataFrame({"user_id": ids, "event_timestamp": t,
                                    "lifecycle_stage": rng.choice(["lead", "customer", "intent_lead"], n),
                                    "recency_days": rng.integers(0, 90, n).astype(float),
                                    "value_tier": rng.integers(1, 4, n)}) for t in (T0, T1)])
    return {"profile": profile, "tags": tags.reset_index(drop=True)}


def _write(tables: dict[str, pd.DataFrame], folder) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        df.to_parquet(folder / f"{name}.parquet", index=False)


def _latest(tables: dict[str, pd.DataFrame]) -> dict[str, np.ndarray]:
    """Each user's latest row of every table, as the online store would serve it (object columns like Feast's)."""
    tags = tables["tags"].sort_values("event_timestamp").groupby("user_id").last().reset_index()
    users = tables["profile"].merge(tags.drop(columns="event_timestamp"), on="user_id", how="left")
    return {c: users[c].to_numpy() for c in users.columns if c != "event_timestamp"}


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    folder = tmp_path_factory.mktemp("features")
    frames = _tables()
    _write(frames, folder)
    return folder, frames


RULES = [
    "lifecycle_stage in [customer]", "lifecycle_stage not in [lead, customer]", "age >= 40", "age != 30",
    "country == de", "country != de", "country in [3, fr]", "country not in [de]", "consent_email == True",
    "recency_days < 30 and value_tier >= 2", "value_tier in [1, 3]", "value_tier not in [2]", "age > 40 and country == fr",
    "lifecycle_stage >= intent_lead", "age == abc",
]


@pytest.mark.parametrize("rule", RULES)
def test_offline_sql_and_online_matching_agree(tables, rule):
    folder, frames = tables
    users = _latest(frames)
    online = set(users["user_id"][segments.online_mask(rule, users, lambda n: None)])
    assert set(segments.member_ids(folder, rule, lambda n: None)) == online
    assert segments.count(folder, rule, lambda n: None) == len(online)


_CLAUSE = st.one_of(
    st.builds(lambda op, v: f"age {op} {v}", st.sampled_from(["==", "!=", ">=", "<=", ">", "<"]), st.integers(10, 90)),
    st.builds(lambda op, vs: f"lifecycle_stage {op} [{', '.join(vs)}]", st.sampled_from(["in", "not in"]),
              st.lists(st.sampled_from(["lead", "customer", "intent_lead", "x"]), min_size=1, max_size=3)),
    st.builds(lambda op, v: f"country {op} {v}", st.sampled_from(["==", "!=", ">", "<"]), st.sampled_from(["de", "fr", "3", "a"])),
    st.builds(lambda op, v: f"value_tier {op} {v}", st.sampled_from(["==", "!=", ">=", "<"]), st.integers(0, 4)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_CLAUSE, min_size=1, max_size=3))
def test_any_generated_rule_means_the_same_offline_and_online(tables, clauses):
    folder, frames = tables
    rule = " and ".join(clauses)
    users = _latest(frames)
    online = set(users["user_id"][segments.online_mask(rule, users, lambda n: None)])
    assert set(segments.member_ids(folder, rule, lambda n: None)) == online


def test_point_in_time_reads_the_features_as_of_the_date_and_only_users_signed_up_by_then(tables):
    folder, frames = tables
    tags = frames["tags"]
    mid = datetime(2026, 1, 15, tzinfo=UTC)
    at_t0 = set(tags[(tags.event_timestamp == T0) & (tags.lifecycle_stage == "customer")].user_id)
    at_t1 = set(tags[(tags.event_timestamp == T1) & (tags.lifecycle_stage == "customer")].user_id)
    late = frames["profile"].user_id.iloc[-1]
    assert at_t0 != at_t1  # the two snapshots differ, so the date matters
    assert set(segments.member_ids(folder, "lifecycle_stage in [customer]", lambda n: None, mid)) == at_t0 - {late}
    assert set(segments.member_ids(folder, "lifecycle_stage in [customer]", lambda n: None)) == at_t1
    before_all = datetime(2025, 1, 1, tzinfo=UTC)
    assert segments.count(folder, "lifecycle_stage in [customer]", lambda n: None, before_all) == 0


def test_segments_refer_to_segments_for_or_and_not_and_cycles_are_refused(tables, tmp_path):
    folder, frames = tables
    store = CampaignStore(tmp_path / "campaigns.db")
    columns = set(segments.table_columns(folder))
    store.save_segment(segments.Segment("customers", "lifecycle_stage in [customer]"), columns)
    store.save_segment(segments.Segment("old", "age >= 60"), columns)
    store.save_segment(segments.Segment("either", "segment in [customers, old]"), columns)
    store.save_segment(segments.Segment("young_non_customers", "segment not in [customers] and age < 30"), columns)
    users = _latest(frames)
    expect_either = set(users["user_id"][(users["lifecycle_stage"] == "customer") | (users["age"] >= 60)])
    assert set(segments.member_ids(folder, "segment == either", store.segment_rule)) == expect_either
    got = set(segments.member_ids(folder, store.segment("young_non_customers").rule, store.segment_rule))
    assert got == set(users["user_id"][(users["lifecycle_stage"] != "customer") & (users["age"] < 30)])
    with pytest.raises(SegmentError, match="refers back to itself"):
        store.save_segment(segments.Segment("customers", "segment in [either]"), columns, replace=True)
    with pytest.raises(SegmentError, match="not saved"):
        store.save_segment(segments.Segment("x", "segment in [nope]"), columns)
    with pytest.raises(SegmentError, match="unknown feature"):
        store.save_segment(segments.Segment("y", "lifecycle_stag in [customer]"), columns)
    with pytest.raises(SegmentError, match="exists"):
        store.save_segment(segments.Segment("old", "age >= 70"), columns)
    assert store.segment("customers").rule == "lifecycle_stage in [customer]"  # the refused change left it as it was


@pytest.mark.parametrize("rule, message", [
    ("__import__('os').system('true') == 1", "segment rule clause"),
    ("age >= 40 or country == de", "clauses join with `and` only"),
    ("segment > customers", "segments compare"),
    ("", "at least one clause"),
])
def test_rules_outside_the_language_are_refused_with_a_message(tables, rule, message):
    folder, _ = tables
    with pytest.raises(SegmentError, match=message):
        segments.count(folder, rule, lambda n: None)


def test_values_are_data_never_sql(tables, tmp_path):
    folder, _ = tables
    before = (folder / "profile.parquet").read_bytes()
    for rule in ('country == "de\'); DROP TABLE users; --"', "country in [x'), (SELECT 1 --]", 'country == "x\' || \'de"'):
        assert segments.count(folder, rule, lambda n: None) == 0  # quoted text reaches SQL only as a parameter
    with pytest.raises(SegmentError, match="one number or word"):  # unquoted text with spaces is not a value
        segments.count(folder, "country == de'); DROP TABLE users; --", lambda n: None)
    with pytest.raises(SegmentError, match="`and` only"):  # a value smuggling in another condition is refused
        segments.count(folder, "country == de' OR TRUE --", lambda n: None)
    assert (folder / "profile.parquet").read_bytes() == before


def test_export_writes_parquet_or_csv_whole_and_refuses_other_suffixes(tables, tmp_path):
    folder, frames = tables
    n = segments.export(folder, "age >= 40", lambda n: None, tmp_path / "out.parquet")
    df = pd.read_parquet(tmp_path / "out.parquet")
    assert len(df) == n == segments.count(folder, "age >= 40", lambda n: None)
    assert (df["age"] >= 40).all() and list(df.columns) == ["user_id", "age"]
    segments.export(folder, "age >= 40", lambda n: None, tmp_path / "out.csv")
    assert pd.read_csv(tmp_path / "out.csv")["user_id"].tolist() == df["user_id"].tolist()
    with pytest.raises(SegmentError, match=".parquet or .csv"):
        segments.export(folder, "age >= 40", lambda n: None, tmp_path / "out.xlsx")
    assert not list(tmp_path.glob(".*partial"))
