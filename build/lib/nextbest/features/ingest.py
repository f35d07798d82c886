"""Ingest: read a company's exports (CSV or Parquet, any column names), check the contract, swap in atomically."""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import yaml
from nextbest.features.contract import REQUIRED_TABLES, TABLES, ContractError, Violation, conform
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = ["Source", "IngestPlan", "load_plan", "plan_from_dir", "read_source", "ingest", "read_raw", "manifest"]

MANIFEST = "_manifest.json"


class Source(BaseModel):
    """Where one table comes from and how its columns map onto the contract."""

    model_config = ConfigDict(extra="forbid")

    path: Path | None = Field(None, description="CSV or Parquet file (absolute, or relative to the mapping file)")
    format: str | None = Field(None, description="csv | parquet | whitespace; guessed from the suffix if left out")
    sep: str | None = Field(None, description="CSV separator (default ',')")
    header: bool = Field(True, description="CSV has a header row; if false, give `names`")
    names: list[str] | None = Field(None, description="column names for a file without a header row")
    rename: dict[str, str] = Field(default_factory=dict, description="their column -> contract column")
    constants: dict[str, str | float | int | bool] = Field(default_factory=dict, description="columns to add with one value")
    timestamp_format: dict[str, str] = Field(default_factory=dict, description="contract column -> strptime format, e.g. '%Y%m%d'")
    derive_from: str | None = Field(None, description="users only: 'events' builds users from the first event of each user id")

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str | None) -> str | None:
        if v is not None and v not in ("csv", "parquet", "whitespace"):
            raise ValueError("format must be csv, parquet or whitespace")
        return v


class IngestPlan(BaseModel):
    """A mapping file: one Source per table."""

    model_config = ConfigDict(extra="forbid")

    tables: dict[str, Source]

    @field_validator("tables")
    @classmethod
    def _known_tables(cls, v: dict[str, Source]) -> dict[str, Source]:
        unknown = sorted(set(v) - set(TABLES))
        if unknown:
            raise ValueError(f"unknown table(s) {unknown}; known tables: {', '.join(TABLES)}")
        missing = [t for t in REQUIRED_TABLES if t not in v]
        if missing:
            raise ValueError(f"missing required table(s) {missing}")
        return v


def load_plan(path: Path) -> IngestPlan:
    """Read a YAML mapping file; relative paths resolve against the file's folder."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
        plan = IngestPlan.model_validate(raw)
    except FileNotFoundError:
        raise ContractError([Violation(str(path), "-", "mapping file does not exist", 0)]) from None
    except (yaml.YAMLError, ValidationError) as err:
        raise ContractError([Violation(str(path), "-", f"is not a valid mapping file: {err}", 0)]) from None
    for source in plan.tables.values():
        if source.path is not None and not source.path.is_absolute():
            source.path = Path(path).parent / source.path
    return plan


def plan_from_dir(folder: Path) -> IngestPlan:
    """A plan for a folder holding <table>.csv or <table>.parquet files with contract column names."""
    folder = Path(folder)
    tables: dict[str, Source] = {}
    for table in TABLES:
        for suffix in (".parquet", ".csv"):
            if (folder / f"{table}{suffix}").exists():
                tables[table] = Source(path=folder / f"{table}{suffix}")
                break
    try:
        return IngestPlan(tables=tables)
    except ValidationError as err:
        raise ContractError([Violation(str(folder), "-", f"needs users and events files ({err.errors()[0]['msg']})", 0)]) from None


def read_source(table: str, source: Source, others: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """Read one table as its contract columns (not yet validated)."""
    if source.derive_from:
        if table != "users" or source.derive_from != "events" or not others or "events" not in others:
            raise ContractError([Violation(table, "-", "derive_from is only supported as users <- events", 0)])
        ev = others["events"]
        df = ev.groupby("user_id", as_index=False, observed=True)["ts"].min().rename(columns={"ts": "signup_at"})
    else:
        if source.path is None:
            raise ContractError([Violation(table, "-", "needs a path (or derive_from)", 0)])
        if not source.path.exists():
            raise ContractError([Violation(str(source.path), "-", "file does not exist", 0)])
        fmt = source.format or ("parquet" if source.path.suffix == ".parquet" else "csv")
        try:
            if fmt == "parquet":
                df = pd.read_parquet(source.path)
            else:
                sep = r"\s+" if fmt == "whitespace" else (source.sep or ",")
                df = pd.read_csv(source.path, sep=sep, header=0 if source.header else None,
                                 names=source.names, dtype=str, keep_default_na=True)
        except Exception as err:  # a file that is not what it claims: say so, with the reader's words
            raise ContractError([Violation(str(source.path), "-", f"cannot be read as {fmt}: {err}", 0)]) from None
        df = df.rename(columns=source.rename)
    for column, value in source.constants.items():
        df[column] = value
    for column, fmt in source.timestamp_format.items():
        if column in df:
            parsed = pd.to_datetime(df[column], format=fmt, errors="coerce", utc=True)
            bad = df[column].notna() & parsed.isna()
            if bad.any():
                raise ContractError([Violation(str(source.path), column, f"does not match the timestamp format {fmt!r}",
                                               int(bad.sum()), repr(df[column][bad].iloc[0]))])
            df[column] = parsed
    return df


def ingest(plan: IngestPlan, raw_dir: Path, progress: Callable[[str], None] | None = None) -> dict[str, int]:
    """Validate every table of `plan`, then replace `raw_dir` as a whole; on any error nothing changes."""
    frames: dict[str, pd.DataFrame] = {}
    violations: list[Violation] = []
    # users may be derived from events, so events go first
    order = sorted(plan.tables, key=lambda t: (t != "events", TABLES.index(t)))
    for table in order:
        source = plan.tables[table]
        if progress:
            progress(table)
        label = str(source.path) if source.path else f"{table} (derived from {source.derive_from})"
        try:
            frames[table] = conform(table, read_source(table, source, frames), label)
        except ContractError as err:
            violations += err.violations
    if not violations:
        violations += _cross_checks(frames)
    if violations:
        raise ContractError(violations)
    write_raw(frames, raw_dir)
    return {t: len(frames[t]) for t in TABLES if t in frames}


def _cross_checks(frames: dict[str, pd.DataFrame]) -> list[Violation]:
    """Rules between tables: every user id referenced must exist in users."""
    known = pd.Index(frames["users"]["user_id"].astype(str))
    out = []
    for table in ("events", "contacts", "suppressions", "labels"):
        if table in frames:
            ids = frames[table]["user_id"].astype(str)
            unknown = ~ids.isin(known)
            if unknown.any():
                out.append(Violation(table, "user_id", "must refer to a user in the users table", int(unknown.sum()),
                                     repr(ids[unknown].iloc[0])))
    return out


def write_raw(frames: dict[str, pd.DataFrame], raw_dir: Path) -> None:
    """Write tables to a staging folder, then swap it in: readers see the old or the new set, never a mix."""
    raw_dir = Path(raw_dir)
    raw_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = raw_dir.parent / f".{raw_dir.name}-staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        digest = hashlib.sha256()
        for table, df in frames.items():
            path = staging / f"{table}.parquet"
            df.to_parquet(path, index=False)
            digest.update(table.encode())
            digest.update(pd.util.hash_pandas_object(df, index=False).values.tobytes())
        info = {
            "snapshot_id": digest.hexdigest()[:16],
            "ingested_at": datetime.now(UTC).isoformat(),
            "rows": {t: len(df) for t, df in frames.items()},
        }
        (staging / MANIFEST).write_text(json.dumps(info, indent=2))
        old = raw_dir.parent / f".{raw_dir.name}-old-{uuid.uuid4().hex[:8]}"
        if raw_dir.exists():
            raw_dir.rename(old)
        staging.rename(raw_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def manifest(raw_dir: Path) -> dict:
    """The manifest of the current raw snapshot (snapshot id, row counts)."""
    path = Path(raw_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"no ingested data in {raw_dir}: run `nextbest simulate` or `nextbest ingest` first")
    return json.loads(path.read_text())


def read_raw(raw_dir: Path, table: str) -> pd.DataFrame | None:
    """One raw table of the current snapshot, or None if the company did not provide it."""
    path = Path(raw_dir) / f"{table}.parquet"
    return pd.read_parquet(path) if path.exists() else None
