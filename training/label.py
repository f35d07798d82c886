"""Any labelled outcome: P(label = 1 | the user's features at as_of), LightGBM on the rows of a labels file.

Churn with a labels file, insurance take-up, a product's purchase, a campaign response: one model per
outcome NAME, registered as nextbest-label-NAME with its own FeatureService (label_NAME_v1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from nextbest.features.feature_services import service_name
from nextbest.training.datasets import SharedJoins, TrainingSet, historical, service_features
from nextbest.training.metrics import classification_metrics
from nextbest.training.tabular import BoosterScorer, FitConfig, fit_booster

__all__ = ["LabelConfig", "check_name", "labelled_rows", "build_frame", "fit", "evaluate"]

LABEL_WINDOW_DAYS = 30  # the window of BG/NBD's expected purchases for a labelled outcome
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


@dataclass(frozen=True)
class LabelConfig:
    """The outcome's name and the tuning budget."""

    name: str
    fit: FitConfig = field(default_factory=FitConfig)


def check_name(name: str) -> str:
    """`name` if it can name a model, a FeatureService and a registry entry, else a ValueError saying how."""
    if not _NAME.match(name):
        raise ValueError(f"label model name {name!r}: use 1-40 lowercase letters, digits and _, starting with a letter "
                         "(e.g. insurance_takeup)")
    return name


def labelled_rows(labels: pd.DataFrame) -> pd.DataFrame:
    """Entity rows from a labels table: user id as text, the as_of time (UTC), the 0/1 label."""
    return pd.DataFrame({"user_id": labels["user_id"].astype(str), "event_timestamp": pd.to_datetime(labels["as_of"], utc=True),
                         "label": labels["label"].astype("int64")}).reset_index(drop=True)


def build_frame(store, raw: dict, config: LabelConfig, shared: SharedJoins | None = None) -> TrainingSet:
    """The labels file's rows, each joined point-in-time with the model's FeatureService as of its as_of."""
    labels = raw.get("labels")
    if labels is None or labels.empty:
        raise ValueError(f"label model {config.name!r} needs a labels file: `nextbest train label {config.name} "
                         "--labels FILE` (user_id, as_of, label)")
    service = service_name(f"label_{config.name}")
    frame = historical(store, labelled_rows(labels), service)
    # A labels file names no window: BG/NBD's inputs look 30 days ahead (P(alive) does not depend on it, and the
    # expected purchases rank customers nearly alike for any window).
    return TrainingSet(frame, service, service_features(store, service), (), customer_base_weeks=LABEL_WINDOW_DAYS / 7)


def fit(train: TrainingSet, config: LabelConfig, progress=None) -> BoosterScorer:
    return fit_booster(train.frame, train.inputs, train.y, train.feature_service, config.fit, progress=progress,
                       customer_base_weeks=train.customer_base_weeks)


def evaluate(scorer, holdout: TrainingSet) -> dict[str, float]:
    return classification_metrics(holdout.y, np.asarray(scorer.predict(holdout.frame)))
