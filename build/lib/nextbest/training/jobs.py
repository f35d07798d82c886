"""Train one model end to end: training set from Feast -> one split -> fit -> evaluate -> MLflow -> gate."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from nextbest.features.feature_services import service_name
from nextbest.features.settings import Settings
from nextbest.training import channel, churn, offer_net, propensity, purchase, send_time, uplift
from nextbest.training.datasets import CONTACTS, SNAPSHOTS, SharedJoins, TrainingSet, split
from nextbest.training.metrics import charts, uplift_chart
from nextbest.training.registry import MODEL_NAMES, PRIMARY_METRIC, gate, log_model
from nextbest.training.tabular import FitConfig

__all__ = ["TrainConfig", "TrainResult", "MODELS", "model_config", "read_raw_tables", "shared_joins", "train_model",
           "train_models"]

MODELS: tuple[str, ...] = tuple(MODEL_NAMES)


@dataclass(frozen=True)
class TrainConfig:
    """Job parameters shared by all models (each model picks what applies to it)."""

    trials: int = 10  # Optuna trials per LightGBM model
    tune_sample: int = 20_000  # rows per tuning fit
    holdout: float = 0.2  # share of rows in the one holdout
    window_days: int = 7  # contact outcome window
    horizon_days: int = 30  # purchase/churn horizon
    as_of: pd.Timestamp | None = None  # newest snapshot date for purchase/churn
    epochs: int = 6  # PyTorch models
    seed: int = 7


@dataclass(frozen=True)
class TrainResult:
    """What one training job produced."""

    name: str
    version: str
    run_id: str
    metrics: dict[str, float]
    decision: dict[str, object]
    rows: int
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)


def model_config(name: str, config: TrainConfig):
    """The model module's own config, from the shared job config."""
    fit = FitConfig(trials=config.trials, tune_sample=config.tune_sample, seed=config.seed)
    if name == "conversion":
        return propensity.ConversionConfig(window_days=config.window_days, fit=fit)
    if name == "channel":
        return channel.ChannelConfig(window_days=config.window_days, fit=fit)
    if name == "purchase":
        return purchase.PurchaseConfig(horizon_days=config.horizon_days, as_of=config.as_of, fit=fit)
    if name == "churn":
        return churn.ChurnConfig(horizon_days=config.horizon_days, as_of=config.as_of, fit=fit)
    if name == "uplift":
        return uplift.UpliftConfig(window_days=config.window_days, fit=fit)
    if name == "send_time":
        return send_time.SendTimeConfig(window_days=config.window_days, epochs=config.epochs, seed=config.seed)
    if name == "offer_net":
        return offer_net.OfferNetConfig(window_days=config.window_days, epochs=config.epochs, seed=config.seed)
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


_MODULES = {"conversion": propensity, "channel": channel, "purchase": purchase, "churn": churn, "uplift": uplift,
            "send_time": send_time, "offer_net": offer_net}


# model -> (the row set it is trained on, its FeatureService's model name)
_ROWS: dict[str, tuple[str, str]] = {"conversion": (CONTACTS, "conversion"), "uplift": (CONTACTS, "uplift"),
                                     "channel": (CONTACTS, "channel_response"), "send_time": (CONTACTS, "send_time"),
                                     "offer_net": (CONTACTS, "offer_net"), "purchase": (SNAPSHOTS, "purchase"),
                                     "churn": (SNAPSHOTS, "churn")}


def shared_joins(store, names: list[str]) -> SharedJoins:
    """One point-in-time join per row set for the models `names` (the contact log once, the snapshots once)."""
    groups: dict[str, list[str]] = {}
    for name in names:
        rows, model = _ROWS[name]
        groups.setdefault(rows, []).append(service_name(model))
    return SharedJoins(store, {k: tuple(v) for k, v in groups.items()})


def read_raw_tables(settings: Settings) -> dict[str, pd.DataFrame]:
    from nextbest.features.contract import TABLES
    from nextbest.features.ingest import read_raw

    return {t: df for t in TABLES if (df := read_raw(settings.raw_dir, t)) is not None}


def _primary(name: str, scorer, holdout: TrainingSet) -> float:
    if name == "uplift":
        return uplift.evaluate(scorer, holdout)["qini"]
    return _MODULES[name].evaluate(scorer, holdout)["auc"]


def train_model(settings: Settings, name: str, config: TrainConfig = TrainConfig(), raw: dict | None = None,
                store=None, progress=None, labels: pd.DataFrame | None = None,
                shared: SharedJoins | None = None, defer: bool = False) -> TrainResult:
    """Build the training set, split once, fit, evaluate on the holdout, log to MLflow and run the gate.

    `shared` lets several models reuse one point-in-time join of the same rows (see `train_models`).
    `defer`: leave the promotion of a model that has a champion to the policy gate (registry.gate).
    """
    from nextbest.features.ingest import manifest
    from nextbest.features.store import feature_store

    started = time.perf_counter()
    step = progress or (lambda text: None)
    module = _MODULES[name]
    cfg = model_config(name, config)
    raw = raw if raw is not None else read_raw_tables(settings)
    if labels is not None:
        raw = {**raw, "labels": labels}
    store = store or feature_store(settings)
    step(f"{name}: training set")
    data = module.build_frame(store, raw, cfg, shared)
    if len(data.frame) < 20 or len(np.unique(data.y)) < 2:
        raise ValueError(f"{name}: {len(data.frame)} training rows with labels {sorted(np.unique(data.y))}; "
                         "need both classes: more data, a longer history or another --as-of/--horizon")
    train, holdout = split(data, config.holdout, config.seed)
    step(f"{name}: fit")
    scorer = module.fit(train, cfg)
    step(f"{name}: evaluate")
    metrics = module.evaluate(scorer, holdout)
    extra: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if name == "uplift":
            files = [uplift_chart(folder, holdout.y, holdout.frame[holdout.treatment].to_numpy(), scorer.predict(holdout.frame))]
        else:
            p = np.asarray(scorer.predict(holdout.frame))
            files = charts(folder, holdout.y, p, scorer.importance() if hasattr(scorer, "importance") else None)
        if name == "offer_net":
            extra = offer_net.compare_with_conversion(settings, holdout)
        step(f"{name}: register")
        tags = {"data_snapshot_id": str(manifest(settings.raw_dir).get("snapshot_id", "unknown")),
                "train_rows": str(len(train.frame)), "holdout_rows": str(len(holdout.frame)),
                "split": "time" if holdout.frame[holdout.time].min() >= train.frame[train.time].max() else "stratified"}
        params = {**getattr(scorer, "params_", {}), **{k: v for k, v in vars(config).items()}}
        run_id, version = log_model(settings, name, scorer, {**metrics, **extra}, params,
                                    holdout.frame[scorer_inputs(scorer, holdout)].head(5), files, tags)
    step(f"{name}: gate")
    decision = gate(settings, name, version, run_id, metrics[PRIMARY_METRIC[name]],
                    lambda champion: _primary(name, champion, holdout), defer=defer)
    decision["holdout_from"] = str(holdout.frame[holdout.time].min())
    return TrainResult(name, version, run_id, metrics, decision, len(data.frame), time.perf_counter() - started, extra)


def scorer_inputs(scorer, data: TrainingSet) -> list[str]:
    """The columns a caller passes: the FeatureService features plus the model's request columns."""
    return data.inputs


def train_models(settings: Settings, names: list[str], config: TrainConfig = TrainConfig(), progress=None,
                 labels: pd.DataFrame | None = None, defer: tuple[str, ...] = ()) -> list[TrainResult]:
    """Train several models over one read of the raw tables, one Feast store and one join per row set;
    the promotion of the models named in `defer` waits for the policy gate."""
    from nextbest.features.store import feature_store

    raw = read_raw_tables(settings)
    store = feature_store(settings)
    shared = shared_joins(store, names)
    return [train_model(settings, n, config, raw, store, progress, labels, shared, defer=n in defer) for n in names]
