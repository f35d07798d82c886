"""Purchase propensity: P(purchase [in a category] within H days), LightGBM on user snapshots."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from nextbest.features.feature_services import service_name
from nextbest.training.activity import purchase_labels
from nextbest.training.datasets import (
    SNAPSHOTS,
    SharedJoins,
    TrainingSet,
    feature_snapshots,
    joined,
    service_features,
    snapshot_dates,
    snapshot_rows,
)
from nextbest.training.metrics import classification_metrics
from nextbest.training.tabular import BoosterScorer, FitConfig, fit_booster

__all__ = ["PurchaseConfig", "purchase_labels", "build_frame", "fit", "evaluate"]


@dataclass(frozen=True)
class PurchaseConfig:
    """Horizon, as-of dates and tuning budget."""

    horizon_days: int = 30
    as_of: pd.Timestamp | None = None  # newest snapshot date (default: the last with a full horizon)
    dates: int = 4  # weekly snapshot dates, newest first
    category: str | None = None  # only purchases in this category count (None: any purchase)
    fit: FitConfig = field(default_factory=FitConfig)


def build_frame(store, raw: dict, config: PurchaseConfig = PurchaseConfig(), shared: SharedJoins | None = None) -> TrainingSet:
    """Users x snapshot dates, features as of each date, label = purchases within the horizon."""
    dates = snapshot_dates(raw["events"], config.horizon_days, config.as_of, config.dates,
                           available=feature_snapshots(store))
    rows = snapshot_rows(raw["users"], dates)
    rows["event_timestamp"] = pd.to_datetime(rows["event_timestamp"], utc=True)
    # The label before the join (from the events, in DuckDB): a sampled row set keeps each date's purchase share.
    rows["label"] = purchase_labels(rows, raw["events"], config.horizon_days, config.category)
    service = service_name("purchase")
    frame = joined(store, rows, service, (SNAPSHOTS, tuple(dates)), shared)
    return TrainingSet(frame, service, service_features(store, service), (), customer_base_weeks=config.horizon_days / 7)


def fit(train: TrainingSet, config: PurchaseConfig = PurchaseConfig(), progress=None) -> BoosterScorer:
    return fit_booster(train.frame, train.inputs, train.y, train.feature_service, config.fit, progress=progress,
                       customer_base_weeks=train.customer_base_weeks)


def evaluate(scorer, holdout: TrainingSet) -> dict[str, float]:
    return classification_metrics(holdout.y, np.asarray(scorer.predict(holdout.frame)))
