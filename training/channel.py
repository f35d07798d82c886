"""Channel response: P(open or click | user, channel), LightGBM on the contact log."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nextbest.features.feature_services import service_name
from nextbest.training.datasets import (
    REQUEST_COLUMNS,
    SharedJoins,
    TrainingSet,
    contact_frame,
    service_features,
)
from nextbest.training.metrics import classification_metrics
from nextbest.training.tabular import BoosterScorer, FitConfig, fit_booster

__all__ = ["ChannelConfig", "build_frame", "fit", "evaluate"]


@dataclass(frozen=True)
class ChannelConfig:
    """Response window and tuning budget."""

    window_days: int = 7  # an open or click counts within this many days of the send
    fit: FitConfig = field(default_factory=FitConfig)


def build_frame(store, raw: dict, config: ChannelConfig = ChannelConfig(), shared: SharedJoins | None = None) -> TrainingSet:
    """Every sent contact, features as of the send, label = opened or clicked."""
    service = service_name("channel_response")
    frame = contact_frame(store, raw, config.window_days, service, shared).assign(label=lambda f: f["engaged"])
    return TrainingSet(frame, service, service_features(store, service), REQUEST_COLUMNS["channel"])


def fit(train: TrainingSet, config: ChannelConfig = ChannelConfig(), progress=None) -> BoosterScorer:
    return fit_booster(train.frame, train.inputs, train.y, train.feature_service, config.fit, progress=progress)


def evaluate(scorer, holdout: TrainingSet) -> dict[str, float]:
    return classification_metrics(holdout.y, np.asarray(scorer.predict(holdout.frame)))
