"""Ingest: read a company's exports (CSV or Parquet, any column names), check the contract, swap in atomically."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nextbest.features.contract import REQUIRED_TABLES, TABLES, ContractError, TimeWindow, Violation, conform

__all__ = ["Source", "IngestPlan", "load_plan", "plan_from_dir", "read_source", "ingest", "write_raw", "write_raw_parts", "read_raw", "raw_path",
           "manifest", "recover_raw", "ingest_window"]

MANIFEST = "_manifest.json"
# Tables a company must never replace with nothing by accident (a header-only export): `force` allows it.
_NOT_EMPTY = ("users", "events")
_CHUNK_ROWS = 1 << 20  # rows per slice when raw tables are written and hashed (pyarrow's default row group size)


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
    timezone: str | None = Field(None, description="IANA zone of timestamps written without an offset, e.g. UTC or "
                                                   "Europe/Berlin; without it such timestamps are an error")
    encoding: str | None = Field(None, description="CSV text encoding, e.g. latin-1 (default: UTF-8, with or without BOM)")
    duplicates: Literal["reject", "keep", "drop"] = Field(
        "reject", description="identical event/label rows: reject, keep (real repeats) or drop (export duplicates)")

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str | None) -> str | None:
        if v is not None and v not in ("csv", "parquet", "whitespace"):
            raise ValueError("format must be csv, parquet or whitespace")
        return v

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, v: str | None) -> str | None:
        from zoneinfo import ZoneInfo

        if v is not None:
            try:
                ZoneInfo(v)
            except Exception:  # ZoneInfoNotFoundError, ValueError for odd strings
                raise ValueError(f"timezone {v!r} is not an IANA timezone such as UTC or Europe/Berlin") from None
        return v

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, v: str | None) -> str | None:
        import codecs

        if v is not None:
            try:
                codecs.lookup(v)
            except LookupError:
                raise ValueError(f"encoding {v!r} is unknown; use e.g. utf-8, latin-1, cp1252") from None
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


def load_plan(path: Path, allowed_dirs: Sequence[Path] = ()) -> IngestPlan:
    """Read a YAML mapping file; relative paths resolve against the file's folder.

    A mapping reads only files inside its own folder or one of `allowed_dirs` (symlinks resolved), so a
    mapping handed over by someone else cannot make ingest read, and report on, any file this user can read.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
        plan = IngestPlan.model_validate(raw)
    except FileNotFoundError:
        raise ContractError([Violation(str(path), "-", "mapping file does not exist", 0)]) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ContractError([Violation(str(path), "-", f"cannot be read ({type(err).__name__})", 0)]) from None
    except yaml.YAMLError:
        raise ContractError([Violation(str(path), "-", "is not valid YAML (check indentation and quotes)", 0)]) from None
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in err.errors()[:5])
        raise ContractError([Violation(str(path), "-", f"is not a valid mapping file ({problems})", 0)]) from None
    for source in plan.tables.values():
        if source.path is not None and not source.path.is_absolute():
            source.path = path.parent / source.path
    _confine(plan, [path.parent, *allowed_dirs], str(path))
    return plan


def _confine(plan: IngestPlan, roots: Sequence[Path], label: str) -> None:
    """Refuse a plan that reads a file outside `roots`."""
    resolved = [Path(r).resolve() for r in roots]
    outside = [table for table, source in plan.tables.items() if source.path is not None
               and not any(source.path.resolve().is_relative_to(root) for root in resolved)]
    if outside:
        raise ContractError([Violation(f"{label} (table {table})", "-", "reads a file outside the mapping's folder: allow "
                                       "its folder with `nextbest ingest --allow-dir DIR` (or NEXTBEST_DATA_DIR)", 0)
                             for table in outside])


def plan_from_dir(folder: Path) -> IngestPlan:
    """A plan for a folder holding <table>.csv or <table>.parquet files with contract column names."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ContractError([Violation(str(folder), "-", "is not a folder (give a folder of <table>.csv files, "
                                       "or --mapping FILE)", 0)])
    tables: dict[str, Source] = {}
    for table in TABLES:
        for suffix in (".parquet", ".csv"):
            if (folder / f"{table}{suffix}").exists():
                tables[table] = Source(path=folder / f"{table}{suffix}")
                break
    try:
        plan = IngestPlan(tables=tables)
    except ValidationError as err:
        raise ContractError([Violation(str(folder), "-", f"needs users and events files ({err.errors()[0]['msg']})", 0)]) from None
    _confine(plan, [folder], str(folder))
    return plan


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
        df = _read_file(source)
        df = df.rename(columns=source.rename)
    for column, value in source.constants.items():
        df[column] = value
    for column, fmt in source.timestamp_format.items():
        if column in df:
            # Naive unless the format has %z: conform then applies the source's timezone, or asks for one.
            parsed = pd.to_datetime(df[column], format=fmt, errors="coerce")
            bad = df[column].notna() & parsed.isna()
            if bad.any():
                raise ContractError([Violation(str(source.path), column, f"does not match the timestamp format {fmt!r}",
                                               int(bad.sum()))])
            df[column] = parsed
    return df


def _read_file(source: Source) -> pd.DataFrame:
    """One CSV/Parquet file as a frame (CSV: every value as text); unreadable files become a ContractError that
    names the problem and the fix, never the file's contents."""
    fmt = source.format or ("parquet" if source.path.suffix == ".parquet" else "csv")
    label = str(source.path)
    try:
        if fmt == "parquet":
            return pd.read_parquet(source.path)
        sep = r"\s+" if fmt == "whitespace" else (source.sep or ",")
        return pd.read_csv(source.path, sep=sep, header=0 if source.header else None, names=source.names, dtype=str,
                           keep_default_na=True, encoding=source.encoding or "utf-8-sig")
    except UnicodeDecodeError as err:
        rule = (f"is not {source.encoding or 'UTF-8'} text (byte 0x{err.object[err.start]:02x} at offset {err.start}): "
                "set `encoding:` for this table in a mapping, e.g. latin-1 or cp1252")
    except pd.errors.EmptyDataError:
        rule = "is empty (not even a header row)"
    except pd.errors.ParserError as err:
        # pandas names the line and the field counts (never the line itself); keep only that part
        rule = f"cannot be read as {fmt}: {str(err).splitlines()[0][:160]}"
    except (OSError, ValueError) as err:
        rule = f"cannot be read as {fmt} ({type(err).__name__}); check `format` and `sep` in the mapping"
    except Exception as err:  # pyarrow and the C parser raise their own kinds for files that are not what they claim
        rule = f"cannot be read as {fmt} ({type(err).__name__})"
    raise ContractError([Violation(label, "-", rule, 0)])


def ingest(plan: IngestPlan, raw_dir: Path, progress: Callable[[str], None] | None = None, *, force: bool = False,
           assume_utc: bool = False, window: TimeWindow | None = None) -> dict[str, int]:
    """Validate every table of `plan`, then replace `raw_dir` as a whole; on any error nothing changes.

    `force`: allow empty users/events to replace the last good data. `assume_utc`: timestamps without an offset,
    in a table whose source names no timezone, are UTC. `window`: the dates timestamps may take.
    """
    frames: dict[str, pd.DataFrame] = {}
    violations: list[Violation] = []
    # users may be derived from events, so events go first
    order = sorted(plan.tables, key=lambda t: (t != "events", TABLES.index(t)))
    for table in order:
        source = plan.tables[table]
        if progress:
            progress(table)
        label = str(source.path) if source.path else f"{table} (derived from {source.derive_from})"
        if source.derive_from and source.derive_from in plan.tables and source.derive_from not in frames:
            continue  # its source table failed and is reported: deriving from nothing would add a misleading error
        timezone = source.timezone or ("UTC" if assume_utc else None)
        try:
            frames[table] = conform(table, read_source(table, source, frames), label, timezone=timezone, window=window,
                                    duplicates=source.duplicates)
        except ContractError as err:
            violations += err.violations
            continue
        except (TypeError, ValueError, OverflowError) as err:  # a value of a kind no rule foresaw: refuse, never crash
            violations.append(Violation(label, "-", f"could not be checked ({type(err).__name__}): a column holds values "
                                        "of an unexpected kind; export plain text, numbers and timestamps", 0))
            continue
        if table in _NOT_EMPTY and frames[table].empty and not force:
            violations.append(Violation(label, "-", "has no rows (a header-only export?): the last good data stays in "
                                        "place; pass --force to replace it with an empty table", 0))
    if not violations:
        violations += _cross_checks(frames)
    if violations:
        raise ContractError(violations)
    write_raw(frames, raw_dir)
    return {t: len(frames[t]) for t in TABLES if t in frames}


def ingest_window(past_years: int, future_days: int) -> TimeWindow:
    """The dates timestamps may take, around now (Settings.ingest_past_years / ingest_future_days)."""
    return TimeWindow.around(pd.Timestamp.now(tz="UTC"), past_years, future_days)


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
                                     repr(ids[unknown].iloc[0][:24])))
    return out


def write_raw(frames: dict[str, pd.DataFrame], raw_dir: Path) -> None:
    """Write tables to a new snapshot folder, then point `raw_dir` at it in one atomic step.

    `raw_dir` is a symlink to `.<name>-snap-<id>`; the new snapshot is written and synced in a staging folder,
    renamed complete, and the link replaced with os.replace (atomic). A kill at any moment leaves `raw_dir`
    on the last good snapshot or on the new one; `recover_raw` repairs the one gap (a pre-symlink folder moved
    aside but no link yet), and leftovers of earlier runs are removed after the swap.
    """
    def fill(staging: Path) -> tuple[str, dict[str, int]]:
        digest = hashlib.sha256()
        for table, df in frames.items():
            path = staging / f"{table}.parquet"
            _write_parquet(df, path)
            _fsync(path)
            digest.update(table.encode())
            # Row hashes are per row, so hashing by slices of rows feeds the digest the same bytes as one pass
            # over the whole frame, without its temporaries (GBs for a 1M-user world's 31M events).
            for start in range(0, len(df), _CHUNK_ROWS):
                digest.update(_row_hashes(df.iloc[start:start + _CHUNK_ROWS]))
        return digest.hexdigest()[:16], {t: len(df) for t, df in frames.items()}

    _publish(raw_dir, fill)


def write_raw_parts(parts: Iterable[dict[str, pd.DataFrame]], raw_dir: Path) -> dict[str, int]:
    """`write_raw` for tables that arrive in parts of rows (a world simulated in chunks of users): each part is
    appended to its tables' files as it comes, so only one part is in memory at a time. A table's rows are its
    parts' rows in order, read back with the first part's column types, and the snapshot id is the one `write_raw`
    gives those rows; returns the rows per table."""
    def fill(staging: Path) -> tuple[str, dict[str, int]]:
        files: dict[str, _PartedTable] = {}
        try:
            for part in parts:
                for table, df in part.items():
                    if table not in files:
                        files[table] = _PartedTable(staging, table)
                    files[table].append(df)
                part = df = None  # written: the next part is made without this one held
        finally:
            for f in files.values():
                f.close()
        digest = hashlib.sha256()
        for table, f in files.items():
            _fsync(f.path)
            digest.update(table.encode())
            with open(f.hashes, "rb") as hashes:  # the row hashes in row order: the bytes of `write_raw`'s one pass
                while block := hashes.read(1 << 20):
                    digest.update(block)
            f.hashes.unlink()
        return digest.hexdigest()[:16], {t: f.rows for t, f in files.items()}

    return _publish(raw_dir, fill)


def _row_hashes(df: pd.DataFrame) -> bytes:
    return pd.util.hash_pandas_object(df, index=False).values.tobytes()


class _PartedTable:
    """One raw table written part by part: Parquet row groups of at most _CHUNK_ROWS rows, and its row hashes."""

    def __init__(self, staging: Path, table: str):
        self.path, self.hashes = staging / f"{table}.parquet", staging / f".{table}.rowhashes"
        self.rows, self.writer, self.schema, self.empty = 0, None, None, None
        self._hash_file = open(self.hashes, "wb")

    def append(self, df: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if df.empty:  # an empty part (a chunk without suppressions) adds nothing; kept in case no part has rows
            self.empty = df if self.empty is None else self.empty
            return
        if self.writer is None:
            self.schema = _parts_schema(pa.Schema.from_pandas(df, preserve_index=False))
            self.writer = pq.ParquetWriter(self.path, self.schema)
        for start in range(0, len(df), _CHUNK_ROWS):
            piece = df.iloc[start:start + _CHUNK_ROWS]
            try:
                arrow = pa.Table.from_pandas(piece, preserve_index=False).cast(self.schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as err:
                raise ValueError(f"{self.path.stem}: a part's columns do not match the first part's "
                                 f"({str(err).splitlines()[0][:200]})") from None
            self.writer.write_table(arrow)
            self._hash_file.write(_row_hashes(piece))
        self.rows += len(df)

    def close(self) -> None:
        self._hash_file.close()
        if self.writer is not None:
            self.writer.close()
        elif self.empty is not None:
            self.empty.to_parquet(self.path, index=False)


def _parts_schema(schema):
    """The first part's schema with every dictionary column indexed by int32: pandas picks the narrowest index per
    frame (int8 for a few categories), so parts of one table may differ only there."""
    import pyarrow as pa

    fields = [f.with_type(pa.dictionary(pa.int32(), f.type.value_type)) if pa.types.is_dictionary(f.type) else f
              for f in schema]
    return pa.schema(fields, metadata=schema.metadata)


def _publish(raw_dir: Path, fill: Callable[[Path], tuple[str, dict[str, int]]]) -> dict[str, int]:
    """Fill a staging folder (`fill` writes the tables and returns the snapshot id and rows per table), then swap it
    in as `raw_dir`'s snapshot atomically (see `write_raw`)."""
    raw_dir = Path(raw_dir)
    raw_dir.parent.mkdir(parents=True, exist_ok=True)
    recover_raw(raw_dir)
    token = uuid.uuid4().hex[:8]
    staging = raw_dir.parent / f".{raw_dir.name}-staging-{token}"
    snapshot = raw_dir.parent / f".{raw_dir.name}-snap-{token}"
    staging.mkdir()
    try:
        snapshot_id, rows = fill(staging)
        info = {
            "snapshot_id": snapshot_id,
            "ingested_at": datetime.now(UTC).isoformat(),
            "rows": rows,
        }
        (staging / MANIFEST).write_text(json.dumps(info, indent=2))  # written last: a snapshot with it is complete
        _fsync(staging / MANIFEST)
        _checkpoint("staged")
        staging.rename(snapshot)
        _fsync(raw_dir.parent)
        _checkpoint("renamed")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if raw_dir.is_dir() and not raw_dir.is_symlink():  # a folder from before snapshots were linked: move it aside
        raw_dir.rename(raw_dir.parent / f".{raw_dir.name}-snap-{uuid.uuid4().hex[:8]}")
        _checkpoint("moved_aside")
    _point(raw_dir, snapshot)
    _checkpoint("swapped")
    _clean(raw_dir)
    return rows


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    """`df.to_parquet(path, index=False)`, converted to Arrow one slice of rows at a time (one row group each, as
    pyarrow's default group size), so a table of tens of millions of rows is never copied whole."""
    if len(df) <= _CHUNK_ROWS:
        df.to_parquet(path, index=False)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.Schema.from_pandas(df, preserve_index=False)  # types from the whole frame, not from a first slice
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, len(df), _CHUNK_ROWS):
            writer.write_table(pa.Table.from_pandas(df.iloc[start:start + _CHUNK_ROWS], schema=schema, preserve_index=False))


def _point(raw_dir: Path, snapshot: Path) -> None:
    """Make `raw_dir` a relative symlink to `snapshot` atomically (a copied home keeps working)."""
    link = raw_dir.parent / f".{raw_dir.name}-link-{uuid.uuid4().hex[:8]}"
    link.symlink_to(snapshot.name, target_is_directory=True)
    os.replace(link, raw_dir)
    _fsync(raw_dir.parent)


def recover_raw(raw_dir: Path) -> None:
    """If `raw_dir` is missing while complete snapshots exist (a kill between two steps of a swap), point it at
    the newest; leave everything else alone."""
    raw_dir = Path(raw_dir)
    if raw_dir.exists() or not raw_dir.parent.is_dir():
        return
    snapshots = [(json.loads((p / MANIFEST).read_text())["ingested_at"], p) for p in _snapshots(raw_dir)
                 if (p / MANIFEST).is_file()]
    if snapshots:
        if raw_dir.is_symlink():  # a dangling link: its snapshot is gone
            raw_dir.unlink()
        _point(raw_dir, max(snapshots)[1])


def _snapshots(raw_dir: Path) -> list[Path]:
    """Complete-or-not snapshot folders beside `raw_dir` (`-old-` ones were moved aside by earlier versions)."""
    return sorted([*raw_dir.parent.glob(f".{raw_dir.name}-snap-*"), *raw_dir.parent.glob(f".{raw_dir.name}-old-*")])


def _clean(raw_dir: Path) -> None:
    """Remove every snapshot but the current one, and leftovers (staging folders, links, old folders) of any run."""
    current = raw_dir.resolve()
    for pattern in ("snap", "staging", "link", "old"):
        for path in raw_dir.parent.glob(f".{raw_dir.name}-{pattern}-*"):
            if path.resolve() == current:
                continue
            if path.is_symlink() or path.is_file():
                path.unlink(missing_ok=True)
            else:
                shutil.rmtree(path, ignore_errors=True)


def _fsync(path: Path) -> None:
    """Flush a file or a folder's entries to disk, so a swap never points at data still in the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _checkpoint(step: str) -> None:
    """A named point between the steps of a swap; does nothing (tests replace it to crash there)."""


def manifest(raw_dir: Path) -> dict:
    """The manifest of the current raw snapshot (snapshot id, row counts)."""
    recover_raw(raw_dir)
    path = Path(raw_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"no ingested data in {raw_dir}: run `nextbest simulate` or `nextbest ingest` first")
    return json.loads(path.read_text())


def raw_path(raw_dir: Path, table: str) -> Path | None:
    """The Parquet file of one raw table of the current snapshot (for engines that read it directly), or None."""
    recover_raw(raw_dir)
    path = Path(raw_dir) / f"{table}.parquet"
    return path if path.exists() else None


def read_raw(raw_dir: Path, table: str) -> pd.DataFrame | None:
    """One raw table of the current snapshot, or None if the company did not provide it."""
    recover_raw(raw_dir)
    path = Path(raw_dir) / f"{table}.parquet"
    return pd.read_parquet(path) if path.exists() else None
