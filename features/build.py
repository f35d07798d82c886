"""Raw tables -> feature tables: point-in-time snapshots per user, computed in DuckDB.

Every snapshot row `(user_id, event_timestamp=t)` uses only events strictly before `t`: a day's events
count towards snapshots taken after that day ends (snapshots are at midnight UTC), and contact outcomes
count only once their own timestamp (opened_at, converted_at, ...) is before `t`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

import duckdb
import numpy as np
import pandas as pd

from nextbest.features.tags import behaviour_clusters

__all__ = [
    "BuildConfig",
    "WINDOWS",
    "snapshot_times",
    "profile_table",
    "behaviour_table",
    "channel_table",
    "time_profile_table",
    "tags_table",
    "realtime_table",
    "build_all",
    "column_name",
]

WINDOWS: tuple[int, ...] = (1, 7, 30, 90)  # days
# event type -> the plural used in feature names (app_opens_7d, searches_30d, ...)
_COUNTED_TYPES: dict[str, str] = {
    "app_open": "app_opens", "view": "views", "search": "searches", "add_to_cart": "add_to_carts", "purchase": "purchases",
}
# Lifecycle stages in funnel order; a user's stage is the furthest event type ever seen.
STAGES: tuple[str, ...] = ("first_contact", "lead", "intent_lead", "confirmed_lead", "customer")
_STAGE_OF_TYPE = {"register": 1, "app_open": 1, "view": 2, "search": 2, "add_to_cart": 3, "purchase": 4}


@dataclass(frozen=True)
class BuildConfig:
    """How feature tables are built."""

    snapshot_every_days: int = 7  # spacing of training snapshots; the newest one is always included
    history_days: int | None = 120  # snapshots cover this many days before the newest (None: all history);
    # without a bound, a few old sign-up events would stretch weekly snapshots over years of near-empty rows
    snapshots: int | None = None  # keep only the newest N snapshots (None: cover the whole history)
    max_categories: int = 12  # category affinity columns for the most frequent categories
    rate_prior: float = 0.1  # smoothed channel rates shrink towards this ...
    rate_strength: float = 5.0  # ... with the weight of this many contacts
    clusters: int = 6  # behavioural clusters (k-means)
    seed: int = 7
    duckdb_memory: str = "4GB"  # DuckDB spills to disk beyond this instead of growing


def column_name(text: str) -> str:
    """A safe feature-name fragment for a category or channel value."""
    return re.sub(r"[^0-9a-zA-Z]+", "_", str(text)).strip("_").lower() or "unknown"


def snapshot_times(events: pd.DataFrame, config: BuildConfig, as_of: pd.Timestamp | None = None) -> pd.DatetimeIndex:
    """Midnight-UTC snapshot times every `snapshot_every_days`, on a grid through `as_of` when given (a training
    date then has its own snapshot, not one a few days older), and always the day after the last event (the
    newest values, for serving). `history_days` counts back from `as_of`, else from that newest day."""
    newest = events["ts"].max().floor("D") + timedelta(days=1)
    anchor = newest if as_of is None else as_of
    step = timedelta(days=config.snapshot_every_days)
    start = events["ts"].min().floor("D") + timedelta(days=1)
    if config.history_days is not None:
        start = max(start, anchor - timedelta(days=config.history_days))
    back = max(int((anchor - start) / step), 0)
    ahead = max(int((newest - anchor) / step), 0)
    times = {anchor + step * k for k in range(-back, ahead + 1)}
    if newest > anchor:
        times.add(newest)
    times = sorted(times)
    if config.snapshots is not None:
        times = times[-config.snapshots:]
    return pd.DatetimeIndex(times).tz_convert("UTC")


def _grid(con: duckdb.DuckDBPyConnection, users: pd.DataFrame, snaps: pd.DatetimeIndex) -> None:
    """Register `grid`: one row per (user, snapshot) after the user's sign-up."""
    con.register("snaps_df", pd.DataFrame({"snap": snaps}))
    con.register("users_df", users[["user_id", "signup_at", "timezone"]].astype({"user_id": str}))
    con.execute("""
        CREATE OR REPLACE TEMP TABLE grid AS
        SELECT u.user_id, s.snap, u.signup_at, u.timezone
        FROM users_df u JOIN snaps_df s ON u.signup_at < s.snap
    """)


def profile_table(users: pd.DataFrame) -> pd.DataFrame:
    """Static profile: every users column becomes a feature (timestamped at sign-up)."""
    out = users.rename(columns={"signup_at": "event_timestamp"}).copy()
    out["user_id"] = out["user_id"].astype(str)
    for col in out.columns:
        if isinstance(out[col].dtype, pd.CategoricalDtype):
            out[col] = out[col].astype(str)
    out["utc_offset_hours"] = _utc_offsets(out["timezone"], out["event_timestamp"].max())
    return out


def _utc_offsets(timezones: pd.Series, at: pd.Timestamp) -> np.ndarray:
    from zoneinfo import ZoneInfo

    offsets = {tz: at.tz_convert(ZoneInfo(tz)).utcoffset().total_seconds() / 3600 for tz in timezones.unique()}
    return timezones.map(offsets).to_numpy(dtype="float64")


def _cumulative(con: duckdb.DuckDBPyConnection, source: str, target: str, sums: list[str], extra: str = "") -> None:
    """Per (user, day) running totals of `sums` columns of `source`: a snapshot then needs one ASOF lookup."""
    running = ", ".join(f"(sum({c}) OVER w)::DOUBLE AS {c}" for c in sums)  # DOUBLE: HUGEINT sums convert row by row
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {target} AS
        SELECT user_id, day, {running}{extra}
        FROM {source}
        WINDOW w AS (PARTITION BY user_id ORDER BY day ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
    """)


def _as_of(con: duckdb.DuckDBPyConnection, table: str, columns: list[str], days_back: int) -> pd.DataFrame:
    """Running totals of each grid row's user as of `days_back` days before its snapshot (events strictly before)."""
    cols = ", ".join(f"c.{col}" for col in columns)
    # The lookup time must be a plain column: an expression in the ASOF condition makes DuckDB fall back
    # to a far slower inequality join (minutes instead of a second at 100k users).
    con.execute(f"CREATE OR REPLACE TEMP TABLE grid_at AS SELECT user_id, snap, snap - INTERVAL {days_back} DAY AS t FROM grid")
    return con.execute(f"""
        SELECT {cols}
        FROM grid_at g ASOF LEFT JOIN {table} c ON g.user_id = c.user_id AND g.t > c.day
        ORDER BY g.snap, g.user_id
    """).df()


def behaviour_table(con: duckdb.DuckDBPyConnection, events: pd.DataFrame, categories: list[str]) -> pd.DataFrame:
    """Windowed activity (1/7/30/90 d), RFM, lifetime totals and category affinity per (user, snapshot).

    Events are summed per (user, day), turned into running totals, and each window is the difference
    of two ASOF lookups (as of the snapshot, and as of the window's start): linear in events plus
    snapshots, instead of joining every snapshot with 90 days of events.
    """
    ev = events[["user_id", "ts", "type"] + [c for c in ("category", "amount") if c in events]].copy()
    ev["user_id"] = ev["user_id"].astype(str)
    ev["type"] = ev["type"].astype(str)
    if "category" not in ev:
        ev["category"] = None
    ev["category"] = ev["category"].astype(object)
    if "amount" not in ev:
        ev["amount"] = np.nan
    ev["stage"] = ev["type"].map(_STAGE_OF_TYPE).fillna(0).astype("int8")
    con.register("events_df", ev)
    quote = lambda c: c.replace("'", "''")  # noqa: E731
    cat_cols = "".join(
        f", count(*) FILTER (WHERE category = '{quote(c)}' AND type IN ('view','add_to_cart'))"
        f" + count(*) FILTER (WHERE category = '{quote(c)}' AND type = 'purchase') AS c_{column_name(c)}"
        for c in categories
    )
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE daily AS
        SELECT user_id, date_trunc('day', ts) AS day,
               count(*) AS n_events,
               {", ".join(f"count(*) FILTER (WHERE type = '{t}') AS n_{t}" for t in _COUNTED_TYPES)},
               coalesce(sum(amount) FILTER (WHERE type = 'purchase'), 0) AS revenue,
               (count(*) FILTER (WHERE type = 'add_to_cart') > 0 AND count(*) FILTER (WHERE type = 'purchase') = 0)::INT
                   AS cart_no_buy,
               max(stage) AS stage
               {cat_cols}
        FROM events_df GROUP BY ALL
    """)
    sums = ["n_events", *[f"n_{t}" for t in _COUNTED_TYPES], "revenue", "cart_no_buy",
            *[f"c_{column_name(c)}" for c in categories]]
    _cumulative(con, "daily", "cum_daily", sums,
                extra=", max(stage) OVER w AS stage, max(CASE WHEN n_purchase > 0 THEN day END) OVER w AS last_buy")
    grid = con.execute("SELECT user_id, snap, signup_at FROM grid ORDER BY snap, user_id").df()
    snap = pd.to_datetime(grid["snap"], utc=True)
    now = _as_of(con, "cum_daily", sums + ["stage", "last_buy", "day"], 0)
    totals = {c: now[c].fillna(0).to_numpy(dtype="float64") for c in sums}
    df = pd.DataFrame({"user_id": grid["user_id"].to_numpy(), "event_timestamp": snap})
    before = {}  # only what later columns need, so one window's lookups are freed before the next
    for w in WINDOWS:
        past = _as_of(con, "cum_daily", sums, w)
        past = {c: past[c].fillna(0).to_numpy(dtype="float64") for c in sums}
        df[f"events_{w}d"] = totals["n_events"] - past["n_events"]
        for t, plural in _COUNTED_TYPES.items():
            df[f"{plural}_{w}d"] = totals[f"n_{t}"] - past[f"n_{t}"]
        df[f"revenue_{w}d"] = totals["revenue"] - past["revenue"]
        if w == 30:
            before[w] = {c: past[c] for c in sums if c == "cart_no_buy"}
        del past
    df["purchases_all"] = totals["n_purchase"]
    df["revenue_all"] = totals["revenue"]
    days = lambda col: ((snap - pd.to_datetime(now[col], utc=True)).dt.days).fillna(9999).to_numpy(dtype="int64")  # noqa: E731
    df["recency_days"] = days("last_buy")
    df["days_since_last_event"] = days("day")
    df["abandoned_cart_days_30d"] = totals["cart_no_buy"] - before[30]["cart_no_buy"]
    df["tenure_days"] = (snap - pd.to_datetime(grid["signup_at"], utc=True)).dt.days.to_numpy(dtype="int64")
    df["funnel_stage"] = now["stage"].fillna(0).to_numpy(dtype="int64")
    df["monetary_90d"] = np.where(df["purchases_90d"] > 0, df["revenue_90d"] / df["purchases_90d"].clip(lower=1), 0.0)
    df["frequency_90d"] = df["purchases_90d"]
    # Category affinity: the posterior mean share of interest, from every categorised event so far and a
    # weak prior (_AFFINITY_PRIOR pseudo-events per category). A user with one view of books is not
    # "100 % books"; a user with none gets the uniform share. Measured on the demo world, plugging these
    # shares into the true response picks the best offer for 59 % of users, against 54 % for raw 90-day shares.
    counts = np.stack([totals[f"c_{column_name(c)}"] for c in categories], axis=1) if categories else np.zeros((len(df), 0))
    shares = (counts + _AFFINITY_PRIOR) / (counts.sum(axis=1, keepdims=True) + _AFFINITY_PRIOR * max(len(categories), 1))
    for i, c in enumerate(categories):
        df[f"aff_{column_name(c)}"] = shares[:, i]
    return df


def channel_table(con: duckdb.DuckDBPyConnection, contacts: pd.DataFrame | None, channels: list[str], config: BuildConfig) -> pd.DataFrame:
    """Per-channel engagement (sent, smoothed open/click/convert rates, recency, fatigue) per (user, snapshot).

    Each outcome counts on its own day (a send on its sent day, an open on its opened day), so a
    snapshot at `t` sees only outcomes that happened before `t`; windows are running-total differences.
    """
    cols = ["user_id", "sent_at", "channel", "opened_at", "clicked_at", "converted_at", "unsubscribed_at", "complained_at"]
    ct = pd.DataFrame({c: pd.Series(dtype="object") for c in cols}) if contacts is None else contacts.copy()
    for c in cols:
        if c not in ct:
            ct[c] = pd.NaT
    ct = ct[cols]
    ct = ct[ct["channel"].notna()]  # control rows are not contacts
    ct["user_id"] = ct["user_id"].astype(str)
    ct["channel"] = ct["channel"].astype(str)
    for c in cols[3:] + ["sent_at"]:
        ct[c] = pd.to_datetime(ct[c], utc=True)
    con.register("contacts_df", ct)
    quote = lambda c: c.replace("'", "''")  # noqa: E731
    kinds = {"sent": "sent_at", "open": "opened_at", "click": "clicked_at", "conv": "converted_at"}
    per_channel = [f"count(*) FILTER (WHERE kind = '{k}' AND channel = '{quote(ch)}') AS {k}_{column_name(ch)}"
                   for ch in channels for k in kinds]
    # user_id cast to text: without contacts the frame is empty and DuckDB would guess an integer column,
    # which the ASOF join against the grid's text ids cannot compare.
    outcome_rows = " UNION ALL ".join(
        f"SELECT user_id::VARCHAR AS user_id, channel::VARCHAR AS channel, '{k}' AS kind, "
        f"date_trunc('day', {col}::TIMESTAMPTZ) AS day FROM contacts_df WHERE {col} IS NOT NULL"
        for k, col in {**kinds, "unsub": "unsubscribed_at", "complaint": "complained_at"}.items())
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE daily_contacts AS
        SELECT user_id, day, {"".join(c + ", " for c in per_channel)}
               count(*) FILTER (WHERE kind = 'sent') AS sent_all,
               count(*) FILTER (WHERE kind = 'open') AS open_all,
               count(*) FILTER (WHERE kind = 'unsub') AS unsub_all,
               count(*) FILTER (WHERE kind = 'complaint') AS complaint_all
        FROM ({outcome_rows}) GROUP BY ALL
    """)
    sums = [f"{k}_{column_name(ch)}" for ch in channels for k in kinds] + ["sent_all", "open_all", "unsub_all", "complaint_all"]
    last_sent = "".join(f", max(CASE WHEN sent_{column_name(ch)} > 0 THEN day END) OVER w AS last_{column_name(ch)}"
                        for ch in channels)
    _cumulative(con, "daily_contacts", "cum_contacts", sums, extra=last_sent)
    grid = con.execute("SELECT user_id, snap FROM grid ORDER BY snap, user_id").df()
    snap = pd.to_datetime(grid["snap"], utc=True)
    now = _as_of(con, "cum_contacts", sums + [f"last_{column_name(ch)}" for ch in channels], 0)
    totals = {c: now[c].fillna(0).to_numpy(dtype="float64") for c in sums}
    past = {w: {c: v.fillna(0).to_numpy(dtype="float64") for c, v in _as_of(con, "cum_contacts", sums, w).items()}
            for w in (1, 7, 90, _RATE_DAYS)}
    window = lambda col, w: totals[col] - past[w][col]  # noqa: E731
    a, k = config.rate_prior * config.rate_strength, config.rate_strength
    df = pd.DataFrame({"user_id": grid["user_id"].to_numpy(), "event_timestamp": snap})
    for ch in channels:
        n = column_name(ch)
        sent = window(f"sent_{n}", 90)
        df[f"sent_90d_{n}"] = sent
        df[f"sent_7d_{n}"] = window(f"sent_{n}", 7)
        # The rates read a year: how a user answers a channel changes slowly, and 90 days hold about two sends.
        sent_rate = window(f"sent_{n}", _RATE_DAYS)
        df[f"open_rate_{n}"] = (window(f"open_{n}", _RATE_DAYS) + a) / (sent_rate + k)
        df[f"click_rate_{n}"] = (window(f"click_{n}", _RATE_DAYS) + a / 2) / (sent_rate + k)
        df[f"convert_rate_{n}"] = (window(f"conv_{n}", _RATE_DAYS) + a / 5) / (sent_rate + k)
        last = pd.to_datetime(now[f"last_{n}"], utc=True)
        df[f"days_since_contact_{n}"] = (snap - last).dt.days.fillna(9999).to_numpy(dtype="int64")
    df["contacts_1d"] = window("sent_all", 1)
    df["contacts_7d"] = window("sent_all", 7)
    df["contacts_90d"] = window("sent_all", 90)
    df["opens_90d"] = window("open_all", 90)
    df["unsubscribes_90d"] = window("unsub_all", 90)
    df["complaints_90d"] = window("complaint_all", 90)
    return df


_RATE_DAYS = 365  # window of the per-channel open, click and convert rates
_AFFINITY_PRIOR = 0.35  # pseudo-events per category in the affinity shares
# Activity that follows the user's daily rhythm: what they do on their own, whenever they choose.
_RHYTHM_TYPES = ("app_open", "view", "search", "add_to_cart", "purchase")
_RHYTHM_DAYS = 365  # a year of activity: a daily rhythm changes slowly, and a few months hold only tens of events
_RHYTHM_BANDWIDTH_H = 2.0  # circular Gaussian smoothing of the hourly counts


def time_profile_table(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """The user's daily rhythm per (user, snapshot): the share of their activity (app opens, views, searches,
    carts, purchases) per local hour over a year, smoothed over neighbouring hours, and its peak hour.

    Smoothing matters: a user with 20 events has most hours empty, and activity at 19:00 and 21:00 says
    20:00 is a good hour too. Measured on the demo world, sending at the peak of the smoothed profile of all
    activity reaches 87-89 % of the best hour's open rate, against 80 % for raw counts of app opens alone.
    """
    hours = [f"h{h:02d}" for h in range(24)]
    types = ", ".join(f"'{t}'" for t in _RHYTHM_TYPES)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE daily_hours AS
        SELECT user_id, day, {", ".join(f"count(*) FILTER (WHERE local_hour = {h}) AS h{h:02d}" for h in range(24))}
        FROM (SELECT e.user_id, date_trunc('day', e.ts) AS day, hour(timezone(u.timezone, e.ts)) AS local_hour
              FROM events_df e JOIN users_df u ON u.user_id = e.user_id WHERE e.type IN ({types}))
        GROUP BY ALL
    """)
    _cumulative(con, "daily_hours", "cum_hours", hours)
    now = _as_of(con, "cum_hours", hours, 0)[hours].fillna(0).to_numpy(dtype="float64")
    past = _as_of(con, "cum_hours", hours, _RHYTHM_DAYS)[hours].fillna(0).to_numpy(dtype="float64")
    counts = now - past
    grid = con.execute("SELECT user_id, snap FROM grid ORDER BY snap, user_id").df()
    total = counts.sum(axis=1, keepdims=True)
    smooth = _circular_smooth(counts, _RHYTHM_BANDWIDTH_H)
    shares = np.divide(smooth, smooth.sum(axis=1, keepdims=True), out=np.full_like(counts, 1 / 24), where=total > 0)
    out = pd.DataFrame({"user_id": grid["user_id"].to_numpy(), "event_timestamp": pd.to_datetime(grid["snap"], utc=True)})
    for h in range(24):
        out[f"open_share_h{h:02d}"] = shares[:, h]
    out["rhythm_events_365d"] = total[:, 0]
    # Users with no activity get -1: "no rhythm known", not "midnight".
    out["peak_open_hour"] = np.where(total[:, 0] > 0, shares.argmax(axis=1), -1)
    return out


def _circular_smooth(counts: np.ndarray, bandwidth: float) -> np.ndarray:
    """Each row of 24 hourly counts convolved with a Gaussian kernel on the 24-hour circle."""
    gap = np.minimum(np.arange(24), 24 - np.arange(24))
    kernel = np.exp(-0.5 * (gap / bandwidth) ** 2)
    # Circular convolution as a (24 x 24) matrix product: row h of `weights` spreads hour h over its neighbours.
    weights = kernel[(np.arange(24)[None, :] - np.arange(24)[:, None]) % 24]
    return counts @ weights


def tags_table(behaviour: pd.DataFrame, channel: pd.DataFrame, config: BuildConfig) -> pd.DataFrame:
    """Segments from features: RFM scores and segment, lifecycle stage, value tier, cluster, scorecard."""
    df = behaviour[["user_id", "event_timestamp"]].copy()
    keys = ["user_id", "event_timestamp"]
    b = behaviour.set_index(keys)
    c = channel.set_index(keys).reindex(b.index)
    snap = behaviour["event_timestamp"].to_numpy()
    # RFM scores 1..5 within each snapshot (5 = best); a user with no purchase scores 1 on all three.
    buyer = b["purchases_all"].to_numpy() > 0
    df["r_score"] = _quintile(-b["recency_days"].to_numpy(dtype=float), snap, buyer)
    df["f_score"] = _quintile(b["purchases_90d"].to_numpy(dtype=float), snap, buyer)
    df["m_score"] = _quintile(b["revenue_90d"].to_numpy(dtype=float), snap, buyer)
    df["rfm_segment"] = _rfm_segment(df["r_score"].to_numpy(), df["f_score"].to_numpy(), buyer)
    df["lifecycle_stage"] = np.asarray(STAGES, dtype=object)[b["funnel_stage"].to_numpy(dtype=int)]
    df["value_tier"] = _value_tier(b["revenue_all"].to_numpy(dtype=float), snap)
    cluster_cols = ["events_30d", "views_30d", "add_to_carts_30d", "purchases_90d", "revenue_90d", "days_since_last_event"]
    df["behaviour_cluster"] = behaviour_clusters(np.log1p(b[cluster_cols].to_numpy(dtype=float).clip(min=0)), snap,
                                                 config.clusters, config.seed)  # fitted point-in-time (features/tags.py)
    # Scorecard: points for wanted actions, minus points for unwanted ones (last 30 days / 90 days).
    df["scorecard"] = (
        np.minimum(b["app_opens_30d"].to_numpy(), 10) * 1
        + b["add_to_carts_30d"].to_numpy() * 3
        + b["purchases_30d"].to_numpy() * 10
        + c["opens_90d"].fillna(0).to_numpy() * 2
        - b["abandoned_cart_days_30d"].to_numpy() * 2
        - c["unsubscribes_90d"].fillna(0).to_numpy() * 5
        - c["complaints_90d"].fillna(0).to_numpy() * 10
    ).astype("float64")
    return df


def _quintile(values: np.ndarray, snaps: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = np.ones(len(values), dtype="int64")
    frame = pd.DataFrame({"v": values, "s": snaps, "m": mask})
    ranks = frame[frame["m"]].groupby("s")["v"].rank(pct=True, method="average")
    out[ranks.index.to_numpy()] = np.ceil(ranks.to_numpy() * 5).clip(1, 5).astype("int64")
    return out


def _rfm_segment(r: np.ndarray, f: np.ndarray, buyer: np.ndarray) -> np.ndarray:
    seg = np.full(len(r), "prospect", dtype=object)
    seg[buyer & (r >= 4) & (f >= 4)] = "champion"
    seg[buyer & (r >= 3) & (f >= 3) & (seg == "prospect")] = "loyal"
    seg[buyer & (r >= 4) & (f <= 2)] = "new_customer"
    seg[buyer & (r <= 2) & (f >= 3)] = "at_risk"
    seg[buyer & (r <= 2) & (f <= 2)] = "hibernating"
    seg[buyer & (seg == "prospect")] = "needs_attention"
    return seg


def _value_tier(revenue: np.ndarray, snaps: np.ndarray) -> np.ndarray:
    tier = np.full(len(revenue), "none", dtype=object)
    frame = pd.DataFrame({"v": revenue, "s": snaps})
    pos = frame[frame["v"] > 0]
    ranks = pos.groupby("s")["v"].rank(pct=True)
    idx = ranks.index.to_numpy()
    tier[idx] = np.where(ranks >= 0.8, "high", np.where(ranks >= 0.4, "mid", "low"))
    return tier


def _kmeans_labels(x: np.ndarray, k: int, seed: int, iterations: int = 20) -> np.ndarray:
    """Seeded k-means; clusters numbered by the size of their centre so labels are stable across runs."""
    if len(x) == 0:
        return np.zeros(0, dtype="int64")
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = (x - mu) / sd
    rng = np.random.default_rng(seed)
    sample = z[rng.choice(len(z), size=min(len(z), 20_000), replace=False)]
    centres = sample[rng.choice(len(sample), size=min(k, len(sample)), replace=False)]
    for _ in range(iterations):
        labels = ((sample[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
        centres = np.stack([sample[labels == j].mean(0) if (labels == j).any() else centres[j] for j in range(len(centres))])
    order = np.argsort(np.linalg.norm(centres, axis=1))
    centres = centres[order]
    labels = np.empty(len(z), dtype="int64")
    for start in range(0, len(z), 200_000):  # chunks bound memory at 1M rows
        chunk = z[start:start + 200_000]
        labels[start:start + len(chunk)] = ((chunk[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
    return labels


def realtime_table(events: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """Seed values for the real-time view: each user's last event before `as_of` (later ones come by push)."""
    ev = events[events["ts"] < as_of][["user_id", "ts", "type"]]
    ev = ev.assign(user_id=ev["user_id"].astype(str), type=ev["type"].astype(str))
    last = ev.sort_values("ts").groupby("user_id", sort=False).tail(1)
    hour = ev[ev["ts"] >= as_of - timedelta(hours=1)].groupby("user_id").size()
    carts = ev[ev["type"].isin(["add_to_cart", "purchase"])].sort_values("ts").groupby("user_id").tail(1)
    open_cart = carts.set_index("user_id")["type"].eq("add_to_cart")
    out = pd.DataFrame({
        "user_id": last["user_id"].to_numpy(),
        "event_timestamp": last["ts"].to_numpy(),
        "last_event_type": last["type"].to_numpy(),
    })
    out["last_event_at"] = out["event_timestamp"].astype("int64") // 10**9
    out["events_1h"] = out["user_id"].map(hour).fillna(0).astype("int64")
    out["cart_open"] = out["user_id"].map(open_cart).eq(True).astype("int64")  # no cart event: not open
    out["event_timestamp"] = pd.to_datetime(out["event_timestamp"], utc=True)
    return out


def build_all(raw: dict[str, pd.DataFrame], config: BuildConfig = BuildConfig(), as_of: pd.Timestamp | None = None,
              progress=None) -> dict[str, pd.DataFrame]:
    """All feature tables from the raw tables; `progress(name)` is called before each step."""
    users, events = raw["users"], raw["events"]
    snaps = snapshot_times(events, config, as_of)
    categories = []
    if "category" in events:
        counts = events["category"].dropna().astype(str).value_counts()
        categories = sorted(counts.index[: config.max_categories])
    channels = sorted(raw["channels"]["channel"].astype(str)) if raw.get("channels") is not None else []
    if not channels and raw.get("contacts") is not None:
        channels = sorted(raw["contacts"]["channel"].dropna().astype(str).unique())
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(f"SET memory_limit = '{config.duckdb_memory}'")
        _grid(con, users, snaps)
        tables: dict[str, pd.DataFrame] = {}
        step = progress or (lambda name: None)
        step("profile")
        tables["profile"] = profile_table(users)
        step("behaviour")
        tables["behaviour"] = behaviour_table(con, events, categories)
        step("channel")
        tables["channel"] = channel_table(con, raw.get("contacts"), channels, config)
        step("time_profile")
        tables["time_profile"] = time_profile_table(con)
        step("tags")
        tables["tags"] = tags_table(tables["behaviour"], tables["channel"], config)
        step("realtime")
        tables["realtime"] = realtime_table(events, snaps[-1])
    finally:
        con.close()
    return tables
