"""Labels and purchase histories aggregated from the events table in DuckDB, never loaded whole into pandas.

The events table is given as a DataFrame (tests, small data) or as its Parquet file (`read_raw_tables(...,
on_disk=...)`): the same SQL runs on either, so at 1M users (31M events) training reads only the aggregates.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

__all__ = ["Table", "connect", "event_span", "purchase_labels", "churn_labels", "purchases", "MEMORY_LIMIT"]

Table = pd.DataFrame | Path  # a raw table in memory, or its Parquet file
# The aggregates here stay small (one row per training row); the limit keeps a join of 4M rows with 31M events
# from taking the machine, spilling beyond it.
MEMORY_LIMIT = "2GB"


@contextmanager
def connect(**tables: Table) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB connection (UTC, bounded memory) where each keyword is a view over a DataFrame or a Parquet file;
    a `_pos` column numbers each table's rows in file / frame order."""
    con = duckdb.connect()
    try:
        con.execute(f"SET TimeZone = 'UTC'; SET memory_limit = '{MEMORY_LIMIT}'; "
                    f"SET temp_directory = '{Path(tempfile.gettempdir()) / 'nextbest-duckdb'}'; "
                    "SET preserve_insertion_order = false")
        for name, table in tables.items():
            if isinstance(table, pd.DataFrame):
                con.register(f"{name}_frame", table.assign(_pos=np.arange(len(table), dtype="int64")))
                con.execute(f"CREATE VIEW {name} AS SELECT * FROM {name}_frame")
            else:
                path = str(table).replace("'", "''")
                con.execute(f"CREATE VIEW {name} AS SELECT * EXCLUDE (file_row_number), "
                            f"file_row_number AS _pos FROM read_parquet('{path}', file_row_number = true)")
        yield con
    finally:
        con.close()


def columns(con: duckdb.DuckDBPyConnection, view: str) -> set[str]:
    """The column names of a view."""
    return {r[0] for r in con.execute(f"DESCRIBE {view}").fetchall()}


def event_span(events: Table) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The first and the last event time (UTC)."""
    if isinstance(events, pd.DataFrame):  # cheap in memory; the same answer as the SQL
        ts = pd.to_datetime(events["ts"], utc=True)
        return ts.min(), ts.max()
    with connect(events=events) as con:
        first, last = con.execute("SELECT min(ts::TIMESTAMPTZ), max(ts::TIMESTAMPTZ) FROM events").fetchone()
    return pd.Timestamp(first).tz_convert("UTC"), pd.Timestamp(last).tz_convert("UTC")


def _rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The (user, time) keys of training rows, as DuckDB joins them."""
    return pd.DataFrame({"user_id": rows["user_id"].astype(str).to_numpy(),
                         "t": pd.DatetimeIndex(pd.to_datetime(rows["event_timestamp"], utc=True))})


def _per_row(con: duckdb.DuckDBPyConnection, sql: str, n: int, names: tuple[str, ...]) -> list[np.ndarray]:
    """Integer columns `names` of a query returning (_pos, names...) for some rows; 0 for the rows it omits."""
    found = con.execute(sql).fetchnumpy()
    out = []
    for name in names:
        col = np.zeros(n, dtype="int64")
        col[found["_pos"].astype("int64")] = np.asarray(found[name], dtype="int64")
        out.append(col)
    return out


def purchase_labels(rows: pd.DataFrame, events: Table, horizon_days: int, category: str | None = None) -> np.ndarray:
    """1 where the row's user purchases (in `category`) in [t, t + horizon)."""
    where = "" if category is None else "AND e.category::VARCHAR = $category"
    with connect(rows=_rows(rows), events=events) as con:
        sql = f"""
            SELECT r._pos, 1 AS label FROM rows r
            JOIN (SELECT user_id::VARCHAR AS user_id, ts::TIMESTAMPTZ AS ts FROM events e
                  WHERE e.type::VARCHAR = 'purchase' {where}) e
              ON e.user_id = r.user_id AND e.ts >= r.t AND e.ts < r.t + INTERVAL ({int(horizon_days)}) DAY
            GROUP BY r._pos"""
        if category is not None:
            sql = sql.replace("$category", "'" + category.replace("'", "''") + "'")
        return _per_row(con, sql, len(rows), ("label",))[0]


def churn_labels(rows: pd.DataFrame, events: Table, horizon_days: int, active_days: int,
                 terminal_types: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(label, eligible): eligible = any event in the `active_days` before t; label = no non-terminal event in
    [t, t + horizon), or a terminal event in it."""
    terminal = ", ".join("'" + t.replace("'", "''") + "'" for t in terminal_types) or "NULL"
    with connect(rows=_rows(rows), events=events) as con:
        sql = f"""
            SELECT r._pos,
                   max(e.ts < r.t)::INT AS before,
                   max(e.ts >= r.t AND NOT e.terminal)::INT AS active_after,
                   max(e.ts >= r.t AND e.terminal)::INT AS terminal_after
            FROM rows r
            JOIN (SELECT user_id::VARCHAR AS user_id, ts::TIMESTAMPTZ AS ts,
                         coalesce(type::VARCHAR IN ({terminal}), false) AS terminal FROM events) e
              ON e.user_id = r.user_id AND e.ts >= r.t - INTERVAL ({int(active_days)}) DAY
             AND e.ts < r.t + INTERVAL ({int(horizon_days)}) DAY
            GROUP BY r._pos"""
        before, active_after, terminal_after = _per_row(con, sql, len(rows), ("before", "active_after", "terminal_after"))
    return ((active_after == 0) | (terminal_after == 1)).astype("int64"), before.astype(bool)


def purchases(events: Table) -> pd.DataFrame:
    """The purchase events only (user_id as text, ts in UTC): what purchase histories (BG/NBD) read."""
    with connect(events=events) as con:
        out = con.execute("SELECT user_id::VARCHAR AS user_id, ts::TIMESTAMPTZ AS ts, 'purchase' AS type FROM events "
                          "WHERE type::VARCHAR = 'purchase' ORDER BY _pos").df()
    out["ts"] = pd.to_datetime(out["ts"], utc=True)
    return out
