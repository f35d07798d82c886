"""LightGBM models for the tabular questions: the scorer (text model + encoder) and the tuned fit."""

from __future__ import annotations

from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from nextbest.training.encoding import fit_encoder
from nextbest.training.scorers import BoosterScorer
from nextbest.training.tuning import BASE_PARAMS, TuneConfig, tune_booster

__all__ = ["FitConfig", "BoosterScorer", "fit_booster", "tuning_split"]


@dataclass(frozen=True)
class FitConfig:
    """Tuning budget and sizes for one LightGBM fit."""

    trials: int = 10  # Optuna trials
    tune_sample: int = 20_000  # rows the trials fit on; the refit uses all training rows
    valid_share: float = 0.2  # share of training rows that scores the trials
    max_rounds: int = 300
    seed: int = 7


def tuning_split(frame: pd.DataFrame, y: np.ndarray, valid_share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows the trials fit on and the rows that score them: grouped by user when users repeat (snapshots of one
    customer on both sides reward memorising customers: early stopping then picked far too many rounds), else
    stratified on the label."""
    idx = np.arange(len(y))
    if "user_id" in frame and frame["user_id"].duplicated().any():
        from sklearn.model_selection import GroupShuffleSplit

        groups = frame["user_id"].astype(str).to_numpy()
        fit_idx, valid_idx = next(GroupShuffleSplit(1, test_size=valid_share, random_state=seed).split(idx, y, groups))
        if len(np.unique(y[valid_idx])) == 2 and len(np.unique(y[fit_idx])) == 2:
            return fit_idx, valid_idx
    strat = y if np.bincount(y, minlength=2).min() >= 2 else None
    return tuple(train_test_split(idx, test_size=valid_share, random_state=seed, stratify=strat))


def fit_booster(frame: pd.DataFrame, columns: list[str], y: np.ndarray, feature_service: str, config: FitConfig,
                weight: np.ndarray | None = None, progress=None, customer_base_weeks: float | None = None) -> BoosterScorer:
    """Tune on a sample (one fixed fit/valid split of the training rows, `tuning_split`), then refit on all rows.
    `customer_base_weeks`: the encoder adds BG/NBD's inputs (`fit_encoder`)."""
    encoder = fit_encoder(frame, columns, customer_base_weeks=customer_base_weeks)
    x = encoder.codes(frame)
    y = np.asarray(y, dtype="int64")
    cats = [encoder.columns.index(c) for c in encoder.categorical]
    rng = np.random.default_rng(config.seed)
    idx = np.arange(len(y))
    fit_idx, valid_idx = tuning_split(frame, y, config.valid_share, config.seed)
    if len(fit_idx) > config.tune_sample:
        fit_idx = rng.choice(fit_idx, size=config.tune_sample, replace=False)
    w = None if weight is None else np.asarray(weight, dtype="float64")

    def dataset(rows: np.ndarray, reference=None) -> lgb.Dataset:
        return lgb.Dataset(x[rows], y[rows], weight=None if w is None else w[rows], categorical_feature=cats,
                           feature_name=[f"f{i}" for i in range(x.shape[1])], reference=reference,
                           free_raw_data=False, params={"verbosity": -1, "feature_pre_filter": False,
                                                        "max_bin": BASE_PARAMS["max_bin"]})

    fit = dataset(fit_idx)
    valid = dataset(valid_idx, reference=fit)
    params, rounds, _ = tune_booster(fit, valid, TuneConfig(trials=config.trials, max_rounds=config.max_rounds,
                                                            seed=config.seed), progress=progress)
    # More rows in the refit support a few more rounds than the tuned sample did.
    rounds = max(int(rounds * 1.1), 10)
    booster = lgb.train(params, dataset(idx), num_boost_round=rounds)
    return BoosterScorer(booster, encoder, feature_service, {**params, "num_boost_round": rounds})
