"""Segments: saved audiences written in the offer-eligibility rule language, evaluated offline or online.

A segment rule is `clause and clause ...` with `feature op value` clauses exactly as offer eligibility
(features/contract.py `parse_eligibility`; no eval), plus one pseudo-feature: `segment in [a, b]` (or
`segment == a`, `segment not in [...]`) is membership of other saved segments, which is how a rule says
"or". Two evaluators with one meaning (a test holds them equal):
- offline, point-in-time: the rule compiled to DuckDB SQL over the feature Parquet tables, each user's
  latest row at or before `as_of` (values are bound parameters, identifiers checked against the tables);
- online: serving/policy.py `matches` over the online features the decision service reads.
An unknown (missing) value never qualifies, also for `!=` and `not in`: fail closed, like eligibility.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nextbest.features.contract import Clause, parse_eligibility

__all__ = ["SEGMENT", "SegmentError", "Segment", "split_rule", "check_rule", "referenced", "compile_sql",
           "member_ids", "count", "export", "online_mask", "TABLES"]

SEGMENT = "segment"  # the pseudo-feature naming other segments
# Feature tables a segment may read, in lookup order: a column is taken from the first table that has it.
TABLES: tuple[str, ...] = ("profile", "tags", "behaviour", "channel", "time_profile")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_NOT_A_VALUE = re.compile(r"\s(or|and|not)\s|==|!=|>=|<=|<|>", re.IGNORECASE)  # a value that hides another clause
_MAX_DEPTH = 16  # segment references deeper than this are a mistake (or a cycle)


class SegmentError(ValueError):
    """A segment rule or name a marketer can fix; the message says what and how."""


@dataclass(frozen=True)
class Segment:
    name: str
    rule: str
    description: str = ""


def check_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise SegmentError(f"segment name {name!r}: use 1-64 lower-case letters, digits and _ starting with a letter, "
                           "e.g. lapsed_buyers")
    return name


def split_rule(rule: str) -> tuple[list[str], list[Clause]]:
    """The rule's feature part (clause texts, for `policy.matches`) and its segment clauses; SegmentError if the
    rule cannot be read."""
    try:
        clauses = parse_eligibility(rule)
    except ValueError as err:
        raise SegmentError(str(err).replace("eligibility clause", "segment rule clause")) from None
    if not clauses:
        raise SegmentError("a segment rule needs at least one clause, e.g. `lifecycle_stage in [customer]`")
    for c in clauses:
        for v in c.value if isinstance(c.value, tuple) else (c.value,):
            if isinstance(v, str) and _NOT_A_VALUE.search(v):
                raise SegmentError(f"segment rule clause `{c.feature} {c.op} {v}` has a second operator in its value: "
                                   "clauses join with `and` only; for `or`, save each alternative as a segment and "
                                   "write `segment in [a, b]`")
    texts = re.split(r"\s+and\s+", str(rule).strip())  # the split parse_eligibility makes, clause by clause
    feature_texts = [t for t, c in zip(texts, clauses, strict=True) if c.feature != SEGMENT]
    segment_clauses = [c for c in clauses if c.feature == SEGMENT]
    for c in segment_clauses:
        if c.op not in ("==", "!=", "in", "not in"):
            raise SegmentError(f"`segment {c.op} ...`: segments compare with ==, !=, in or not in")
    return feature_texts, segment_clauses


def referenced(rule: str) -> list[str]:
    """Names of the segments a rule refers to."""
    out = []
    for c in split_rule(rule)[1]:
        out += [str(v) for v in c.value] if isinstance(c.value, tuple) else [str(c.value)]
    return out


def check_rule(rule: str, lookup: Callable[[str], str | None], columns: set[str] | None = None,
               _seen: tuple[str, ...] = ()) -> None:
    """Raise SegmentError unless the rule reads, names only known columns (when given) and refers only to saved
    segments, without a cycle. `lookup(name)` is a saved segment's rule or None."""
    feature_texts, _ = split_rule(rule)
    if columns is not None:
        unknown = sorted({c.feature for c in parse_eligibility(" and ".join(feature_texts))} - columns) \
            if feature_texts else []
        if unknown:
            raise SegmentError(f"unknown feature(s) {unknown} in the segment rule; known features include: "
                               f"{', '.join(sorted(columns)[:40])} (see `nextbest segment columns`)")
    for name in referenced(rule):
        if name in _seen or len(_seen) > _MAX_DEPTH:
            raise SegmentError(f"segment {name!r} refers back to itself through {' -> '.join(_seen + (name,))}")
        other = lookup(name)
        if other is None:
            raise SegmentError(f"the rule refers to segment {name!r}, which is not saved; create it first "
                               "(`nextbest segment list` shows the saved ones)")
        check_rule(other, lookup, columns, _seen + (name,))


# --- offline: DuckDB over the feature tables ----------------------------------------------------------------

def table_columns(feature_dir: Path) -> dict[str, tuple[str, pa.DataType]]:
    """column -> (table, Arrow type) for every column a segment may read (first table wins)."""
    out: dict[str, tuple[str, pa.DataType]] = {}
    for table in TABLES:
        path = Path(feature_dir) / f"{table}.parquet"
        if path.exists():
            for field in pq.read_schema(path):
                if field.name not in ("user_id", "event_timestamp"):
                    out.setdefault(field.name, (table, field.type))
    return out


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t)


def _clause_sql(c: Clause, column: str, kind: pa.DataType, params: list) -> str:
    """One clause as SQL with the meaning of serving/policy.py `_clause_holds`; values go into `params`."""
    col = f'"{column}"'  # the name was checked against the table's own columns, and _NAME-like: safe to quote
    as_text = f"CAST({col} AS VARCHAR)" if not pa.types.is_boolean(kind) else \
        f"CASE WHEN {col} THEN 'True' ELSE 'False' END"  # Python's str(True)
    if c.op in ("in", "not in"):
        values = c.value if isinstance(c.value, tuple) else (c.value,)
        nums = [float(v) for v in values if isinstance(v, float)]
        texts = [str(v) for v in values if isinstance(v, str)]
        parts = []
        if nums and _is_numeric(kind):
            parts.append(f"CAST({col} AS DOUBLE) IN ({', '.join('?' * len(nums))})")
            params += nums
        if texts:
            parts.append(f"{as_text} IN ({', '.join('?' * len(texts))})")
            params += texts
        hit = " OR ".join(parts) if parts else "FALSE"
        return f"({col} IS NOT NULL AND {'' if c.op == 'in' else 'NOT '}({hit}))"
    if isinstance(c.value, float):
        params.append(c.value)
        value = f"TRY_CAST({col} AS DOUBLE)"
        return f"COALESCE({value} {c.op} ?, FALSE)"
    params.append(str(c.value))
    return f"COALESCE({as_text} {c.op} ?, FALSE)"


def _feature_clauses(feature_texts: list[str], columns: dict[str, tuple[str, pa.DataType]]) -> list[Clause]:
    clauses = list(parse_eligibility(" and ".join(feature_texts))) if feature_texts else []
    for c in clauses:
        if c.feature not in columns:
            raise SegmentError(f"unknown feature {c.feature!r} in the segment rule; it is in none of the feature "
                               f"tables ({', '.join(TABLES)}); `nextbest segment columns` lists them")
    return clauses


def _segments_sql(segment_clauses: list[Clause], lookup: Callable[[str], str | None],
                  columns: dict[str, tuple[str, pa.DataType]], params: list, depth: int) -> tuple[list[str], set[str]]:
    """Conditions for `segment in [...]` clauses: each referenced segment's rule expanded inline."""
    conds, used = [], set()
    for c in segment_clauses:
        names = [str(v) for v in c.value] if isinstance(c.value, tuple) else [str(c.value)]
        subs = []
        for name in names:
            other = lookup(name)
            if other is None:
                raise SegmentError(f"the rule refers to segment {name!r}, which is not saved")
            sql, sub_used = compile_sql(other, lookup, columns, params, depth + 1)
            subs.append(f"({sql})")
            used |= sub_used
        member = " OR ".join(subs)
        conds.append(f"({member})" if c.op in ("==", "in") else f"NOT ({member})")
    return conds, used


def compile_sql(rule: str, lookup: Callable[[str], str | None], columns: dict[str, tuple[str, pa.DataType]],
                params: list, _depth: int = 0) -> tuple[str, set[str]]:
    """A WHERE condition over the `users` relation (one row per user, every referenced column) and the columns it
    reads. Segment references are expanded inline; the result is the same as evaluating each referenced segment."""
    if _depth > _MAX_DEPTH:
        raise SegmentError("segment references nest too deep (a cycle?)")
    feature_texts, segment_clauses = split_rule(rule)
    clauses = _feature_clauses(feature_texts, columns)
    conds = [_clause_sql(c, c.feature, columns[c.feature][1], params) for c in clauses]
    seg_conds, used = _segments_sql(segment_clauses, lookup, columns, params, _depth)
    return " AND ".join(conds + seg_conds) or "TRUE", used | {c.feature for c in clauses}


def _query(feature_dir: Path, rule: str, lookup: Callable[[str], str | None], as_of: datetime | None,
           what: str) -> tuple[str, list]:
    """The rule as one query: one row per user of the profile table (signed up by `as_of`) with each used column's
    latest value at or before `as_of` (default: the latest), read only from the tables that hold them.

    The rule's own feature clauses are applied inside each table's latest-value subquery, before the joins (a
    missing value never qualifies, so an inner join is the same answer): the joins then see the few users that
    qualify on each table, not every user (measured in benchmarks/RESULTS.md). Clauses of referenced segments,
    which may combine tables with OR / NOT, are applied after the joins."""
    columns = table_columns(feature_dir)
    feature_texts, segment_clauses = split_rule(rule)
    clauses = _feature_clauses(feature_texts, columns)
    seg_params: list = []
    seg_conds, seg_used = _segments_sql(segment_clauses, lookup, columns, seg_params, 0)
    used = seg_used | {c.feature for c in clauses}
    profile = Path(feature_dir) / "profile.parquet"
    if not profile.exists():
        raise SegmentError("no feature tables yet: run `nextbest features build` first")
    params: list = []
    signed_up = ""
    if as_of is not None:  # a user who had not signed up by then is no one's audience yet
        signed_up = "WHERE event_timestamp <= ?"
        params.append(as_of)
    by_table: dict[str, list[str]] = {}
    for name in sorted(used):
        by_table.setdefault(columns[name][0], []).append(name)
    select, joins = ["p.user_id"], []
    for k, (table, names) in enumerate(sorted(by_table.items())):
        alias = f"t{k}"
        path = str(Path(feature_dir) / f"{table}.parquet").replace("'", "''")
        cut = ""
        if as_of is not None:
            cut = "WHERE event_timestamp <= ?"
            params.append(as_of)
        picks = ", ".join(f'arg_max("{n}", event_timestamp) AS "{n}"' for n in names)
        latest = f"SELECT user_id, {picks} FROM read_parquet('{path}') {cut} GROUP BY user_id"
        own = [_clause_sql(c, c.feature, columns[c.feature][1], params) for c in clauses if columns[c.feature][0] == table]
        if own:
            latest = f"SELECT * FROM ({latest}) WHERE {' AND '.join(own)}"
        joins.append(f"{'JOIN' if own else 'LEFT JOIN'} ({latest}) {alias} ON {alias}.user_id = p.user_id")
        select += [f'{alias}."{n}"' for n in names]
    path = str(profile).replace("'", "''")
    # The profile table has one row per user (user_id is unique in the users contract): no DISTINCT needed.
    users = (f"SELECT {', '.join(select)} FROM (SELECT user_id FROM read_parquet('{path}') {signed_up}) p "
             + " ".join(joins))
    return f"WITH users AS ({users}) SELECT {what} FROM users WHERE {' AND '.join(seg_conds) or 'TRUE'}", \
        params + seg_params


def _connect():
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con


def count(feature_dir: Path, rule: str, lookup: Callable[[str], str | None], as_of: datetime | None = None) -> int:
    """How many users the rule holds for, as of a time (default: each user's latest features)."""
    sql, params = _query(feature_dir, rule, lookup, as_of, "count(*)")
    con = _connect()
    try:
        return int(con.execute(sql, params).fetchone()[0])
    finally:
        con.close()


def member_ids(feature_dir: Path, rule: str, lookup: Callable[[str], str | None],
               as_of: datetime | None = None) -> list[str]:
    """The members' user ids, sorted (a stable order: batches and resume depend on it)."""
    sql, params = _query(feature_dir, rule, lookup, as_of, "user_id")
    con = _connect()
    try:
        return sorted(str(r[0]) for r in con.execute(sql, params).fetchall())
    finally:
        con.close()


def export(feature_dir: Path, rule: str, lookup: Callable[[str], str | None], out: Path,
           as_of: datetime | None = None) -> int:
    """Write the members (user_id and the columns the rule reads) to Parquet or CSV, by the file's suffix; a
    complete file or none. Returns the number of members."""
    suffix = Path(out).suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise SegmentError(f"export to {Path(out).name}: the file must end in .parquet or .csv")
    sql, params = _query(feature_dir, rule, lookup, as_of, "*")
    con = _connect()
    try:
        df = con.execute(sql + " ORDER BY user_id", params).df()
    finally:
        con.close()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    try:
        df.to_parquet(tmp, index=False) if suffix == ".parquet" else df.to_csv(tmp, index=False)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return len(df)


# --- online: the decision service's features ---------------------------------------------------------------

def online_mask(rule: str, users: dict[str, np.ndarray], lookup: Callable[[str], str | None],
                _depth: int = 0) -> np.ndarray:
    """Per user (the online feature columns of `Runtime.features.fetch`), whether the rule holds now."""
    from nextbest.serving.policy import matches

    if _depth > _MAX_DEPTH:
        raise SegmentError("segment references nest too deep (a cycle?)")
    feature_texts, segment_clauses = split_rule(rule)
    ok = matches(" and ".join(feature_texts), users) if feature_texts else np.ones(len(users["user_id"]), dtype=bool)
    for c in segment_clauses:
        names = [str(v) for v in c.value] if isinstance(c.value, tuple) else [str(c.value)]
        member = np.zeros(len(ok), dtype=bool)
        for name in names:
            other = lookup(name)
            if other is None:
                raise SegmentError(f"the rule refers to segment {name!r}, which is not saved")
            member |= online_mask(other, users, lookup, _depth + 1)
        ok &= member if c.op in ("==", "in") else ~member
    return ok
