"""Training sets from Feast: entity rows with labels, features joined point-in-time through a FeatureService."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from nextbest.features.contract import DEFAULT_OFFER_KIND
from nextbest.training.activity import Table, connect, event_span
from nextbest.training.scorers import REQUEST_COLUMNS

__all__ = [
    "observation_end",
    "outcome_within",
    "TrainingSet",
    "REQUEST_COLUMNS",
    "SharedJoins",
    "Sampling",
    "STRATA",
    "stratified_sample",
    "CONTACTS",
    "SNAPSHOTS",
    "service_features",
    "historical",
    "joined",
    "contact_frame",
    "contact_rows",
    "contact_row_set",
    "snapshot_dates",
    "feature_snapshots",
    "snapshot_rows",
    "split",
    "local_hours",
    "utc_naive",
]



@dataclass(frozen=True)
class TrainingSet:
    """One model's rows: FeatureService columns + request columns + label (+ time, treatment, weights)."""

    frame: pd.DataFrame
    feature_service: str
    features: tuple[str, ...]  # from the FeatureService, in its order
    request: tuple[str, ...]
    label: str = "label"
    time: str = "event_timestamp"
    treatment: str | None = None  # uplift: 1 = contacted, 0 = control
    weight: str | None = None  # offer network: inverse-propensity weights
    # Customer models (purchase, churn, label): the label window in weeks; the encoder then adds BG/NBD's expected
    # purchases in it and P(alive), fitted on the rows it is fitted on (training/customer_base.py).
    customer_base_weeks: float | None = None

    @property
    def inputs(self) -> list[str]:
        return [*self.features, *self.request]

    @property
    def y(self) -> np.ndarray:
        return self.frame[self.label].to_numpy(dtype="int64")

    def subset(self, mask_or_index) -> TrainingSet:
        return replace(self, frame=self.frame.loc[mask_or_index].reset_index(drop=True))


def service_features(store, service: str) -> tuple[str, ...]:
    """The feature names of a FeatureService, as get_historical/online_features name them."""
    fs = store.get_feature_service(service)
    return tuple(f.name for proj in fs.feature_view_projections for f in proj.features)


def historical(store, entities: pd.DataFrame, service: str | list[str]) -> pd.DataFrame:
    """Point-in-time join of `entities` (user_id, event_timestamp, ...) with a FeatureService, in entity order.

    `service` is a FeatureService name, or a list of "view:feature" references (a union of services).
    """
    rows = entities.reset_index(drop=True).assign(_row=np.arange(len(entities)))
    rows["user_id"] = rows["user_id"].astype(str)
    rows["event_timestamp"] = pd.to_datetime(rows["event_timestamp"], utc=True)
    features = store.get_feature_service(service) if isinstance(service, str) else service
    out = store.get_historical_features(rows, features=features).to_df()
    # Feast returns rows in its own order; restore the entity order so splits stay reproducible.
    out = out.sort_values("_row").drop(columns="_row").reset_index(drop=True)
    out["event_timestamp"] = pd.to_datetime(out["event_timestamp"], utc=True)
    return out


def _references(store, service: str) -> list[str]:
    fs = store.get_feature_service(service)
    return [f"{proj.name_to_use()}:{f.name}" for proj in fs.feature_view_projections for f in proj.features]


CONTACTS, SNAPSHOTS = "contacts", "snapshots"  # the two row sets the models share
# What each row set is stratified by when it is sampled: the contact log by every outcome a model learns
# (treated for uplift, converted, opened/clicked for channel and send time); snapshot rows by date and by the
# label of the model that builds them (computed from the events before the join, so it is known when sampling).
STRATA: dict[str, tuple[str, ...]] = {CONTACTS: ("treated", "converted", "opened", "clicked"),
                                      SNAPSHOTS: ("event_timestamp", "label", "eligible")}


@dataclass(frozen=True)
class Sampling:
    """How many rows of a row set a `train all` joins: every row up to `max_rows`, past it a seeded sample."""

    max_rows: int = 500_000  # per row set; at 1M users the contact log has ~15M rows, the snapshots ~3.6M
    seed: int = 7


def stratified_sample(rows: pd.DataFrame, strata: tuple[str, ...], max_rows: int, seed: int) -> tuple[pd.DataFrame, dict[str, str]]:
    """At most `max_rows` of `rows`, the same share of every stratum, and the record of it (for the MLflow run).

    Each stratum keeps round(share x its size) rows, at least one: label shares stay as they were (a model's
    probabilities stay calibrated, no reweighting needed) and a rare outcome is never sampled away. The record
    gives the rate, the seed, the rows before and after, and per stratum the rows kept of the rows there
    (`sample_counts`, JSON), so a reader can check each label's share and correct for the at-least-one rule.
    """
    import json

    n = len(rows)
    record = {"sample_strata": ",".join(strata), "sample_seed": str(seed), "sample_of_rows": str(n)}
    codes, labels = (_strata_codes(rows, strata) if strata else (np.zeros(n, "int64"), ["all"]))
    sizes = np.bincount(codes, minlength=len(labels))
    if n <= max_rows:
        counts = {k: [int(v), int(v)] for k, v in zip(labels, sizes, strict=True)}
        return rows, {**record, "sample_rate": "1.0", "sample_rows": str(n), "sample_counts": json.dumps(counts)}
    share = max_rows / n
    quota = np.maximum(np.rint(sizes * share), 1).astype("int64")
    order = np.lexsort((np.random.default_rng(seed).random(n), codes))  # shuffled within each stratum
    starts = np.cumsum(sizes) - sizes
    rank = np.empty(n, dtype="int64")
    rank[order] = np.arange(n) - starts[codes[order]]
    keep = np.flatnonzero(rank < quota[codes])
    out = rows.iloc[keep].reset_index(drop=True)
    kept = np.bincount(codes[keep], minlength=len(labels))
    counts = {k: [int(a), int(b)] for k, a, b in zip(labels, kept, sizes, strict=True)}
    return out, {**record, "sample_rate": f"{share:.6g}", "sample_rows": str(len(out)), "sample_counts": json.dumps(counts)}


def _strata_codes(rows: pd.DataFrame, strata: tuple[str, ...]) -> tuple[np.ndarray, list[str]]:
    """A stratum number per row, and each stratum's name ("value|value|...", in the order of `strata`)."""
    codes = rows.groupby(list(strata), sort=True, dropna=False).ngroup().to_numpy()
    _, first = np.unique(codes, return_index=True)  # one row of each stratum, in stratum order
    values = rows.iloc[first][list(strata)].astype(str).to_numpy()
    return codes, ["|".join(v) for v in values]


class SharedJoins:
    """Point-in-time joins shared by the models of one `train all`: each entity-row set is joined once.

    `groups` maps a row set's name (CONTACTS, SNAPSHOTS) to the FeatureServices of the models that read it.
    The first model that asks for a row set gets it sampled (past `sampling.max_rows`, stratified by STRATA) and
    joined with the union of its group's services; every later model takes the same rows, its own row columns
    (its labels) and its own service's columns from that one join, so each model still reads exactly its
    FeatureService's features.
    """

    def __init__(self, store, groups: dict[str, tuple[str, ...]], sampling: Sampling = Sampling()):
        self.store = store
        self.groups = groups
        self.sampling = sampling
        self.sampled: dict[str, dict[str, str]] = {}  # row set -> how it was sampled (logged with each model)
        self._frames: dict[tuple, pd.DataFrame] = {}  # features of the kept rows, by key
        self._kept: dict[tuple, np.ndarray] = {}  # positions of the kept rows in the row set asked for
        self._asked: dict[tuple, int] = {}
        self._rows: dict[tuple, pd.DataFrame] = {}

    def rows(self, key: tuple, build: Callable[[Sampling | None], tuple[pd.DataFrame, dict[str, str]]]) -> pd.DataFrame:
        """The row set `key`, built once by `build(sampling)`: a builder that can sample before it reads every
        column (the contact log: `contact_row_set`) gets this join's sampling when its group is trained."""
        if key not in self._rows:
            sampling = self.sampling if key[0] in self.groups else None
            self._rows[key], record = build(sampling)
            if sampling is not None:
                self.sampled[key[0]] = record
        return self._rows[key]

    def join(self, key: tuple, rows: pd.DataFrame, service: str) -> pd.DataFrame:
        """`historical(store, rows, service)`, from the cached union join of the rows named by `key` (group, ...);
        a row set larger than `sampling.max_rows` is sampled (stratified) before the join."""
        services = self.groups.get(key[0], ())
        if service not in services:
            return historical(self.store, rows, service)
        if key not in self._frames:
            sample = rows.assign(_kept=np.arange(len(rows)))
            if key[0] not in self.sampled:  # not sampled by their builder (`rows`): sampled here
                strata = tuple(c for c in STRATA.get(key[0], ()) if c in rows)
                sample, self.sampled[key[0]] = stratified_sample(sample, strata, self.sampling.max_rows,
                                                                 self.sampling.seed)
            refs = list(dict.fromkeys(r for s in services for r in _references(self.store, s)))
            keys = sample[["user_id", "event_timestamp", "_kept"]]
            self._frames[key] = historical(self.store, keys, refs).drop(columns=["user_id", "_kept"])
            self._kept[key] = sample["_kept"].to_numpy()
            self._asked[key] = len(rows)
        if self._asked[key] != len(rows):
            raise ValueError(f"shared join {key}: {len(rows)} rows asked for, {self._asked[key]} joined; one key, one row set")
        mine = rows.iloc[self._kept[key]].reset_index(drop=True)
        frame = self._frames[key]
        mine["event_timestamp"] = frame["event_timestamp"]  # as the join gives it (UTC, its unit); same index
        features = [c for c in service_features(self.store, service) if c not in rows.columns]
        return pd.concat([mine, frame[features]], axis=1)


def joined(store, rows: pd.DataFrame, service: str, key: tuple, shared: SharedJoins | None = None) -> pd.DataFrame:
    """Rows joined with a FeatureService: through `shared` (one join per `key`) when given, else directly."""
    return historical(store, rows, service) if shared is None else shared.join(key, rows, service)


def contact_frame(store, raw: dict[str, Table], window_days: int, service: str,
                  shared: SharedJoins | None = None, treated_only: bool = True) -> pd.DataFrame:
    """The contact log (contacted rows only, unless `treated_only` is off) joined with a FeatureService."""
    key = (CONTACTS, window_days)
    rows = contact_rows(raw, window_days) if shared is None else \
        shared.rows(key, lambda sampling: contact_row_set(raw, window_days, sampling))
    frame = joined(store, rows, service, key, shared)
    return frame[frame["treated"] == 1].reset_index(drop=True) if treated_only else frame


def utc_naive(times) -> np.ndarray:
    """UTC timestamps as timezone-free datetime64[ns] values, for vectorised comparisons."""
    return pd.DatetimeIndex(pd.to_datetime(times, utc=True)).tz_convert(None).to_numpy("datetime64[ns]")


def local_hours(times: pd.Series, user_ids: pd.Series, users: pd.DataFrame) -> np.ndarray:
    """Hour of day (0-23) of each timestamp in its user's timezone."""
    tz = user_ids.astype(str).map(users.assign(user_id=users["user_id"].astype(str)).set_index("user_id")["timezone"])
    times = pd.to_datetime(times, utc=True)
    out = np.full(len(times), -1, dtype="int64")
    for zone in tz.dropna().unique():
        mask = (tz == zone).to_numpy()
        out[mask] = times[mask].dt.tz_convert(zone).dt.hour.to_numpy()
    out[out < 0] = times[out < 0].dt.hour.to_numpy()  # unknown timezone: UTC
    return out


def observation_end(raw: dict[str, Table], contacts: pd.DataFrame) -> pd.Series:
    """Per contact, when its outcomes stop being observed: its `observed_until` (the export date) when given,
    else the newest event or send in the data. Outcomes after it are unknown, not "did not happen"."""
    contacts = raw["contacts"] if contacts is None else contacts
    end = max(event_span(raw["events"])[1], pd.to_datetime(contacts["sent_at"], utc=True).max())
    if "observed_until" not in contacts:
        return pd.Series(end, index=contacts.index)
    return pd.to_datetime(contacts["observed_until"], utc=True).fillna(end)


def outcome_within(contacts: pd.DataFrame, column: str, window_days: int) -> np.ndarray:
    """1 where the outcome `column` (e.g. converted_at) happened within `window_days` of the send, else 0 (also
    when the contact log has no such column): the one definition of a label's window."""
    if column not in contacts:
        return np.zeros(len(contacts), dtype="int64")
    sent = pd.to_datetime(contacts["sent_at"], utc=True)
    t = pd.to_datetime(contacts[column], utc=True)
    return ((t >= sent) & (t - sent <= pd.Timedelta(days=window_days))).to_numpy(dtype="int64")


# The contact log columns the row set reads: the send, the outcomes and the window's end (labels, sampling), then
# the request columns of the rows kept.
_OUTCOMES = ("converted_at", "opened_at", "clicked_at")
_REQUEST = ("contact_id", "user_id", "offer_id", "channel", "propensity")


def contact_rows(raw: dict[str, Table], window_days: int = 7) -> pd.DataFrame:
    """One row per logged contact (control rows included) with the request columns and outcome labels.

    Labels count outcomes within `window_days` of the send; contacts too recent for a full window (before
    `observation_end`) are dropped, so a missing conversion always means "did not convert".
    """
    return contact_row_set(raw, window_days)[0]


def contact_row_set(raw: dict[str, Table], window_days: int = 7,
                    sampling: Sampling | None = None) -> tuple[pd.DataFrame, dict[str, str]]:
    """`contact_rows`, stratified-sampled to `sampling.max_rows` (STRATA[CONTACTS]) before its request columns
    are read, and the record of the sampling (`stratified_sample`).

    The contact log may be a DataFrame or its Parquet file: DuckDB reads the send, variant and outcome times of
    every contact (the labels and the sample need them), and the other columns of the kept rows only, so a 16M-row
    log never sits in pandas whole.
    """
    contacts = raw.get("contacts")
    if contacts is None or (isinstance(contacts, pd.DataFrame) and contacts.empty):
        raise ValueError("no contacts table: conversion, uplift, channel, send-time and offer models need a contact log")
    if isinstance(contacts, pd.DataFrame):  # the same types DuckDB reads from Parquet (times in UTC)
        contacts = contacts.assign(**{c: pd.to_datetime(contacts[c], utc=True) for c in
                                      ("sent_at", *_OUTCOMES, "observed_until") if c in contacts})
    with connect(contacts=contacts) as con:
        have = {r[0] for r in con.execute("DESCRIBE contacts").fetchall()}
        variant = "variant::VARCHAR" if "variant" in have else "NULL::VARCHAR"
        times = ", ".join(f"{c}::TIMESTAMPTZ AS {c}" for c in (*_OUTCOMES, "observed_until") if c in have)
        # a logged "no action" is not a contact: neither treated nor the random control group
        c = con.execute(f"""
            SELECT _pos, sent_at::TIMESTAMPTZ AS sent_at{', ' + times if times else ''},
                   ({variant} IS DISTINCT FROM 'control' AND channel IS NOT NULL)::BIGINT AS treated
            FROM contacts WHERE {variant} IS DISTINCT FROM 'no_action' ORDER BY _pos""").df()
        if c.empty:
            raise ValueError("no contacts table: conversion, uplift, channel, send-time and offer models need a contact log")
        c["sent_at"] = pd.to_datetime(c["sent_at"], utc=True).astype("datetime64[ns, UTC]")
        window = pd.Timedelta(days=window_days)
        end = observation_end(raw, c)
        complete = (c["sent_at"] + window <= end).to_numpy()
        if not complete.any():
            raise ValueError(f"none of the {len(c):,} contacts has a complete {window_days}-day outcome window: the data "
                             f"is observed until {end.max():%Y-%m-%d} and the newest send is {c['sent_at'].max():%Y-%m-%d}; "
                             "give the contacts an `observed_until` (the export date, e.g. a mapping constant) or a "
                             "shorter --window")
        c = c[complete].reset_index(drop=True)
        c["converted"] = outcome_within(c, "converted_at", window_days)
        c["opened"] = outcome_within(c, "opened_at", window_days)
        c["clicked"] = outcome_within(c, "clicked_at", window_days)
        c = c[["_pos", "sent_at", "treated", "converted", "opened", "clicked"]]
        record: dict[str, str] = {}
        if sampling is not None:
            c, record = stratified_sample(c, STRATA[CONTACTS], sampling.max_rows, sampling.seed)
        con.register("kept", pd.DataFrame({"_pos": c["_pos"].to_numpy(), "_row": np.arange(len(c))}))
        cols = ", ".join(f"x.{col}" if col in have else f"NULL AS {col}" for col in _REQUEST)
        request = con.execute(f"SELECT k._row, {cols} FROM kept k JOIN contacts x ON x._pos = k._pos "
                              "ORDER BY k._row").df()
    c = pd.concat([c.drop(columns="_pos").reset_index(drop=True), request.drop(columns="_row")], axis=1)
    offers = raw.get("offers")
    if offers is not None:
        o = offers.assign(offer_id=offers["offer_id"].astype(str)).set_index("offer_id")
        key = c["offer_id"].astype(str)
        c["offer_category"] = key.map(o["category"]).astype(object)
        c["offer_value"] = key.map(o["value"]).astype("float64")
        kind = key.map(o["kind"]).astype(object) if "kind" in o else pd.Series(None, index=c.index, dtype=object)
        c["offer_kind"] = kind.where(kind.notna(), DEFAULT_OFFER_KIND)  # serving's default too (contract.OFFER_KINDS)
    else:
        c["offer_category"], c["offer_value"], c["offer_kind"] = None, np.nan, DEFAULT_OFFER_KIND
    c["local_hour"] = local_hours(c["sent_at"], c["user_id"], raw["users"])
    c["engaged"] = np.maximum(c["opened"], c["clicked"])
    c["propensity"] = c["propensity"].astype("float64")
    keep = ["contact_id", "user_id", "sent_at", "offer_id", "offer_category", "offer_kind", "offer_value", "channel",
            "local_hour", "treated", "converted", "opened", "clicked", "engaged", "propensity"]
    out = c[keep].rename(columns={"sent_at": "event_timestamp"})
    out["user_id"] = out["user_id"].astype(str)
    out["offer_id"] = out["offer_id"].astype(object)
    out["channel"] = out["channel"].astype(object)
    return out, record


def snapshot_dates(events: Table, horizon_days: int, as_of: pd.Timestamp | None = None, count: int = 4,
                   every_days: int = 7, available: pd.DatetimeIndex | None = None) -> pd.DatetimeIndex:
    """Weekly midnight-UTC dates, the newest at `as_of` (default: the last one whose horizon is fully observed).

    `available`: the feature tables' snapshot times. Every date returned is one of them, so a row never joins
    a snapshot days older than its date: an `as_of` without its own snapshot is an error that says how to
    build one, and the default newest date is the newest snapshot with a fully observed horizon.
    """
    first, newest_event = event_span(events)
    last = newest_event.floor("D") + pd.Timedelta(days=1)
    horizon = pd.Timedelta(days=horizon_days)
    if as_of is not None:
        newest = pd.Timestamp(as_of)
        newest = newest.tz_localize("UTC") if newest.tzinfo is None else newest.tz_convert("UTC")
    elif available is not None and len(available):
        done = available[available + horizon <= last]
        newest = done.max() if len(done) else last - horizon
    else:
        newest = last - horizon
    # Name the date as the caller chose it: `retrain` has no --as-of, its date is the newest snapshot.
    named = f"--as-of {newest.date()}" if as_of is not None else f"the newest snapshot date {newest.date()}"
    if newest + horizon > last:
        raise ValueError(f"{named} + horizon {horizon_days} d runs past the data (last event "
                         f"{newest_event.date()}): pick an earlier date (`nextbest train ... --as-of`) or a shorter "
                         "horizon (`--horizon`)")
    if newest <= first:
        raise ValueError(f"{named} is before the first event ({first.date()}): the labels need events before the "
                         f"snapshot and {horizon_days} d after it: a longer history of events or a shorter `--horizon`")
    if available is not None and newest not in available:
        older = available[available < newest]
        nearest = f"the nearest older one is {older.max().date()}, {(newest - older.max()).days} d earlier" \
            if len(older) else "there is none before it"
        raise ValueError(f"no feature snapshot at {newest.date()} ({nearest}): run `nextbest features build --as-of "
                         f"{newest.date()}` (and `features apply`) so the training date has its own snapshot")
    dates = [newest - pd.Timedelta(days=every_days * k) for k in range(count)]
    dates = [d for d in dates if d > first.floor("D") + pd.Timedelta(days=every_days)
             and (available is None or d in available)]
    return pd.DatetimeIndex(sorted(dates) or [newest])


def feature_snapshots(store) -> pd.DatetimeIndex | None:
    """The snapshot times of the feature tables (read from the behaviour view's Parquet source), or None."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from feast.errors import FeatureViewNotFoundException

    try:
        path = store.get_feature_view("behaviour").batch_source.path
    except FeatureViewNotFoundException:  # a store without the behaviour view: nothing to check against
        return None
    times = pc.unique(pq.read_table(path, columns=["event_timestamp"]).column(0)).to_pandas()
    return pd.DatetimeIndex(pd.to_datetime(times, utc=True)).sort_values()


def snapshot_rows(users: pd.DataFrame, dates: pd.DatetimeIndex) -> pd.DataFrame:
    """Every user who had signed up, at every date."""
    u = users[["user_id", "signup_at"]].assign(user_id=users["user_id"].astype(str),
                                                signup_at=pd.to_datetime(users["signup_at"], utc=True))
    grid = u.merge(pd.DataFrame({"event_timestamp": dates}), how="cross")
    return grid[grid["signup_at"] < grid["event_timestamp"]].drop(columns="signup_at").reset_index(drop=True)


def split(ts: TrainingSet, holdout: float = 0.2, seed: int = 7) -> tuple[TrainingSet, TrainingSet]:
    """The one train/holdout split: the newest rows when labels span time, else seeded and stratified."""
    times = ts.frame[ts.time]
    if times.nunique() > 1:
        order = np.argsort(times.to_numpy(), kind="stable")
        cut = times.iloc[order[int(len(order) * (1 - holdout))]]
        test = (times >= cut).to_numpy()
        if 0 < test.sum() < len(test) and len(np.unique(ts.y[test])) == 2 and len(np.unique(ts.y[~test])) == 2:
            return ts.subset(~test), ts.subset(test)
    strata = ts.y * 2 + (ts.frame[ts.treatment].to_numpy(dtype="int64") if ts.treatment else 0)
    idx = np.arange(len(ts.frame))
    counts = np.bincount(strata)
    train_idx, test_idx = train_test_split(idx, test_size=holdout, random_state=seed,
                                           stratify=strata if counts[counts > 0].min() >= 2 else None)
    return ts.subset(np.sort(train_idx)), ts.subset(np.sort(test_idx))
