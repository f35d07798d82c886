"""Malformed real-world exports through `nextbest ingest`: each is read correctly or refused with exit 2 and a
message naming the file, the rule and the fix; never a traceback, never a change to the last good data."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from nextbest.features.ingest import manifest, read_raw
from nextbest.pipelines.cli import app
from tests.conftest import make_raw, write_csvs

runner = CliRunner()


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("NEXTBEST_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "250")
    return tmp_path / "home"


@pytest.fixture
def good(home, tmp_path) -> dict:
    """A home holding good data already: every refused ingest must leave exactly this in place."""
    result = runner.invoke(app, ["ingest", str(write_csvs(make_raw(), tmp_path / "good"))])
    assert result.exit_code == 0, result.output
    return manifest(home / "raw")


def ingest(*args: str):
    return runner.invoke(app, ["ingest", *map(str, args)])


def refused(result, *needles: str) -> str:
    """Assert a clean refusal: exit 2, no exception escaped, every needle in the message."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    text = " ".join(result.output.split())  # rich wraps long lines
    for needle in needles:
        assert needle in text, text
    return text


def frames(**changes: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {**make_raw(), **changes}


def naive(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """`column` written as offset-free text, as most exports write timestamps."""
    return frame.assign(**{column: pd.to_datetime(frame[column], utc=True).dt.strftime("%Y-%m-%d %H:%M:%S")})


# --- refused: each leaves the last good data in place -----------------------------------------------------

def _header_only(raw):
    return {**raw, "events": raw["events"].iloc[:0]}


def _inf_amount(raw):
    ev = raw["events"].copy()
    ev.loc[ev["type"] == "purchase", "amount"] = np.inf
    return {**raw, "events": ev}


def _duplicate_events(raw):
    return {**raw, "events": pd.concat([raw["events"], raw["events"].iloc[:7]], ignore_index=True)}


def _events_1900_2100(raw):
    ev = raw["events"].copy()
    ev.loc[:2, "ts"] = pd.Timestamp("1900-01-01", tz="UTC")
    ev.loc[3:4, "ts"] = pd.Timestamp("2100-01-01", tz="UTC")
    return {**raw, "events": ev}


def _signup_2199(raw):
    users = raw["users"].copy()
    users.loc[:5, "signup_at"] = pd.Timestamp("2199-12-31", tz="UTC")
    return {**raw, "users": users}


def _naive_events(raw):
    return {**raw, "events": naive(raw["events"], "ts")}


def _decimal_comma(raw):
    ev = raw["events"].astype({"amount": object})
    ev.loc[ev["type"] == "purchase", "amount"] = "12,5"
    return {**raw, "events": ev}


def _ambiguous_dates(raw):
    ev = raw["events"].copy()
    ev["ts"] = ["01/02/2026" if i % 2 else "02/03/2026" for i in range(len(ev))]
    return {**raw, "events": ev}


def _fractional_int(raw):
    return {**raw, "channels": raw["channels"].assign(daily_capacity=[10.5, 3, 4])}


@pytest.mark.parametrize("make, needles", [
    (_header_only, ["events.csv", "has no rows", "--force"]),
    (_inf_amount, ["events.csv", "'amount'", "finite"]),
    (_duplicate_events, ["events.csv", "identical earlier row", "7 row(s)", "duplicates: drop"]),
    (_events_1900_2100, ["events.csv", "'ts'", "must not be before", "3 row(s)", "must not be after", "2 row(s)"]),
    (_signup_2199, ["users.csv", "'signup_at'", "must not be after", "6 row(s)"]),
    (_naive_events, ["events.csv", "'ts'", "without a timezone", "--assume-utc"]),
    (_decimal_comma, ["events.csv", "'amount'", "must be a number"]),
    (_ambiguous_dates, ["events.csv", "day first and month first", "timestamp_format"]),
    (_fractional_int, ["channels.csv", "'daily_capacity'", "whole number", "1 row(s)"]),
], ids=lambda v: v.__name__.strip("_") if callable(v) else "")
def test_bad_tables_are_refused_and_the_last_good_data_stays(make, needles, good, home, tmp_path):
    refused(ingest(write_csvs(make(make_raw()), tmp_path / "bad")), *needles)
    assert manifest(home / "raw") == good


def test_naive_timestamps_are_read_in_the_zone_they_are_declared_in(good, home, tmp_path):
    raw = make_raw()
    folder = write_csvs({**raw, "events": naive(raw["events"], "ts")}, tmp_path / "in")
    assert ingest(folder, "--assume-utc").exit_code == 0
    pd.testing.assert_series_equal(read_raw(home / "raw", "events")["ts"], raw["events"]["ts"].astype("datetime64[ns, UTC]"))
    # a mapping may say the zone instead: 10:00 in Berlin (summer) is 08:00 UTC
    (folder / "map.yaml").write_text("tables:\n  users: {path: users.csv}\n"
                                     "  events: {path: events.csv, timezone: Europe/Berlin}\n")
    assert ingest("--mapping", folder / "map.yaml").exit_code == 0
    shift = read_raw(home / "raw", "events")["ts"] - raw["events"]["ts"].astype("datetime64[ns, UTC]")
    assert set(shift.unique()) <= {pd.Timedelta(hours=-2), pd.Timedelta(hours=-1)}  # CEST / CET


def test_forced_empty_replacement_is_allowed(good, home, tmp_path):
    raw = make_raw()
    folder = write_csvs({"users": raw["users"], "events": raw["events"].iloc[:0]}, tmp_path / "empty")
    assert ingest(folder, "--force").exit_code == 0
    assert manifest(home / "raw")["rows"]["events"] == 0
    refused(runner.invoke(app, ["features", "build"]), "no users or no events")


# --- read, not refused ------------------------------------------------------------------------------------

def test_real_world_number_id_and_date_formats_are_read(home, tmp_path):
    raw = make_raw()
    users = raw["users"].copy()
    users["user_id"] = [f"{i:05d}" for i in range(len(users))]  # zero-padded ids must survive
    users["score"] = ["1.5" if i % 3 else "" for i in range(len(users))]  # decimals with blanks
    users["spend"] = ["1,234.50" if i % 2 else "12" for i in range(len(users))]  # thousands separators
    users["consent_email"] = np.where(raw["users"]["consent_email"], "Yes", "no")
    users["signup_at"] = pd.to_datetime(users["signup_at"]).dt.strftime("%Y/%m/%d")  # a common non-ISO format
    ids = dict(zip(raw["users"]["user_id"], users["user_id"], strict=True))
    events = raw["events"].assign(user_id=raw["events"]["user_id"].map(ids))
    events["amount"] = events["amount"].map(lambda a: "" if np.isnan(a) else f"{a:,.2f}")
    folder = write_csvs({"users": users, "events": events}, tmp_path / "in")  # no optional tables at all
    result = ingest(folder, "--assume-utc")
    assert result.exit_code == 0, result.output
    got = read_raw(home / "raw", "users")
    assert got["user_id"].iloc[3] == "00003" and read_raw(home / "raw", "events")["user_id"].str.len().eq(5).all()
    assert got["score"].dtype == "float64" and got["score"].isna().sum() == (np.arange(len(users)) % 3 == 0).sum()
    assert got["spend"].max() == pytest.approx(1234.5)
    assert got["consent_email"].tolist() == raw["users"]["consent_email"].tolist()
    assert (got["signup_at"] == raw["users"]["signup_at"].dt.floor("D")).all()
    amounts = read_raw(home / "raw", "events")["amount"]
    assert amounts.sum() == pytest.approx(raw["events"]["amount"].round(2).sum())
    for table in ("contacts", "offers", "channels", "suppressions"):
        assert read_raw(home / "raw", table) is None


def test_encodings_bom_and_latin1(home, tmp_path):
    raw = make_raw()
    users = raw["users"].assign(city=["Zürich" if i % 2 else "Köln" for i in range(len(raw["users"]))])
    folder = write_csvs({"events": raw["events"]}, tmp_path / "in")
    users.to_csv(folder / "users.csv", index=False, encoding="utf-8-sig")  # Excel's "CSV UTF-8": a BOM first
    assert ingest(folder).exit_code == 0
    assert read_raw(home / "raw", "users")["city"].iloc[1] == "Zürich"
    users.to_csv(folder / "users.csv", index=False, encoding="latin-1")
    refused(ingest(folder), "users.csv", "is not UTF-8", "encoding:", "latin-1")
    (folder / "map.yaml").write_text("tables:\n  users: {path: users.csv, encoding: latin-1}\n  events: {path: events.csv}\n")
    assert ingest("--mapping", folder / "map.yaml").exit_code == 0
    assert read_raw(home / "raw", "users")["city"].iloc[1] == "Zürich"


# --- files that are not what they claim ---------------------------------------------------------------------

@pytest.mark.parametrize("content, needles", [
    (b"", ["users.csv", "is empty"]),
    (bytes(range(256)) * 40, ["users.csv", "is not UTF-8"]),
    (b"user_id,signup_at,timezone\n1,2026-01-01T00:00Z,UTC\n2,x,y,z,w\n", ["users.csv", "cannot be read as csv", "line 3"]),
    (b"nothing,that,looks\n1,2,3\n", ["users.csv", "'user_id' is required but missing", "columns found: nothing, that, looks"]),
], ids=["zero-bytes", "binary", "ragged", "wrong-columns"])
def test_broken_files_are_refused(content, needles, good, home, tmp_path):
    folder = write_csvs({"events": make_raw()["events"]}, tmp_path / "in")
    (folder / "users.csv").write_bytes(content)
    refused(ingest(folder), *needles)
    assert manifest(home / "raw") == good


def test_parquet_that_is_not_parquet(good, home, tmp_path):
    folder = write_csvs({"events": make_raw()["events"]}, tmp_path / "in")
    (folder / "users.parquet").write_bytes(b"PAR1 but not really")
    refused(ingest(folder), "users.parquet", "cannot be read as parquet")


# --- mappings ---------------------------------------------------------------------------------------------------

SECRET = "root:x:0:0:secret-first-line"


def test_a_mapping_reads_only_its_own_folder_and_never_echoes_a_file(good, home, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "passwd").write_text(f"{SECRET}\n" * 3)
    folder = write_csvs(make_raw(), tmp_path / "in")
    for path in ("/etc/passwd", str(outside / "passwd"), "../elsewhere/passwd"):
        (folder / "map.yaml").write_text(f"tables:\n  users: {{path: {path}, header: false, names: [user_id]}}\n"
                                         "  events: {path: events.csv}\n")
        text = refused(ingest("--mapping", folder / "map.yaml"), "outside the mapping's folder", "--allow-dir")
        assert "root:" not in text
    (folder / "link.csv").symlink_to(outside / "passwd")  # a link inside the folder is followed, then refused
    (folder / "map.yaml").write_text("tables:\n  users: {path: link.csv}\n  events: {path: events.csv}\n")
    assert "root:" not in refused(ingest("--mapping", folder / "map.yaml"), "outside the mapping's folder")
    # explicitly allowed, the file is read; a line that is no header is not echoed as one
    (folder / "map.yaml").write_text(f"tables:\n  users: {{path: {outside / 'passwd'}}}\n  events: {{path: events.csv}}\n")
    text = refused(ingest("--mapping", folder / "map.yaml", "--allow-dir", outside), "'user_id' is required but missing",
                   "not all of them look like column names")
    assert "secret" not in text and "root:" not in text
    assert manifest(home / "raw") == good


@pytest.mark.parametrize("mapping, needles", [
    ("tables: [", ["is not valid YAML"]),
    ("tables:\n  users: {path: users.csv, colour: red}\n  events: {path: events.csv}\n", ["colour", "Extra inputs"]),
    ("tables:\n  users: {path: users.csv, timezone: Mars/Base}\n  events: {path: events.csv}\n", ["Mars/Base", "IANA"]),
    ("tables:\n  users: {path: users.csv, encoding: klingon}\n  events: {path: events.csv}\n", ["klingon", "unknown"]),
    ("tables:\n  users: {path: users.csv, rename: {age: user_id}}\n  events: {path: events.csv}\n",
     ["'user_id' appears more than once"]),
], ids=["yaml", "unknown-key", "timezone", "encoding", "renamed-twice"])
def test_bad_mappings_are_refused(mapping, needles, good, tmp_path):
    folder = write_csvs(make_raw(), tmp_path / "in")
    (folder / "map.yaml").write_text(mapping)
    refused(ingest("--mapping", folder / "map.yaml"), *needles)


# --- the swap survives kill -9 at any step ----------------------------------------------------------------------

_CRASH = textwrap.dedent("""
    import os, signal, sys
    import pandas as pd
    from nextbest.features import ingest

    def crash(step):
        if step == sys.argv[2]:
            os.kill(os.getpid(), signal.SIGKILL)

    ingest._checkpoint = crash
    ingest.write_raw({"users": pd.DataFrame({"user_id": ["new"]})}, sys.argv[1])
""")


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["linked", "folder"])  # `folder`: a raw/ written before snapshots were linked
@pytest.mark.parametrize("step", ["staged", "renamed", "moved_aside", "swapped", "never"])
def test_kill_9_during_the_swap_leaves_the_old_or_the_new_data(layout, step, tmp_path):
    from nextbest.features.ingest import write_raw

    raw_dir = tmp_path / "home" / "raw"
    old = {"users": pd.DataFrame({"user_id": ["old"]})}
    if layout == "linked":
        write_raw(old, raw_dir)
    else:
        raw_dir.mkdir(parents=True)
        old["users"].to_parquet(raw_dir / "users.parquet")
        (raw_dir / "_manifest.json").write_text('{"snapshot_id": "old", "ingested_at": "2026-01-01T00:00:00+00:00"}')
    done = subprocess.run([sys.executable, "-c", _CRASH, str(raw_dir), step], capture_output=True, timeout=120)
    killed = done.returncode == -9
    assert killed == (step != "never" and not (step == "moved_aside" and layout == "linked")), done.stderr
    # never nothing: before the link moves the old data, after it (or once a folder was moved aside) the new
    expected = ["old"] if step in ("staged", "renamed") else ["new"]
    assert read_raw(raw_dir, "users")["user_id"].tolist() == expected
    assert manifest(raw_dir)["snapshot_id"] != "old" if expected == ["new"] else True
    # the next ingest cleans whatever the killed one left behind
    write_raw({"users": pd.DataFrame({"user_id": ["next"]})}, raw_dir)
    assert read_raw(raw_dir, "users")["user_id"].tolist() == ["next"]
    assert sorted(p.name for p in raw_dir.parent.iterdir()) == sorted(["raw", raw_dir.resolve().name])


# --- contacts are optional, ids are text -------------------------------------------------------------------------

def test_features_build_without_contacts_and_with_text_ids(home, tmp_path):
    raw = make_raw()
    ids = {u: f"c{i:06d}" for i, u in enumerate(raw["users"]["user_id"])}
    users = raw["users"].assign(user_id=raw["users"]["user_id"].map(ids))
    events = raw["events"].assign(user_id=raw["events"]["user_id"].map(ids))
    assert ingest(write_csvs({"users": users, "events": events}, tmp_path / "in")).exit_code == 0
    result = runner.invoke(app, ["features", "build", "--as-of", "2026-07-01", "--online"])  # + apply, materialize
    assert result.exit_code == 0, result.output
    from nextbest.features.settings import Settings
    from nextbest.features.store import feature_store

    store = feature_store(Settings())
    got = store.get_online_features(features=["behaviour:purchases_all"], entity_rows=[{"user_id": ids["u0003"]}]).to_dict()
    bought = int(((events["user_id"] == ids["u0003"]) & (events["type"] == "purchase")).sum())
    assert bought > 0 and got["purchases_all"] == [bought]  # loaded online (the newest snapshot follows every event)
    behaviour = pd.read_parquet(home / "feature_tables" / "behaviour.parquet")
    channel = pd.read_parquet(home / "feature_tables" / "channel.parquet")
    snaps = pd.DatetimeIndex(behaviour["event_timestamp"].unique())
    assert pd.Timestamp("2026-07-01", tz="UTC") in snaps  # exactly the asked date, not the grid's neighbour
    assert snaps.max() == events["ts"].max().floor("D") + pd.Timedelta(days=1)  # and still the newest day
    assert channel["user_id"].str.startswith("c").all() and channel["contacts_90d"].eq(0).all()
    refused(runner.invoke(app, ["features", "build", "--as-of", "2026-07-01T10:00"]), "midnight UTC")
    refused(runner.invoke(app, ["features", "build", "--as-of", "1999-01-01"]), "not after the first event")
    refused(runner.invoke(app, ["features", "build", "--as-of", "someday"]), "is not a date")


def test_parquet_exports_naive_times_and_integer_ids(home, tmp_path):
    raw = make_raw()
    folder = tmp_path / "pq"
    folder.mkdir()
    ids = {u: i for i, u in enumerate(raw["users"]["user_id"])}
    raw["users"].assign(user_id=raw["users"]["user_id"].map(ids)).to_parquet(folder / "users.parquet")
    events = raw["events"].assign(user_id=raw["events"]["user_id"].map(ids), ts=raw["events"]["ts"].dt.tz_convert(None))
    events.to_parquet(folder / "events.parquet")  # datetime64 without a zone, as many warehouses export
    refused(ingest(folder), "events.parquet", "'ts'", "without a timezone")
    assert ingest(folder, "--assume-utc").exit_code == 0
    got = read_raw(home / "raw", "events")
    assert got["user_id"].iloc[0] == str(events["user_id"].iloc[0])  # ids are text everywhere
    pd.testing.assert_series_equal(got["ts"], raw["events"]["ts"].astype("datetime64[ns, UTC]"))
    raw["users"].assign(tags=[["a", "b"]] * len(raw["users"])).to_parquet(folder / "users.parquet")  # nested values
    refused(ingest(folder, "--assume-utc"), "users.parquet", "'tags' holds lists or nested records", "200 row(s)")


def test_duplicates_can_be_kept_or_dropped_by_the_mapping(home, tmp_path):
    raw = make_raw()
    events = pd.concat([raw["events"], raw["events"].iloc[:7]], ignore_index=True)
    folder = write_csvs({"users": raw["users"], "events": events}, tmp_path / "in")
    for policy, rows in (("keep", len(events)), ("drop", len(raw["events"]))):
        (folder / "map.yaml").write_text(f"tables:\n  users: {{path: users.csv}}\n"
                                         f"  events: {{path: events.csv, duplicates: {policy}}}\n")
        assert ingest("--mapping", folder / "map.yaml").exit_code == 0
        assert manifest(home / "raw")["rows"]["events"] == rows


def _mutations(text: str, rng: np.random.Generator) -> list[tuple[str, str]]:
    """Damaged copies of one CSV's text, the kinds real exports arrive with."""
    lines = text.splitlines(keepends=True)
    cut = int(rng.integers(1, len(text)))
    pick = int(rng.integers(1, len(lines)))
    cells = lines[pick].split(",")
    cells[int(rng.integers(len(cells)))] = str(rng.choice(["", " ", "NaN", "inf", "-1e309", "1e309", "null", "0x1F", "∞",
                                                           "1,5", "\"", "'", "2026-02-30", "9999-12-31", "¿?", "\x00"]))
    return [
        ("truncated mid-file", text[:cut]),
        ("a cell replaced", "".join(lines[:pick] + [",".join(cells)] + lines[pick + 1:])),
        ("a line duplicated", "".join(lines + [lines[pick]])),
        ("a column dropped", "".join(",".join(line.rstrip("\n").split(",")[:-1]) + "\n" for line in lines)),
        ("the header repeated inside", "".join(lines[:pick] + [lines[0]] + lines[pick:])),
        ("semicolons", text.replace(",", ";")),
        ("CRLF and a BOM", "\ufeff" + text.replace("\n", "\r\n")),
        ("stray quote", text[:cut] + '"' + text[cut:]),
    ]


def test_damaged_exports_never_give_a_traceback(good, home, tmp_path):
    """Seeded damage to the users and events files: every ingest ends in exit 0 or a clean exit 2."""
    rng = np.random.default_rng(11)
    source = write_csvs(make_raw(n_users=40, n_events=300), tmp_path / "src")
    outcomes = []
    for table in ("users", "events"):
        text = (source / f"{table}.csv").read_text()
        for k, (what, damaged) in enumerate(_mutations(text, rng) + _mutations(text, rng)):
            folder = write_csvs({}, tmp_path / f"{table}-{k}")
            for name in ("users", "events"):
                (folder / f"{name}.csv").write_text(damaged if name == table else (source / f"{name}.csv").read_text())
            result = ingest(folder, "--assume-utc")
            assert result.exit_code in (0, 2), (table, what, result.output)
            assert result.exception is None or isinstance(result.exception, SystemExit), (table, what, result.exception)
            assert "Traceback" not in result.output
            outcomes.append(result.exit_code)
            if result.exit_code == 2:
                assert "error:" in result.output
    assert outcomes.count(2) >= len(outcomes) // 2  # most damage is caught, not waved through


def test_labels_read_yes_no_and_refuse_other_values():
    from nextbest.features.contract import ContractError, conform

    labels = pd.DataFrame({"user_id": ["007", "008", "009"], "as_of": ["2026-06-01"] * 3, "label": ["Yes", "no", "1"]})
    got = conform("labels", labels, "labels.csv", timezone="UTC")
    assert got["label"].tolist() == [1, 0, 1] and got["user_id"].tolist() == ["007", "008", "009"]
    with pytest.raises(ContractError, match=r"'label' must be 0 or 1 \(or true/false, yes/no\): 1 row\(s\) \(e.g. 'maybe'\)"):
        conform("labels", labels.assign(label=["maybe", "0", "1"]), "labels.csv", timezone="UTC")
    with pytest.raises(ContractError, match=r"'label' must be 0 or 1: 1 row\(s\) \(e.g. '2'\)"):
        conform("labels", labels.assign(label=[0, 1, 2]), "labels.csv", timezone="UTC")


def test_raw_tables_written_in_slices_of_rows_read_back_and_hash_as_one_pass(tmp_path, monkeypatch):
    """Big raw tables (the simulator's 31M events at 1M users) are written and hashed a slice of rows at a time to
    bound memory: what is read back, and the snapshot id, must be those of writing each table whole."""
    from nextbest.features import ingest as ingest_module

    raw = make_raw(n_users=40, n_events=500, n_contacts=120, seed=5)
    raw["events"] = raw["events"].astype({"user_id": "category"})  # the simulator's dictionary-encoded ids
    raw["events"].loc[raw["events"].index[-3:], "category"] = None  # missing values only in a later slice
    ingest_module.write_raw(raw, tmp_path / "whole" / "raw")
    monkeypatch.setattr(ingest_module, "_CHUNK_ROWS", 64)  # 500 events: 8 slices, the last one short
    ingest_module.write_raw(raw, tmp_path / "sliced" / "raw")

    for name in raw:
        want, got = read_raw(tmp_path / "whole" / "raw", name), read_raw(tmp_path / "sliced" / "raw", name)
        pd.testing.assert_frame_equal(got, want, obj=name)
    assert len(read_raw(tmp_path / "sliced" / "raw", "events")) == 500
    assert manifest(tmp_path / "sliced" / "raw")["snapshot_id"] == manifest(tmp_path / "whole" / "raw")["snapshot_id"]
    import pyarrow.parquet as pq

    assert pq.ParquetFile(tmp_path / "sliced" / "raw" / "events.parquet").metadata.num_row_groups == 8


def test_raw_tables_written_in_parts_read_back_and_hash_as_the_whole_tables(tmp_path, monkeypatch):
    """A world simulated in chunks of users is written part by part: parts whose categoricals differ in width (int8
    codes for a few categories, int16 for many), an empty part first, a table with no rows in any part: the same rows,
    and the same snapshot id, as writing the concatenated tables whole."""
    from nextbest.features import ingest as ingest_module

    def part(first: int, n: int) -> dict[str, pd.DataFrame]:
        ids = [f"u{i:04d}" for i in range(first, first + n)]
        users = pd.DataFrame({"user_id": pd.Categorical(ids), "amount": np.arange(n) / 4})
        return {"users": users, "labels": pd.DataFrame({"user_id": pd.Categorical([]), "label": pd.Series([], dtype=int)})}

    parts = [part(0, 0), part(0, 3), part(3, 300), part(303, 2)]
    monkeypatch.setattr(ingest_module, "_CHUNK_ROWS", 128)  # the 300-row part: 3 row groups
    rows = ingest_module.write_raw_parts(iter(parts), tmp_path / "parts" / "raw")
    whole = {name: pd.concat([p[name].astype({"user_id": object}) for p in parts], ignore_index=True)
             for name in ("users", "labels")}
    ingest_module.write_raw(whole, tmp_path / "whole" / "raw")
    assert rows == {"users": 305, "labels": 0}
    users = read_raw(tmp_path / "parts" / "raw", "users")
    assert users["user_id"].astype(str).tolist() == whole["users"]["user_id"].tolist()
    assert users["amount"].tolist() == whole["users"]["amount"].tolist()
    assert read_raw(tmp_path / "parts" / "raw", "labels").columns.tolist() == ["user_id", "label"]
    assert manifest(tmp_path / "parts" / "raw")["snapshot_id"] == manifest(tmp_path / "whole" / "raw")["snapshot_id"]
    assert not list((tmp_path / "parts").rglob("*rowhashes*"))  # the row hashes were scratch
