"""The raw-data contract: what each table a company hands us must look like, checked with pandera."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

__all__ = [
    "TABLES",
    "REQUIRED_TABLES",
    "EVENT_TYPES",
    "SUPPRESSION_REASONS",
    "Column",
    "COLUMNS",
    "ContractError",
    "Violation",
    "conform",
    "parse_eligibility",
    "Clause",
]

Kind = Literal["str", "ts", "float", "int", "bool"]

TABLES: tuple[str, ...] = ("users", "events", "contacts", "offers", "channels", "suppressions", "labels")
REQUIRED_TABLES: tuple[str, ...] = ("users", "events")
# Known behaviour event types; other types are kept (they count towards activity) but not interpreted.
EVENT_TYPES: tuple[str, ...] = ("register", "app_open", "view", "search", "add_to_cart", "purchase")
SUPPRESSION_REASONS: tuple[str, ...] = ("complaint", "opt_out", "regulator", "vip", "manual")


@dataclass(frozen=True)
class Column:
    """One contract column: its kind, whether it must be present and whether it may be empty."""

    name: str
    kind: Kind
    required: bool = True
    nullable: bool = False
    checks: tuple[pa.Check, ...] = ()


def _non_negative() -> pa.Check:
    return pa.Check.ge(0, error="must be >= 0")


COLUMNS: dict[str, tuple[Column, ...]] = {
    "users": (
        Column("user_id", "str", checks=(pa.Check(lambda s: ~s.duplicated(), error="must be unique"),)),
        Column("signup_at", "ts"),
        Column("timezone", "str", checks=(pa.Check(lambda s: s.map(_is_timezone), error="must be an IANA timezone such as Europe/Berlin"),)),
        # consent_<channel> columns are matched by prefix, see _consent_columns.
    ),
    "events": (
        Column("user_id", "str"),
        Column("ts", "ts"),
        Column("type", "str", checks=(pa.Check.str_length(min_value=1, error="must not be empty"),)),
        Column("product_id", "str", required=False, nullable=True),
        Column("category", "str", required=False, nullable=True),
        Column("amount", "float", required=False, nullable=True, checks=(_non_negative(),)),
        Column("quantity", "float", required=False, nullable=True, checks=(_non_negative(),)),
    ),
    "contacts": (
        Column("contact_id", "str", checks=(pa.Check(lambda s: ~s.duplicated(), error="must be unique"),)),
        Column("user_id", "str"),
        Column("sent_at", "ts"),
        Column("campaign_id", "str"),
        Column("offer_id", "str", nullable=True),
        Column("channel", "str", nullable=True),
        Column("variant", "str", required=False, nullable=True),
        Column("propensity", "float", required=False, nullable=True,
               checks=(pa.Check.in_range(0, 1, include_min=False, error="must be in (0, 1]"),)),
        Column("delivered_at", "ts", required=False, nullable=True),
        Column("opened_at", "ts", required=False, nullable=True),
        Column("clicked_at", "ts", required=False, nullable=True),
        Column("converted_at", "ts", required=False, nullable=True),
        Column("revenue", "float", required=False, nullable=True, checks=(_non_negative(),)),
        Column("unsubscribed_at", "ts", required=False, nullable=True),
        Column("complained_at", "ts", required=False, nullable=True),
    ),
    "offers": (
        Column("offer_id", "str", checks=(pa.Check(lambda s: ~s.duplicated(), error="must be unique"),)),
        Column("category", "str"),
        Column("value", "float", checks=(pa.Check.gt(0, error="must be > 0"),)),
        Column("eligibility", "str", required=False, nullable=True,
               checks=(pa.Check(lambda s: s.map(_is_eligibility), error="must be clauses like `lifecycle_stage in [customer] and recency_days >= 30`"),)),
        Column("valid_from", "ts", required=False, nullable=True),
        Column("valid_to", "ts", required=False, nullable=True),
        Column("priority", "int", required=False, nullable=True),
    ),
    "channels": (
        Column("channel", "str", checks=(pa.Check(lambda s: ~s.duplicated(), error="must be unique"),)),
        Column("cost", "float", checks=(_non_negative(),)),
        Column("quiet_hours", "str", required=False, nullable=True,
               checks=(pa.Check.str_matches(r"^([01]?\d|2[0-3])-([01]?\d|2[0-3])$", error="must look like 22-8 (local hours, start-end)"),)),
        Column("daily_capacity", "int", required=False, nullable=True, checks=(_non_negative(),)),
    ),
    "suppressions": (
        Column("user_id", "str"),
        Column("channel", "str"),
        Column("reason", "str", checks=(pa.Check.isin(SUPPRESSION_REASONS, error=f"must be one of {', '.join(SUPPRESSION_REASONS)}"),)),
        Column("since", "ts"),
    ),
    "labels": (
        Column("user_id", "str"),
        Column("as_of", "ts"),
        Column("label", "int", checks=(pa.Check.isin([0, 1], error="must be 0 or 1"),)),
    ),
}


@dataclass(frozen=True)
class Violation:
    """One broken rule: which file and column, which rule, how many rows."""

    file: str
    column: str
    rule: str
    rows: int
    example: str = ""

    def __str__(self) -> str:
        example = f" (e.g. {self.example})" if self.example else ""
        return f"{self.file}: column '{self.column}' {self.rule}: {self.rows} row(s){example}"


class ContractError(ValueError):
    """Raised when input breaks the raw-data contract; lists every violation found."""

    def __init__(self, violations: list[Violation]):
        self.violations = violations
        lines = "\n".join(f"  - {v}" for v in violations)
        super().__init__(f"input breaks the raw-data contract ({len(violations)} problem(s)):\n{lines}")


def conform(table: str, df: pd.DataFrame, file: str) -> pd.DataFrame:
    """Return `df` with contract dtypes (UTC timestamps, floats, strings) or raise ContractError."""
    if table not in COLUMNS:
        raise ContractError([Violation(file, "-", f"is not a known table (known: {', '.join(TABLES)})", 0)])
    spec = COLUMNS[table]
    missing = [c.name for c in spec if c.required and c.name not in df.columns]
    if missing:
        have = ", ".join(map(str, df.columns[:12]))
        raise ContractError([
            Violation(file, name, f"is required but missing (columns found: {have}; map yours with a column mapping)", len(df))
            for name in missing
        ])
    out = df.copy()
    violations: list[Violation] = []
    columns = [c for c in spec if c.name in out.columns]
    if table == "users":
        columns += [Column(name, "bool") for name in _consent_columns(out)]
    for col in columns:
        parsed, bad = _parse(out[col.name], col.kind)
        if bad.any():
            violations.append(Violation(file, col.name, f"must be {_KIND_WORDS[col.kind]}", int(bad.sum()),
                                        repr(out[col.name][bad].iloc[0])))
        out[col.name] = parsed
    if violations:
        raise ContractError(violations)
    if table == "users":  # profile extras: numbers and booleans in a CSV arrive as text
        known = {c.name for c in columns}
        for name in out.columns:
            if name not in known:
                out[name] = _infer(out[name])
    schema = pa.DataFrameSchema(
        {c.name: pa.Column(nullable=c.nullable, checks=list(c.checks)) for c in columns},
        checks=_table_checks(table),
        strict=False,
    )
    try:
        schema.validate(out, lazy=True)
    except SchemaErrors as err:
        raise ContractError(_violations(err, file)) from None
    return out


def _table_checks(table: str) -> list[pa.Check]:
    if table == "contacts":
        def treated_have_action(df: pd.DataFrame) -> pd.Series:
            control = df["variant"].eq("control") if "variant" in df else pd.Series(False, index=df.index)
            return control | (df["offer_id"].notna() & df["channel"].notna())
        return [pa.Check(treated_have_action, error="offer_id and channel are required unless variant is 'control'")]
    if table == "users":
        def has_consent(df: pd.DataFrame) -> bool:
            return len(_consent_columns(df)) > 0
        return [pa.Check(has_consent, element_wise=False, error="needs at least one consent_<channel> column (e.g. consent_email)")]
    return []


def _violations(err: SchemaErrors, file: str) -> list[Violation]:
    cases = err.failure_cases.copy()
    # A table-wide check reports every column of a failing row: name it once, as the row.
    cases.loc[cases["schema_context"].eq("DataFrameSchema"), "column"] = "(row)"
    cases.loc[cases["schema_context"].eq("DataFrameSchema"), "failure_case"] = None
    out: list[Violation] = []
    for (column, check), group in cases.groupby(["column", "check"], dropna=False, sort=False):
        column = column if isinstance(column, str) else "(table)"
        rule = str(check)
        if rule.startswith("not_nullable"):
            rule = "must not be empty"
        n = int(group["index"].nunique()) if group["index"].notna().any() else len(group)
        example = "" if group["failure_case"].isna().all() else repr(group["failure_case"].dropna().iloc[0])
        out.append(Violation(file, column, rule, n, example))
    return out


_KIND_WORDS = {
    "str": "text",
    "ts": "a timestamp (ISO-8601 such as 2026-06-01T10:00:00Z; set a timestamp format in the mapping otherwise)",
    "float": "a number",
    "int": "a whole number",
    "bool": "true/false (or 1/0, yes/no)",
}
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


def _consent_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if isinstance(c, str) and c.startswith("consent_")]


def _parse(s: pd.Series, kind: Kind) -> tuple[pd.Series, pd.Series]:
    """Parse one column to its contract dtype; return it and a mask of values that could not be parsed."""
    present = s.notna() & ~s.astype("string").str.strip().isin(["", "nan", "NaT", "None"])
    if kind == "ts":
        if isinstance(s.dtype, pd.DatetimeTZDtype):
            parsed = s.dt.tz_convert("UTC")
        elif pd.api.types.is_datetime64_dtype(s.dtype):
            parsed = s.dt.tz_localize("UTC")
        else:
            parsed = pd.to_datetime(s.where(present), utc=True, errors="coerce", format="ISO8601")
        parsed = parsed.astype("datetime64[ns, UTC]")
        return parsed, present & parsed.isna()
    if kind == "float":
        parsed = pd.to_numeric(s.where(present), errors="coerce").astype("float64")
        return parsed, present & parsed.isna()
    if kind == "int":
        num = pd.to_numeric(s.where(present), errors="coerce")
        bad = present & (num.isna() | (num % 1 != 0))
        return num.astype("Int64") if num.isna().any() else num.astype("int64"), bad
    if kind == "bool":
        if pd.api.types.is_bool_dtype(s.dtype):
            return s.astype(bool), pd.Series(False, index=s.index)
        text = s.astype("string").str.strip().str.lower()
        bad = ~(text.isin(_TRUE) | text.isin(_FALSE)) | ~present
        return text.isin(_TRUE).astype(bool), bad
    # text: keep missing as missing, everything else as a string
    if isinstance(s.dtype, pd.CategoricalDtype):
        return s, pd.Series(False, index=s.index)
    parsed = s.where(present).astype("string").astype(object).where(present, None)
    return parsed, pd.Series(False, index=s.index)


def _infer(s: pd.Series) -> pd.Series:
    """Give a free-form column the narrowest type all its values fit: bool, int, float, else text."""
    if s.dtype != object and not pd.api.types.is_string_dtype(s.dtype):
        return s
    for kind in ("bool", "int", "float"):
        parsed, bad = _parse(s, kind)  # type: ignore[arg-type]
        if not bad[s.notna()].any() and (kind != "bool" or s.notna().all()):
            return parsed
    return s


def _is_timezone(name: object) -> bool:
    from zoneinfo import ZoneInfo

    try:
        ZoneInfo(str(name))
        return True
    except Exception:  # ZoneInfoNotFoundError, ValueError for odd strings
        return False


# --- offer eligibility rules: a tiny, safe language (no eval) ---------------------------------------

@dataclass(frozen=True)
class Clause:
    """`feature op value`; value is a float, a word, or a tuple of words/numbers for `in`."""

    feature: str
    op: str
    value: float | str | tuple[float | str, ...]


_CLAUSE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(==|!=|>=|<=|>|<|\bin\b|\bnot in\b)\s*(.+?)\s*$")


def _atom(text: str) -> float | str:
    text = text.strip().strip("'\"")
    try:
        return float(text)
    except ValueError:
        return text


def parse_eligibility(expr: str | None) -> tuple[Clause, ...]:
    """Parse `a >= 3 and b in [x, y]` into clauses; raise ValueError naming the clause that is wrong."""
    if expr is None or (isinstance(expr, float) and np.isnan(expr)) or not str(expr).strip():
        return ()
    clauses = []
    for part in re.split(r"\s+and\s+", str(expr).strip()):
        m = _CLAUSE.match(part)
        if not m:
            raise ValueError(f"cannot read eligibility clause {part!r}: write `<feature> <op> <value>` with op one of == != >= <= > < in")
        feature, op, raw = m.groups()
        if op in ("in", "not in"):
            if not (raw.startswith("[") and raw.endswith("]")):
                raise ValueError(f"eligibility clause {part!r}: `{op}` needs a list like [a, b]")
            value: float | str | tuple = tuple(_atom(x) for x in raw[1:-1].split(",") if x.strip())
        else:
            value = _atom(raw)
        clauses.append(Clause(feature, op, value))
    return tuple(clauses)


def _is_eligibility(expr: object) -> bool:
    try:
        parse_eligibility(expr)  # type: ignore[arg-type]
        return True
    except ValueError:
        return False
