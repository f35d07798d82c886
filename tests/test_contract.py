"""Contract: bad input is rejected with file, column, rule and row count; nothing half-loaded."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from nextbest.features.contract import ContractError, conform, parse_eligibility
from nextbest.features.ingest import ingest, load_plan, manifest, plan_from_dir, read_raw
from tests.conftest import write_csvs

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def violations(err: ContractError) -> set[tuple[str, str, int]]:
    return {(v.column, v.rule, v.rows) for v in err.violations}


def test_good_tables_pass_with_contract_dtypes(raw_frames):
    users = conform("users", raw_frames["users"].astype(str), "users.csv")
    assert str(users["signup_at"].dtype) == "datetime64[ns, UTC]"
    assert users["consent_email"].dtype == bool
    assert pd.api.types.is_integer_dtype(users["age"])  # an extra column is typed, not left as text


def test_bad_timestamps_are_counted_and_named(raw_frames):
    events = raw_frames["events"].astype({"ts": str})
    events.loc[[3, 7, 11], "ts"] = "yesterday"
    with pytest.raises(ContractError) as info:
        conform("events", events, "events.csv")
    (v,) = info.value.violations
    assert (v.file, v.column, v.rows) == ("events.csv", "ts", 3)
    assert "timestamp" in v.rule and "yesterday" in v.example


def test_several_rules_reported_at_once(raw_frames):
    users = raw_frames["users"].copy()
    users.loc[1, "user_id"] = users.loc[0, "user_id"]
    users.loc[[4, 5], "timezone"] = "Mars/Olympus"
    with pytest.raises(ContractError) as info:
        conform("users", users, "users.csv")
    got = violations(info.value)
    assert ("user_id", "must be unique", 1) in got
    assert any(col == "timezone" and "IANA" in rule and n == 2 for col, rule, n in got)
    assert "users.csv" in str(info.value)


def test_missing_required_column_names_the_fix(raw_frames):
    with pytest.raises(ContractError) as info:
        conform("events", raw_frames["events"].drop(columns=["type"]), "events.csv")
    assert info.value.violations[0].column == "type"
    assert "column mapping" in info.value.violations[0].rule


def test_negative_amounts_and_unknown_reasons(raw_frames):
    events = raw_frames["events"].copy()
    events.loc[events["type"] == "purchase", "amount"] = -1.0
    n_bad = int((events["type"] == "purchase").sum())
    with pytest.raises(ContractError) as info:
        conform("events", events, "e.csv")
    assert violations(info.value) == {("amount", "must be >= 0", n_bad)}
    sup = raw_frames["suppressions"].assign(reason=["complaint", "because", "manual"])
    with pytest.raises(ContractError) as info:
        conform("suppressions", sup, "s.csv")
    assert [(v.column, v.rows) for v in info.value.violations] == [("reason", 1)]


def test_treated_contact_needs_offer_and_channel(raw_frames):
    contacts = raw_frames["contacts"].copy()
    contacts.loc[[0, 1], "channel"] = None
    contacts.loc[2, ["offer_id", "channel", "variant"]] = [None, None, "control"]  # a control row is fine
    with pytest.raises(ContractError) as info:
        conform("contacts", contacts, "c.csv")
    assert [(v.column, v.rows) for v in info.value.violations] == [("(row)", 2)]


def test_refused_pairs_are_json_pairs_or_named_as_wrong(raw_frames):
    contacts = raw_frames["contacts"].copy()
    contacts["refused"] = '[["o1", "email"], [null, "sms"]]'
    contacts.loc[1, "refused"] = None  # not logged by the service: only the tables close actions
    assert conform("contacts", contacts, "c.csv")["refused"].isna().sum() == 1
    contacts.loc[[2, 3], "refused"] = ["o1 email", '[["o1"]]']
    with pytest.raises(ContractError) as info:
        conform("contacts", contacts, "c.csv")
    (v,) = info.value.violations
    assert (v.column, v.rows) == ("refused", 2) and "JSON pairs" in v.rule


def test_eligibility_language():
    clauses = parse_eligibility("lifecycle_stage in [customer, lead] and recency_days >= 30")
    assert [(c.feature, c.op, c.value) for c in clauses] == [
        ("lifecycle_stage", "in", ("customer", "lead")), ("recency_days", ">=", 30.0)]
    assert parse_eligibility(None) == ()
    with pytest.raises(ValueError, match="cannot read eligibility clause"):
        parse_eligibility("import os")
    assert parse_eligibility("region == 'North East'")[0].value == "North East"
    for text in ("age >= 40 or plan == gold", "plan == gold silver", "plan == [gold]"):
        with pytest.raises(ValueError, match="one number or word"):
            parse_eligibility(text)


def test_failed_ingest_leaves_last_good_data(raw_frames, tmp_path, settings):
    rows = ingest(plan_from_dir(write_csvs(raw_frames, tmp_path / "good")), settings.raw_dir)
    assert rows["events"] == len(raw_frames["events"])
    before = manifest(settings.raw_dir)
    good_users = read_raw(settings.raw_dir, "users")

    bad = dict(raw_frames)
    bad["users"] = raw_frames["users"].iloc[:50]  # fewer users: the new users table is valid on its own
    bad["contacts"] = raw_frames["contacts"].assign(propensity=1.5)  # ... but contacts break a rule
    with pytest.raises(ContractError) as info:
        ingest(plan_from_dir(write_csvs(bad, tmp_path / "bad")), settings.raw_dir)
    assert any(v.column == "propensity" for v in info.value.violations)
    assert manifest(settings.raw_dir) == before
    pd.testing.assert_frame_equal(read_raw(settings.raw_dir, "users"), good_users)
    # no staging folder left behind: only the link and the snapshot it points at
    assert sorted(p.name for p in settings.home.iterdir()) == sorted(["raw", settings.raw_dir.resolve().name])


def test_unknown_user_ids_are_rejected_across_tables(raw_frames, tmp_path, settings):
    frames = dict(raw_frames)
    frames["events"] = raw_frames["events"].assign(user_id=lambda d: d["user_id"].where(d.index % 100 != 0, "ghost"))
    n_ghost = int((frames["events"]["user_id"] == "ghost").sum())
    with pytest.raises(ContractError) as info:
        ingest(plan_from_dir(write_csvs(frames, tmp_path / "in")), settings.raw_dir)
    assert violations(info.value) == {("user_id", "must refer to a user in the users table", n_ghost)}
    assert not settings.raw_dir.exists()


def test_column_mapping_loads_a_foreign_export(raw_frames, tmp_path, settings):
    folder = tmp_path / "export"
    folder.mkdir()
    raw_frames["users"].rename(columns={"user_id": "customer", "signup_at": "created"}).to_csv(folder / "customers.csv", sep=";", index=False)
    raw_frames["events"].rename(columns={"user_id": "customer", "ts": "time", "type": "kind"}).to_parquet(folder / "clicks.parquet")
    (folder / "mapping.yaml").write_text(
        "tables:\n"
        "  users: {path: customers.csv, sep: ';', rename: {customer: user_id, created: signup_at}}\n"
        "  events: {path: clicks.parquet, rename: {customer: user_id, time: ts, kind: type}}\n")
    rows = ingest(load_plan(folder / "mapping.yaml"), settings.raw_dir)
    assert rows == {"users": len(raw_frames["users"]), "events": len(raw_frames["events"])}


def test_mapping_file_errors_are_clear(tmp_path):
    (tmp_path / "m.yaml").write_text("tables:\n  customers: {path: x.csv}\n  users: {path: u.csv}\n  events: {path: e.csv}\n")
    with pytest.raises(ContractError, match="unknown table"):
        load_plan(tmp_path / "m.yaml")
    with pytest.raises(ContractError, match="does not exist"):
        load_plan(tmp_path / "nope.yaml")


def test_real_cdnow_transaction_log_ingests(settings):
    """The real CDNOW sample (whitespace, no header, YYYYMMDD dates) through the shipped example mapping."""
    plan = load_plan(Path(__file__).resolve().parents[1] / "examples" / "cdnow" / "mapping.yaml", [DATA])
    rows = ingest(plan, settings.raw_dir)
    assert rows == {"users": 2357, "events": 6919}
    events = read_raw(settings.raw_dir, "events")
    assert events["ts"].min() == pd.Timestamp("1997-01-01", tz="UTC")
    assert events["ts"].max() == pd.Timestamp("1998-06-30", tz="UTC")
    assert events["amount"].sum() == pytest.approx(pd.read_csv(DATA / "cdnow_sample.txt", sep=r"\s+", header=None)[4].sum())
