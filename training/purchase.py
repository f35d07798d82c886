"""Purchase propensity: P(purchase [in a category] within H days), LightGBM on user snapshots."""

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
    joined,
    service_features,
    snapshot_dates,
    snapshot_rows,
    utc_naive,
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


def purchase_labels(rows: pd.DataFrame, events: pd.DataFrame, horizon_days: int, category: str | None = None) -> np.ndarray:
    """1 where the user purchases (in `category`) in [t, t + horizon)."""
    ev = events[events["type"].astype(str) == "purchase"]
    if category is not None:
        ev = ev[ev["category"].astype(str) == category]
    ev = pd.DataFrame({"user_id": ev["user_id"].astype(str).to_numpy(), "ts": utc_naive(ev["ts"])})
    keyed = rows[["user_id", "event_timestamp"]].assign(_row=np.arange(len(rows)))
    joined = keyed.merge(ev, on="user_id")
    t = utc_naive(joined["event_timestamp"])
    hit = (joined["ts"].to_numpy() >= t) & (joined["ts"].to_numpy() < t + np.timedelta64(horizon_days, "D"))
    out = np.zeros(len(rows), dtype="int64")
    out[np.unique(joined.loc[hit, "_row"].to_numpy())] = 1
    return out


def build_frame(store, raw: dict, config: PurchaseConfig = PurchaseConfig(), shared: SharedJoins | None = None) -> TrainingSet:
    """Users x snapshot dates, features as of each date, label = purchases within the horizon."""
    dates = snapshot_dates(raw["events"], config.horizon_days, config.as_of, config.dates,
                           available=feature_snapshots(store))
    rows = snapshot_rows(raw["users"], dates)
    rows["event_timestamp"] = pd.to_datetime(rows["event_timestamp"], utc=True)
    service = service_name("purchase")
    frame = joined(store, rows, service, (SNAPSHOTS, tuple(dates)), shared)
    frame["label"] = purchase_labels(frame, raw["events"], config.horizon_days, config.category)
    return TrainingSet(frame, service, service_features(store, service), (), customer_base_weeks=config.horizon_days / 7)


def fit(train: TrainingSet, config: PurchaseConfig = PurchaseConfig(), progress=None) -> BoosterScorer:
    return fit_booster(train.frame, train.inputs, train.y, train.feature_service, config.fit, progress=progress,
                       customer_base_weeks=train.customer_base_weeks)


def evaluate(scorer, holdout: TrainingSet) -> dict[str, float]:
    return classification_metrics(holdout.y, np.asarray(scorer.predict(holdout.frame)))
