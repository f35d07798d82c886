"""Send time: P(open | user, channel, local hour), PyTorch (user features + channel and hour embeddings)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nextbest.features.feature_services import service_name
from nextbest.training.datasets import (
    REQUEST_COLUMNS,
    SharedJoins,
    TrainingSet,
    contact_frame,
    service_features,
)
from nextbest.training.encoding import fit_encoder
from nextbest.training.metrics import classification_metrics
from nextbest.training.nets import train_net
from nextbest.training.scorers import SendTimeNet, SendTimeScorer, hour_share

__all__ = ["SendTimeConfig", "SendTimeNet", "SendTimeScorer", "build_frame", "fit", "evaluate", "hour_share"]

_SHARES = [f"open_share_h{h:02d}" for h in range(24)]


@dataclass(frozen=True)
class SendTimeConfig:
    """Open window and network size."""

    window_days: int = 7  # an open counts within this many days of the send
    hidden: int = 64
    epochs: int = 6
    batch: int = 2048
    lr: float = 1e-2
    seed: int = 7


def build_frame(store, raw: dict, config: SendTimeConfig = SendTimeConfig(), shared: SharedJoins | None = None) -> TrainingSet:
    """Every sent contact with its local send hour, features as of the send, label = opened."""
    service = service_name("send_time")
    frame = contact_frame(store, raw, config.window_days, service, shared).assign(label=lambda f: f["opened"])
    return TrainingSet(frame, service, service_features(store, service), REQUEST_COLUMNS["send_time"])


def fit(train: TrainingSet, config: SendTimeConfig = SendTimeConfig(), progress=None) -> SendTimeScorer:
    torch.manual_seed(config.seed)  # weight initialisation
    encoder = fit_encoder(train.frame, list(train.features), request=train.request)  # + matched features
    channels = tuple(sorted(train.frame["channel"].dropna().astype(str).unique()))
    net = SendTimeNet(encoder.dense_width, len(channels), config.hidden)
    scorer = SendTimeScorer(net, encoder, channels, train.feature_service, config.hidden)
    train_net(net, scorer.inputs(train.frame), train.y, epochs=config.epochs, batch=config.batch, lr=config.lr, seed=config.seed)
    return scorer


def evaluate(scorer, holdout: TrainingSet) -> dict[str, float]:
    return classification_metrics(holdout.y, np.asarray(scorer.predict(holdout.frame)))
