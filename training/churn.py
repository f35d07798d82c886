"""Churn: P(churn within H days), LightGBM; the label comes from inactivity, a terminal event or a labels table."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from nextbest.features.feature_services import service_name
from nextbest.training import activity
from nextbest.training.activity import Table
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


def churn_labels(rows: pd.DataFrame, events: Table, config: ChurnConfig) -> tuple[np.ndarray, np.ndarray]:
    """(label, eligible): eligible = active before t; label = inactive in the horizon or a terminal event in it."""
    return activity.churn_labels(rows, events, config.horizon_days, config.active_days, config.terminal_types)


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
        # Labels before the join (from the events, in DuckDB), so a sampled row set keeps their shares; join the
        # snapshot rows (the row set purchase shares), then keep the users active before each date.
        label, eligible = churn_labels(rows, raw["events"], config)
        frame = joined(store, rows.assign(label=label, eligible=eligible), service, (SNAPSHOTS, tuple(dates)), shared)
        frame = frame[frame["eligible"].to_numpy(dtype=bool)].drop(columns="eligible").reset_index(drop=True)
    return TrainingSet(frame, service, service_features(store, service), (), customer_base_weeks=config.horizon_days / 7)


def fit(train: TrainingSet, config: ChurnConfig = ChurnConfig(), progress=None) -> BoosterScorer:
    return fit_booster(train.frame, train.inputs, train.y, train.feature_service, config.fit, progress=progress,
                       customer_base_weeks=train.customer_base_weeks)


def evaluate(scorer, holdout: TrainingSet) -> dict[str, float]:
    return classification_metrics(holdout.y, np.asarray(scorer.predict(holdout.frame)))
