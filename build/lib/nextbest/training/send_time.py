"""Send time: P(open | user, channel, local hour), PyTorch (user features + channel and hour embeddings)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from nextbest.features.feature_services import service_name
from nextbest.training.datasets import (
    REQUEST_COLUMNS,
    SharedJoins,
    TrainingSet,
    contact_frame,
    service_features,
)
from nextbest.training.encoding import FrameEncoder, fit_encoder
from nextbest.training.metrics import classification_metrics
from nextbest.training.nets import device, load_state, predict_net, save_net, train_net
from torch import nn

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


class SendTimeNet(nn.Module):
    """User tower + channel and hour embeddings (+ the user's own open share at that hour) -> logit."""

    def __init__(self, width: int, channels: int, hidden: int = 64):
        super().__init__()
        self.user = nn.Sequential(nn.Linear(width, hidden), nn.ReLU())
        self.channel = nn.Embedding(channels + 1, 8)  # index 0 = unknown channel
        self.hour = nn.Embedding(24, 8)
        self.head = nn.Sequential(nn.Linear(hidden + 16 + 1, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor, channel: torch.Tensor, hour: torch.Tensor, share: torch.Tensor) -> torch.Tensor:
        z = torch.cat([self.user(x), self.channel(channel), self.hour(hour), share[:, None]], dim=1)
        return self.head(z).squeeze(1)


def hour_share(frame: pd.DataFrame, hours: np.ndarray) -> np.ndarray:
    """The user's share of app opens at each row's local hour (1/24 when the time profile is missing)."""
    if not all(c in frame for c in _SHARES):
        return np.full(len(frame), 1 / 24, dtype="float32")
    shares = frame[_SHARES].to_numpy(dtype="float64", na_value=1 / 24)
    return shares[np.arange(len(frame)), hours].astype("float32")


class SendTimeScorer:
    """P(open) for (user features, channel, local_hour) rows, vectorised."""

    kind = "send_time_net"

    def __init__(self, net: SendTimeNet, encoder: FrameEncoder, channels: tuple[str, ...], feature_service: str, hidden: int):
        self.net_ = net
        self.encoder_ = encoder
        self.channels_ = channels
        self.feature_service = feature_service
        self.hidden_ = hidden
        self.params_ = {"hidden": hidden, "channels": ",".join(channels)}

    def inputs(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        hours = pd.to_numeric(frame["local_hour"], errors="coerce").fillna(12).to_numpy().astype("int64").clip(0, 23)
        codes = pd.Index(self.channels_).get_indexer(frame["channel"].astype(str)) + 1  # unknown -> 0
        return {"x": self.encoder_.dense(frame), "channel": codes.astype("int64"), "hour": hours,
                "share": hour_share(frame, hours)}

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return predict_net(self.net_, self.inputs(frame))

    def save(self, folder: Path) -> None:
        save_net(self.net_, folder, {"kind": self.kind, "feature_service": self.feature_service, "hidden": self.hidden_,
                                     "channels": list(self.channels_)})
        (folder / "encoder.json").write_text(json.dumps(self.encoder_.to_json()))

    @classmethod
    def load(cls, folder: Path) -> SendTimeScorer:
        meta = json.loads((folder / "meta.json").read_text())
        encoder = FrameEncoder.from_json(json.loads((folder / "encoder.json").read_text()))
        net = SendTimeNet(encoder.dense_width, len(meta["channels"]), meta["hidden"])
        net.load_state_dict(load_state(folder))
        net.to(device()).eval()
        return cls(net, encoder, tuple(meta["channels"]), meta["feature_service"], meta["hidden"])


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
