"""Offer network: P(convert | user, offer, channel, hour) in PyTorch, inverse-propensity weighted; challenger to LightGBM."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from nextbest.features.feature_services import service_name
from nextbest.features.settings import Settings
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

__all__ = ["OfferNetConfig", "OfferNet", "OfferNetScorer", "ipw_weights", "build_frame", "fit", "evaluate",
           "compare_with_conversion"]

_KEYS = ("offer_id", "channel", "offer_category", "offer_kind")  # embedded request columns


@dataclass(frozen=True)
class OfferNetConfig:
    """Label window, propensity clipping and network size."""

    window_days: int = 7
    min_propensity: float = 0.05  # weights are capped at 1 / this, so a few rare actions cannot dominate
    hidden: int = 64
    epochs: int = 6
    batch: int = 2048
    lr: float = 1e-2
    seed: int = 7


class OfferNet(nn.Module):
    """User tower + embeddings of offer, channel, category, kind and hour + offer value -> logit."""

    def __init__(self, width: int, sizes: dict[str, int], hidden: int = 64):
        super().__init__()
        self.user = nn.Sequential(nn.Linear(width, hidden), nn.ReLU())
        self.embed = nn.ModuleDict({k: nn.Embedding(sizes[k] + 1, 8) for k in _KEYS})  # index 0 = unknown
        self.hour = nn.Embedding(24, 4)
        self.head = nn.Sequential(nn.Linear(hidden + 8 * len(_KEYS) + 4 + 1, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x, offer_id, channel, offer_category, offer_kind, hour, value) -> torch.Tensor:
        keys = {"offer_id": offer_id, "channel": channel, "offer_category": offer_category, "offer_kind": offer_kind}
        parts = [self.user(x), *(self.embed[k](keys[k]) for k in _KEYS), self.hour(hour), value[:, None]]
        return self.head(torch.cat(parts, dim=1)).squeeze(1)


class OfferNetScorer:
    """P(convert within the window) for (user features, offer, channel, local hour) rows."""

    kind = "offer_net"

    def __init__(self, net: OfferNet, encoder: FrameEncoder, vocab: dict[str, tuple[str, ...]], feature_service: str, hidden: int):
        self.net_ = net
        self.encoder_ = encoder
        self.vocab_ = vocab
        self.feature_service = feature_service
        self.hidden_ = hidden
        self.params_ = {"hidden": hidden, **{f"n_{k}": len(v) for k, v in vocab.items()}}

    def inputs(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        out = {"x": self.encoder_.dense(frame)}
        for k in _KEYS:
            out[k] = (pd.Index(self.vocab_[k]).get_indexer(frame[k].astype(str)) + 1).astype("int64")
        out["hour"] = pd.to_numeric(frame["local_hour"], errors="coerce").fillna(12).to_numpy().astype("int64").clip(0, 23)
        out["value"] = np.log1p(pd.to_numeric(frame["offer_value"], errors="coerce").fillna(0).clip(lower=0)).to_numpy("float32")
        return out

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return predict_net(self.net_, self.inputs(frame))

    def save(self, folder: Path) -> None:
        save_net(self.net_, folder, {"kind": self.kind, "feature_service": self.feature_service, "hidden": self.hidden_,
                                     "vocab": {k: list(v) for k, v in self.vocab_.items()}})
        (folder / "encoder.json").write_text(json.dumps(self.encoder_.to_json()))

    @classmethod
    def load(cls, folder: Path) -> OfferNetScorer:
        meta = json.loads((folder / "meta.json").read_text())
        encoder = FrameEncoder.from_json(json.loads((folder / "encoder.json").read_text()))
        vocab = {k: tuple(v) for k, v in meta["vocab"].items()}
        net = OfferNet(encoder.dense_width, {k: len(v) for k, v in vocab.items()}, meta["hidden"])
        net.load_state_dict(load_state(folder))
        net.to(device()).eval()
        return cls(net, encoder, vocab, meta["feature_service"], meta["hidden"])


def ipw_weights(propensity: pd.Series, min_propensity: float) -> np.ndarray:
    """1 / P(logging policy chose this action), clipped and normalised to mean 1 (1 where unknown)."""
    p = pd.to_numeric(propensity, errors="coerce").to_numpy(dtype="float64")
    w = np.where(np.isfinite(p) & (p > 0), 1.0 / np.clip(p, min_propensity, 1.0), 1.0)
    return (w / w.mean()).astype("float32")


def build_frame(store, raw: dict, config: OfferNetConfig = OfferNetConfig(), shared: SharedJoins | None = None) -> TrainingSet:
    """Every contacted row of the log with its inverse-propensity weight, label = converted."""
    service = service_name("offer_net")
    frame = contact_frame(store, raw, config.window_days, service, shared)
    frame = frame.assign(ipw=ipw_weights(frame["propensity"], config.min_propensity), label=frame["converted"])
    return TrainingSet(frame, service, service_features(store, service), REQUEST_COLUMNS["offer_net"], weight="ipw")


def fit(train: TrainingSet, config: OfferNetConfig = OfferNetConfig(), progress=None) -> OfferNetScorer:
    torch.manual_seed(config.seed)  # weight initialisation
    encoder = fit_encoder(train.frame, list(train.features), request=train.request)  # + matched features
    vocab = {k: tuple(sorted(train.frame[k].dropna().astype(str).unique())) for k in _KEYS}
    net = OfferNet(encoder.dense_width, {k: len(v) for k, v in vocab.items()}, config.hidden)
    scorer = OfferNetScorer(net, encoder, vocab, train.feature_service, config.hidden)
    weight = train.frame[train.weight].to_numpy() if train.weight else None
    train_net(net, scorer.inputs(train.frame), train.y, weight, epochs=config.epochs, batch=config.batch, lr=config.lr,
              seed=config.seed)
    return scorer


def evaluate(scorer, holdout: TrainingSet) -> dict[str, float]:
    return classification_metrics(holdout.y, np.asarray(scorer.predict(holdout.frame)))


def compare_with_conversion(settings: Settings, holdout: TrainingSet) -> dict[str, float]:
    """The LightGBM conversion champion's AUC on this holdout, so the challenger's AUC has a reference."""
    from nextbest.training.registry import MODEL_NAMES, _champion_version, _client, load_version

    client = _client(settings)
    if not client.search_registered_models(filter_string=f"name = '{MODEL_NAMES['conversion']}'"):
        return {}
    version = _champion_version(client, MODEL_NAMES["conversion"])
    if version is None:
        return {}
    champion = load_version(settings, "conversion", version)
    try:
        auc = classification_metrics(holdout.y, np.asarray(champion.predict(holdout.frame)))["auc"]
    except KeyError:
        return {}
    return {"conversion_champion_auc_same_holdout": auc}
