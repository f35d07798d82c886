"""Churn: P(churn within H days), LightGBM; the label comes from inactivity, a terminal event or a labels table."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from nextbest.features.feature_services import service_name
from nextbest.training.datasets import (
    SNAPSHOTS,
    SharedJoins,
    TrainingSet,
    feature_snapshots,
    historical,
    joined,
    service_features,
    snapshot_dates,
    snapshot_rows,
    utc_naive,
)
from nextbest.training.label import labelled_rows
from nextbest.training.metrics import classification_metrics
from nextbest.training.tabular import BoosterScorer, FitConfig, fit_booster

__all__ = ["ChurnConfig", "churn_labels", "build_frame", "fit", "evaluate"]


@dataclass(frozen=True)
class ChurnConfig:
    """Horizon, activity rule, as-of dates and tuning budget."""

    horizon_days: int = 30  # churned = no activity in [t, t + horizon) ...
    active_days: int = 30  # ... among users active in the `active_days` before t (the others already left)
    terminal_types: tuple[str, ...] = ("account_closed", "unsubscribe_all")  # an event of these types = churn
    as_of: pd.Timestamp | None = None
    dates: int = 4
    fit: FitConfig = field(default_factory=FitConfig)


def churn_labels(rows: pd.DataFrame, events: pd.DataFrame, config: ChurnConfig) -> tuple[np.ndarray, np.ndarray]:
    """(label, eligible): eligible = active before t; label = inactive in the horizon or a terminal event in it."""
    ev = pd.DataFrame({"user_id": events["user_id"].astype(str).to_numpy(), "ts": utc_naive(events["ts"]),
                       "terminal": events["type"].astype(str).isin(config.terminal_types).to_numpy()})
    joined = rows[["user_id", "event_timestamp"]].assign(_row=np.arange(len(rows))).merge(ev, on="user_id")
    t, ts = utc_naive(joined["event_timestamp"]), joined["ts"].to_numpy()
    before = (ts < t) & (ts >= t - np.timedelta64(config.active_days, "D"))
    after = (ts >= t) & (ts < t + np.timedelta64(config.horizon_days, "D"))
    n = len(rows)
    eligible = np.bincount(joined["_row"][before], minlength=n) > 0
    active_after = np.bincount(joined["_row"][after & ~joined["terminal"].to_numpy()], minlength=n) > 0
    terminal = np.bincount(joined["_row"][after & joined["terminal"].to_numpy()], minlength=n) > 0
    return ((~active_after) | terminal).astype("int64"), eligible


def build_frame(store, raw: dict, config: ChurnConfig = ChurnConfig(), shared: SharedJoins | None = None) -> TrainingSet:
    """Active users x snapshot dates with the churn label, or the rows of a labels table when one is given."""
    service = service_name("churn")
    labels = raw.get("labels")
    if labels is not None and len(labels):
        frame = historical(store, labelled_rows(labels), service)  # the label model's rows, churn's features
    else:
        dates = snapshot_dates(raw["events"], config.horizon_days, config.as_of, config.dates,
                               available=feature_snapshots(store))
        rows = snapshot_rows(raw["users"], dates)
        rows["event_timestamp"] = pd.to_datetime(rows["event_timestamp"], utc=True)
        # Join every snapshot row (the row set purchase shares), then keep the users active before each date.
        frame = joined(store, rows, service, (SNAPSHOTS, tuple(dates)), shared)
        label, eligible = churn_labels(frame, raw["events"], config)
        frame = frame.assign(label=label)[eligible].reset_index(drop=True)
    return TrainingSet(frame, service, service_features(store, service), (), customer_base_weeks=config.horizon_days / 7)


def fit(train: TrainingSet, config: ChurnConfig = ChurnConfig(), progress=None) -> BoosterScorer:
    return fit_booster(train.frame, train.inputs, train.y, train.feature_service, config.fit, progress=progress,
                       customer_base_weeks=train.customer_base_weeks)


def evaluate(scorer, holdout: TrainingSet) -> dict[str, float]:
    return classification_metrics(holdout.y, np.asarray(scorer.predict(holdout.frame)))
