"""The raw-data contract: what each table a company hands us must look like, checked with pandera."""

from __future__ import annotations

import json
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
    "OFFER_KINDS",
    "DEFAULT_OFFER_KIND",
    "RESERVED_PROFILE_COLUMNS",
    "with_optional_columns",
    "Column",
    "COLUMNS",
    "ContractError",
    "Violation",
    "TimeWindow",
    "conform",
    "parse_eligibility",
    "Clause",
    "offer_valid",
    "STAGES",
    "STAGE_OF_TYPE",
    "parse_quiet_hours",
    "HOUR_S",
    "NO_SEND",
    "spacing_ok",
]

# What an offer is: retention offers get the churn boost in decisions; the kind is also a model input. One list
# for the contract, training (an offers table without `kind`) and serving (an operator config without it).
OFFER_KINDS: tuple[str, ...] = ("product", "coupon", "retention")
DEFAULT_OFFER_KIND = "product"
# Names the decision request and the contact log use next to the features (the action's columns, the outcome
# labels, the join keys): a profile column with one of these names would shadow them in every model's input.
RESERVED_PROFILE_COLUMNS: tuple[str, ...] = (
    "offer_id", "offer_category", "offer_kind", "offer_value", "channel", "local_hour", "hour", "contact_id", "sent_at",
    "campaign_id", "variant", "propensity", "delivered_at", "opened_at", "clicked_at", "converted_at", "revenue",
    "unsubscribed_at", "complained_at", "observed_until", "treated", "label", "converted", "opened", "clicked",
    "engaged", "event_timestamp", "as_of", "utc_offset_hours",
)

Kind = Literal["str", "ts", "float", "int", "bool", "flag"]  # flag: a 0/1 outcome, also written true/false, yes/no

TABLES: tuple[str, ...] = ("users", "events", "contacts", "offers", "channels", "suppressions", "labels")
REQUIRED_TABLES: tuple[str, ...] = ("users", "events")
# Known behaviour event types; other types are kept (they count towards activity) but not interpreted.
EVENT_TYPES: tuple[str, ...] = ("register", "app_open", "view", "search", "add_to_cart", "purchase")
# Lifecycle stages in funnel order; a user's stage is the furthest event type ever seen (STAGE_OF_TYPE: event type ->
# index in STAGES; other types leave the stage alone). One definition for the features, serving's eligibility rules,
# the replay, the off-policy support and the simulator's campaigns.
STAGES: tuple[str, ...] = ("first_contact", "lead", "intent_lead", "confirmed_lead", "customer")
STAGE_OF_TYPE: dict[str, int] = {"register": 1, "app_open": 1, "view": 2, "search": 2, "add_to_cart": 3, "purchase": 4}
SUPPRESSION_REASONS: tuple[str, ...] = ("complaint", "opt_out", "regulator", "vip", "manual")


@dataclass(frozen=True)
class Column:
    """One contract column: its kind, whether it must be present and whether it may be empty."""

    name: str
    kind: Kind
    required: bool = True
    nullable: bool = False
    checks: tuple[pa.Check, ...] = ()
    future: bool = False  # ts only: may lie after today (an offer valid until next year); others may not


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
        # The end of this contact's observation (the export date): outcomes after it are unknown, not absent, so
        # a contact whose outcome window reaches past it has no label yet. A mapping can set it as a constant.
        Column("observed_until", "ts", required=False, nullable=True),
        # The (offer, channel) pairs the contact policy refused at this decision (caps, quiet hours, capacity), as
        # JSON `[[offer, channel], ...]` (null inside a pair = every offer / every channel). The service's own logs
        # carry it (pipelines/logs_to_contacts.py); off-policy evaluation then credits a target policy only with
        # actions that were open. Absent or empty: only consent, suppressions and eligibility close actions.
        # The decision's P(no contact) (held out, or the policy's "no action") and P(held out) under the logging
        # policy, on every row of a decision the service logged (pipelines/logs_to_contacts.py): off-policy
        # evaluation weighs the sends and hold-outs it judges among themselves with them (offpolicy.judged_log).
        Column("no_contact_propensity", "float", required=False, nullable=True,
               checks=(pa.Check.in_range(0, 1, include_min=False, error="must be in (0, 1]"),)),
        Column("holdout_propensity", "float", required=False, nullable=True,
               checks=(pa.Check.in_range(0, 1, include_max=False, error="must be in [0, 1)"),)),
        Column("refused", "str", required=False, nullable=True,
               checks=(pa.Check(lambda s: s.map(_is_refused), error='must be JSON pairs like [["o1", "email"], [null, "sms"]]'),)),
    ),
    "offers": (
        Column("offer_id", "str", checks=(pa.Check(lambda s: ~s.duplicated(), error="must be unique"),)),
        Column("category", "str"),
        Column("value", "float", checks=(pa.Check.gt(0, error="must be > 0"),)),
        Column("eligibility", "str", required=False, nullable=True,
               checks=(pa.Check(lambda s: s.map(_is_eligibility), error="must be clauses like `lifecycle_stage in [customer] and recency_days >= 30`"),)),
        Column("valid_from", "ts", required=False, nullable=True, future=True),
        Column("valid_to", "ts", required=False, nullable=True, future=True),
        Column("priority", "int", required=False, nullable=True),
        Column("kind", "str", required=False, nullable=True,
               checks=(pa.Check.isin(OFFER_KINDS, error=f"must be one of {', '.join(OFFER_KINDS)} (empty = {DEFAULT_OFFER_KIND})"),)),
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
        Column("label", "flag", checks=(pa.Check.isin([0, 1], error="must be 0 or 1"),)),
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
        column = "" if self.column == "-" else f" column '{self.column}'"
        rows = f": {self.rows} row(s)" if self.rows or column else ""  # a file-level problem has no row count
        return f"{self.file}:{column} {self.rule}{rows}{example}"


class ContractError(ValueError):
    """Raised when input breaks the raw-data contract; lists every violation found."""

    def __init__(self, violations: list[Violation]):
        self.violations = violations
        lines = "\n".join(f"  - {v}" for v in violations)
        super().__init__(f"input breaks the raw-data contract ({len(violations)} problem(s)):\n{lines}")


@dataclass(frozen=True)
class TimeWindow:
    """The dates a raw timestamp may take: outside it a value is a typo or a placeholder (1900-01-01, 2199-12-31)."""

    earliest: pd.Timestamp
    latest: pd.Timestamp  # for columns that may not lie in the future (all but an offer's validity)

    @classmethod
    def around(cls, now: pd.Timestamp, past_years: int = 50, future_days: int = 2) -> TimeWindow:
        """`past_years` before `now` to `future_days` after it (a little slack for clocks and timezones)."""
        now = pd.Timestamp(now).tz_convert("UTC") if pd.Timestamp(now).tzinfo else pd.Timestamp(now).tz_localize("UTC")
        return cls(now - pd.DateOffset(years=past_years), now + pd.Timedelta(days=future_days))


Duplicates = Literal["reject", "keep", "drop"]
# Tables whose rows have no id of their own: an identical row twice is an export duplicate or a real repeat.
_DUPLICATE_TABLES = ("events", "labels")
_WINDOW_HINT = "set NEXTBEST_INGEST_PAST_YEARS / NEXTBEST_INGEST_FUTURE_DAYS if these dates are real"


def conform(table: str, df: pd.DataFrame, file: str, *, timezone: str | None = None, window: TimeWindow | None = None,
            duplicates: Duplicates = "reject") -> pd.DataFrame:
    """Return `df` with contract dtypes (UTC timestamps, floats, strings) or raise ContractError.

    `timezone`: the IANA zone of timestamps written without an offset; without it such values are an error,
    never silently UTC. `window`: the dates timestamps may take (default: 50 years back to 2 days ahead of now).
    `duplicates`: what to do with identical event/label rows (reject, keep as real repeats, drop).
    """
    if table not in COLUMNS:
        raise ContractError([Violation(file, "-", f"is not a known table (known: {', '.join(TABLES)})", 0)])
    window = window or TimeWindow.around(pd.Timestamp.now(tz="UTC"))
    spec = COLUMNS[table]
    repeated = sorted({str(c) for c in df.columns[df.columns.duplicated()]})
    if repeated:
        raise ContractError([Violation(file, name, "appears more than once (check the renames in the mapping)", 0)
                             for name in repeated])
    nested = [str(c) for c in df.columns if _nested(df[c])]
    if nested:
        raise ContractError([Violation(file, name, "holds lists or nested records: export one plain value per cell",
                                       int(df[name].map(_is_nested).sum())) for name in nested])
    missing = [c.name for c in spec if c.required and c.name not in df.columns]
    if missing:
        raise ContractError([
            Violation(file, name, f"is required but missing ({_found(df.columns)}; map yours with a column mapping)", len(df))
            for name in missing
        ])
    if table == "users":
        reserved = [str(c) for c in df.columns if str(c) in RESERVED_PROFILE_COLUMNS]
        if reserved:
            raise ContractError([
                Violation(file, name, f"is a reserved name: decisions and the contact log use `{name}` next to the "
                          f"profile features; rename the column (e.g. to profile_{name}) in a column mapping", len(df))
                for name in reserved])
    out = df.copy()
    violations: list[Violation] = []
    columns = [c for c in spec if c.name in out.columns]
    if table == "users":
        columns += [Column(name, "bool") for name in _consent_columns(out)]
    for col in columns:
        parsed, problems = _parse(out[col.name], col.kind, timezone)
        if col.kind == "ts":
            problems += _outside(parsed, window, col.future)
        violations += [Violation(file, col.name, rule, int(bad.sum()), _example(out[col.name][bad]))
                       for bad, rule in problems if bad.any()]
        out[col.name] = parsed
    if table == "users":  # profile extras: numbers and booleans in a CSV arrive as text
        known = {c.name for c in columns}
        for name in out.columns:
            if name not in known:
                out[name] = _infer(out[name])
                if pd.api.types.is_float_dtype(out[name]) and np.isinf(out[name]).any():
                    bad = np.isinf(out[name])
                    violations.append(Violation(file, str(name), _NON_FINITE, int(bad.sum()), _example(df[name][bad])))
    if violations:
        raise ContractError(violations)
    if table in _DUPLICATE_TABLES and duplicates != "keep":
        repeats = out.duplicated(keep="first")
        if repeats.any() and duplicates == "reject":
            raise ContractError([Violation(file, "(row)", "repeats an identical earlier row: set `duplicates: drop` for "
                                           "export duplicates or `duplicates: keep` for real repeats (two equal orders "
                                           "on one day) in the mapping", int(repeats.sum()))])
        out = out[~repeats].reset_index(drop=True)
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


def _is_nested(value: object) -> bool:
    return isinstance(value, (list, tuple, dict, set, np.ndarray))


def _nested(s: pd.Series) -> bool:
    """Whether a column holds lists or records (a Parquet export can); CSV text never does."""
    if s.dtype != object:
        return False
    return pd.api.types.infer_dtype(s, skipna=True) not in ("string", "empty", "bytes") and bool(s.map(_is_nested).any())


def _found(columns: pd.Index) -> str:
    """The columns a file has, as far as they look like column names: never a data row read as a header."""
    names = [str(c) for c in columns]
    if names and all(_NAME_LIKE.match(n) for n in names):
        return "columns found: " + ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    return f"{len(names)} column(s) found, not all of them look like column names (is `header` right?)"


_NAME_LIKE = re.compile(r"^[\w .()#%-]{1,40}$")


def _example(values: pd.Series) -> str:
    """The first offending value, shortened: enough to find it in the file, never a whole line of it."""
    values = values.dropna()
    if values.empty:
        return ""
    value = values.iloc[0]
    text = str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    return repr(text if len(text) <= 24 else text[:21] + "...")


def _outside(parsed: pd.Series, window: TimeWindow, future: bool) -> list[tuple[pd.Series, str]]:
    early = parsed.notna() & (parsed < window.earliest)
    out = [(early, f"must not be before {window.earliest.date()} ({_WINDOW_HINT})")]
    if not future:
        late = parsed.notna() & (parsed > window.latest)
        out.append((late, f"must not be after {window.latest.date()}, today plus a little slack ({_WINDOW_HINT})"))
    return out

def _table_checks(table: str) -> list[pa.Check]:
    if table == "contacts":
        def treated_have_action(df: pd.DataFrame) -> pd.Series:
            # 'no_action': a logged choice not to contact (the decision service's own logs), kept for off-policy evaluation.
            held = df["variant"].isin(["control", "no_action"]) if "variant" in df else pd.Series(False, index=df.index)
            return held | (df["offer_id"].notna() & df["channel"].notna())
        return [pa.Check(treated_have_action,
                         error="offer_id and channel are required unless variant is 'control' or 'no_action'")]
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
        example = _example(group["failure_case"])
        out.append(Violation(file, column, rule, n, example))
    return out


_KIND_WORDS = {
    "str": "text",
    "ts": "a timestamp (ISO-8601 such as 2026-06-01T10:00:00Z; set a timestamp format in the mapping otherwise)",
    "float": "a number (a decimal point, optional thousands commas: 1,234.5)",
    "int": "a whole number",
    "bool": "true/false (or 1/0, yes/no)",
    "flag": "0 or 1 (or true/false, yes/no)",
}
_NON_FINITE = "must be a finite number (not inf or -inf)"
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}
_MISSING = ["", "nan", "NaN", "NaT", "None", "null", "NULL", "N/A", "NA"]
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
# An explicit offset after a time of day: 10:00Z, 10:00:00+02:00, 10:00 +0200, 10:00 UTC.
_OFFSET = re.compile(r"\d:\d\d(?::\d\d(?:\.\d+)?)?\s*(?:[zZ]|[+-]\d\d(?::?\d\d)?|UTC|GMT)$")
# Formats tried for values that are not ISO-8601, each unambiguous on its own; day/month order is only
# guessed when exactly one order reads every value (13/06/2026 is day first; 01/02/2026 is not guessed).
_DATE_FORMATS = ("%Y/%m/%d", "%Y/%m/%d %H:%M", "%Y/%m/%d %H:%M:%S", "%d.%m.%Y", "%d.%m.%Y %H:%M", "%d.%m.%Y %H:%M:%S",
                 "%Y%m%d", "%d %b %Y", "%d %B %Y", "%b %d, %Y", "%B %d, %Y")
_SLASH_FORMATS = {"month first": ("%m/%d/%Y", "%m/%d/%Y %H:%M", "%m/%d/%Y %H:%M:%S"),
                  "day first": ("%d/%m/%Y", "%d/%m/%Y %H:%M", "%d/%m/%Y %H:%M:%S")}


def _consent_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if isinstance(c, str) and c.startswith("consent_")]


Problems = list[tuple[pd.Series, str]]  # (mask of rows breaking a rule, the rule)


def _present(s: pd.Series) -> pd.Series:
    return s.notna() & ~s.astype("string").str.strip().isin(_MISSING).fillna(True)


def _parse(s: pd.Series, kind: Kind, timezone: str | None = None) -> tuple[pd.Series, Problems]:
    """Parse one column to its contract dtype; return it and the rules its values break (a mask per rule)."""
    present = _present(s)
    if kind == "ts":
        return _parse_ts(s, present, timezone)
    if kind in ("float", "int"):
        num = _number(s, present)
        bad = present & num.isna()
        problems: Problems = [(bad, f"must be {_KIND_WORDS['float']}"), (present & np.isinf(num), _NON_FINITE)]
        if kind == "float":
            return num, problems
        fraction = present & np.isfinite(num) & (num % 1 != 0)
        problems.append((fraction, f"must be {_KIND_WORDS['int']}"))
        whole = num.where(np.isfinite(num) & ~fraction)  # only whole numbers reach the integer cast
        return (whole.astype("Int64") if whole.isna().any() else whole.astype("int64")), problems
    if kind == "flag":  # a labelled outcome: 0/1 as a whole number, from numbers or yes/no words
        if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
            return _parse(s, "int")
        parsed, problems = _parse(s, "bool")
        return parsed.astype("int64"), [(bad, f"must be {_KIND_WORDS['flag']}") for bad, _ in problems]
    if kind == "bool":
        if pd.api.types.is_bool_dtype(s.dtype):
            return s.astype(bool), []
        text = s.astype("string").str.strip().str.lower()
        bad = ~(text.isin(_TRUE) | text.isin(_FALSE)).fillna(False) | ~present
        return text.isin(_TRUE).fillna(False).astype(bool), [(bad, f"must be {_KIND_WORDS['bool']}")]
    # text: keep missing as missing, everything else as a string
    if isinstance(s.dtype, pd.CategoricalDtype):
        return s, []
    parsed = s.where(present).astype("string").astype(object).where(present, None)
    return parsed, []


def _number(s: pd.Series, present: pd.Series) -> pd.Series:
    """Numbers as float64 (NaN where not a number); thousands commas (1,234.5) are read, decimal commas are not."""
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        return s.astype("float64")
    text = s.where(present).astype("string").str.strip()
    text = text.where(~text.str.match(_THOUSANDS).fillna(False), text.str.replace(",", "", regex=False))
    return pd.to_numeric(text.astype(object), errors="coerce").astype("float64")


def _parse_ts(s: pd.Series, present: pd.Series, timezone: str | None) -> tuple[pd.Series, Problems]:
    """UTC timestamps; values without an offset are read in `timezone`, and are an error without one."""
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        return s.dt.tz_convert("UTC").astype("datetime64[ns, UTC]"), []
    if pd.api.types.is_datetime64_dtype(s.dtype):
        aware = pd.Series(pd.NaT, index=s.index, dtype="datetime64[ns, UTC]")
        naive, naive_mask, problems = s.astype("datetime64[ns]"), present, []
    else:
        text = s.where(present).astype("string").str.strip()
        has_offset = text.str.contains(_OFFSET).fillna(False) & present
        aware = pd.to_datetime(text.where(has_offset).astype(object), utc=True, errors="coerce", format="ISO8601")
        naive_mask = present & ~has_offset
        naive, problems = _naive_text(text.where(naive_mask))
        for mask, _ in problems:  # values already named by a sharper rule
            naive_mask = naive_mask & ~mask
        problems = [(has_offset & aware.isna(), f"must be {_KIND_WORDS['ts']}"), *problems]
    unread = naive_mask & naive.isna()
    if timezone is None:
        untold = naive_mask & naive.notna()
        problems.append((untold, "has timestamps without a timezone: say which zone they are in with `timezone: UTC` "
                                 "(or e.g. Europe/Berlin) for this table in the mapping, or `--assume-utc` (nextbest ingest, nextbest retrain)"))
        local = pd.Series(pd.NaT, index=s.index, dtype="datetime64[ns, UTC]")
    else:
        local = naive.dt.tz_localize(timezone, ambiguous="NaT", nonexistent="shift_forward").dt.tz_convert("UTC")
        problems.append((naive_mask & naive.notna() & local.isna(),
                         f"falls in the repeated hour of a daylight-saving change in {timezone}: give an offset"))
    problems.append((unread, f"must be {_KIND_WORDS['ts']}"))
    parsed = aware.where(aware.notna(), local).astype("datetime64[ns, UTC]")
    return parsed, problems


def _naive_text(text: pd.Series) -> tuple[pd.Series, Problems]:
    """Offset-free timestamp text -> naive datetime64: ISO-8601 first, else the one common format that reads all."""
    parsed = pd.to_datetime(text.astype(object), errors="coerce", format="ISO8601")
    if parsed.dtype != "datetime64[ns]":  # pandas reads a mix of naive and aware as objects
        parsed = pd.to_datetime(parsed, errors="coerce", utc=True).dt.tz_convert(None)
    parsed = parsed.astype("datetime64[ns]")
    rest = text.notna() & parsed.isna()
    if not rest.any():
        return parsed, []
    values = text[rest].astype(object)

    def reads_all(fmt: str) -> pd.Series | None:
        out = pd.to_datetime(values, format=fmt, errors="coerce")
        return out if out.notna().all() else None

    for fmt in _DATE_FORMATS:
        if (got := reads_all(fmt)) is not None:
            return parsed.where(~rest, got).astype("datetime64[ns]"), []
    orders = {name: got for name, fmts in _SLASH_FORMATS.items() for fmt in fmts if (got := reads_all(fmt)) is not None}
    if len(orders) == 1:
        return parsed.where(~rest, next(iter(orders.values()))).astype("datetime64[ns]"), []
    if len(orders) == 2 and not orders["month first"].equals(orders["day first"]):
        return parsed.where(~rest), [(rest, "has dates that read both day first and month first (e.g. 01/02/2026): "
                                            "set `timestamp_format` for this column in the mapping, e.g. '%d/%m/%Y'")]
    if len(orders) == 2:
        return parsed.where(~rest, orders["day first"]).astype("datetime64[ns]"), []
    return parsed, []


def _infer(s: pd.Series) -> pd.Series:
    """Give a free-form column the narrowest type all its values fit: bool, int, float, else text."""
    if s.dtype != object and not pd.api.types.is_string_dtype(s.dtype):
        return s
    present = _present(s)
    for kind in ("bool", "int", "float"):
        parsed, problems = _parse(s, kind)  # type: ignore[arg-type]
        # An infinite value does not make a numeric column text: conform rejects it by name.
        broken = [bad for bad, rule in problems if rule != _NON_FINITE]
        if not any(bad[present].any() for bad in broken) and (kind != "bool" or present.all()):
            if kind == "int" and np.isinf(_number(s, present)).any():
                continue
            return parsed
    return s.where(present, None) if present.any() else s


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


_SCALAR = re.compile(r"""^(?:'[^']*'|"[^"]*"|[^\s'"\[\],]+)$""")


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
            if not _SCALAR.match(raw):  # `a >= 40 or b == x` must not read as a >= "40 or b == x"
                raise ValueError(f"eligibility clause {part!r}: the value {raw!r} must be one number or word, or quoted "
                                 "text; clauses join with `and` only")
            value = _atom(raw)
        clauses.append(Clause(feature, op, value))
    return tuple(clauses)


def with_optional_columns(table: str, df: pd.DataFrame) -> pd.DataFrame:
    """`df` with every optional column of `table` the company left out added as empty (None), so code reading a
    table in the contract never has to ask whether an optional column exists."""
    absent = {c.name: None for c in COLUMNS.get(table, ()) if not c.required and c.name not in df.columns}
    return df.assign(**absent) if absent else df


def offer_valid(at, valid_from, valid_to) -> bool:
    """True when an offer may be sent at `at`: from `valid_from` on and before `valid_to` (a half-open window, so
    `valid_to: 2026-07-01T00:00Z` means through June 30). Missing bounds (None, NaT) do not limit. The one definition
    of the window, for serving, batch scoring and the simulator alike."""
    return not ((valid_from is not None and not pd.isna(valid_from) and at < valid_from)
                or (valid_to is not None and not pd.isna(valid_to) and at >= valid_to))


def parse_quiet_hours(text: str | None) -> np.ndarray:
    """24 booleans, True where a local hour is quiet; "22-8" means 22:00 up to (not including) 08:00. The one
    reading of a channel's `quiet_hours`, for serving's contact policy, the replay and the simulator alike."""
    quiet = np.zeros(24, dtype=bool)
    if not isinstance(text, str) or not text:
        return quiet
    start, end = (int(x) for x in text.split("-"))
    hours = np.arange(24)
    quiet[:] = (hours >= start) & (hours < end) if start < end else (hours >= start) | (hours < end)
    return quiet


def _is_refused(text: object) -> bool:
    try:
        pairs = json.loads(str(text))
    except ValueError:
        return False
    return isinstance(pairs, list) and all(isinstance(p, list) and len(p) == 2 and all(v is None or isinstance(v, str) for v in p)
                                           for p in pairs)


def _is_eligibility(expr: object) -> bool:
    try:
        parse_eligibility(expr)  # type: ignore[arg-type]
        return True
    except ValueError:
        return False


HOUR_S = 3600  # the spacing rule counts contacts in whole UTC hours: a send's bin is floor(epoch seconds / 3600)
NO_SEND = -(2**40)  # padding in a row of hour bins: never within any window of a real send


def spacing_ok(sent: np.ndarray, new: np.ndarray, limit: int, hours: int) -> np.ndarray:
    """Contact spacing: may a contact go out in hour bin `new[r]`, given the user's other contacts `sent[r]`
    (hour bins, padded with NO_SEND), so that no `hours` consecutive hours hold more than `limit` contacts?

    That is "no contact when the user already has `limit` contacts in the last `hours` hours", applied to every
    contact, also to one planned earlier for a later hour. The one definition, for serving's policy (per send
    slot), the ledger's re-check at charge time and the replay's violations; `limit` 0 switches it off.
    `sent` is (r, k), `new` (r,); returns (r,) bool.
    """
    sent, new = np.atleast_2d(np.asarray(sent, dtype=np.int64)), np.asarray(new, dtype=np.int64).reshape(-1)
    if limit <= 0 or sent.shape[1] == 0:
        return np.ones(len(new), dtype=bool)
    # The busiest window of `hours` bins that contains `new` starts where one ends on a contact (or at the first
    # window holding `new`): count those candidates only.
    ends = np.where((sent >= new[:, None]) & (sent < new[:, None] + hours), sent, new[:, None])  # (r, k)
    starts = np.concatenate([(new - hours + 1)[:, None], ends - hours + 1], axis=1)  # (r, k + 1)
    inside = (sent[:, None, :] >= starts[:, :, None]) & (sent[:, None, :] < starts[:, :, None] + hours)
    return inside.sum(axis=2).max(axis=1) + 1 <= limit
