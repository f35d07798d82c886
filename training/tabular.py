"""LightGBM models for the tabular questions: the scorer (text model + encoder) and the tuned fit."""

from __future__ import annotations

from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from nextbest.training.encoding import fit_encoder
from nextbest.training.scorers import BoosterScorer, StagedBooster
from nextbest.training.tuning import BASE_PARAMS, TuneConfig, tune_booster

__all__ = ["FitConfig", "BoosterScorer", "Tuned", "fit_booster", "tune_rows", "tuning_split"]


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


@dataclass
class Tuned:
    """`tune_rows`' result: the fitted encoder, the coded rows (the stage appended as a last input when given), the
    labels and weights, and the tuned LightGBM parameters and refit rounds."""

    encoder: object
    x: np.ndarray
    y: np.ndarray
    weight: np.ndarray | None
    categorical: list[int]
    params: dict
    rounds: int

    def dataset(self, rows: np.ndarray, reference=None, weight: np.ndarray | None = None) -> lgb.Dataset:
        """A LightGBM dataset of `rows`, weighted by `weight` (default: the rows' own weights)."""
        weight = weight if weight is not None else (None if self.weight is None else self.weight[rows])
        return lgb.Dataset(self.x[rows], self.y[rows], weight=weight, categorical_feature=self.categorical,
                           feature_name=[f"f{i}" for i in range(self.x.shape[1])], reference=reference,
                           free_raw_data=False, params={"verbosity": -1, "feature_pre_filter": False,
                                                        "max_bin": BASE_PARAMS["max_bin"]})


def tune_rows(frame: pd.DataFrame, columns: list[str], y: np.ndarray, config: FitConfig,
              weight: np.ndarray | None = None, progress=None, customer_base_weeks: float | None = None,
              stage: np.ndarray | None = None) -> Tuned:
    """`fit_booster`'s tuning: the encoder on `columns`, the trials on a sample of one fixed fit/valid split of the
    rows (`tuning_split`), and the refit's rounds (the tuned rounds plus 10 %: more rows support a few more)."""
    encoder = fit_encoder(frame, columns, customer_base_weeks=customer_base_weeks)
    x = encoder.codes(frame)
    if stage is not None:
        x = np.column_stack([x, np.asarray(stage, dtype="float64")])
    y = np.asarray(y, dtype="int64")
    cats = [encoder.columns.index(c) for c in encoder.categorical]
    rng = np.random.default_rng(config.seed)
    fit_idx, valid_idx = tuning_split(frame, y, config.valid_share, config.seed)
    if len(fit_idx) > config.tune_sample:
        fit_idx = rng.choice(fit_idx, size=config.tune_sample, replace=False)
    rows = Tuned(encoder, x, y, None if weight is None else np.asarray(weight, dtype="float64"), cats, {}, 0)
    fit = rows.dataset(fit_idx)
    params, rounds, _ = tune_booster(fit, rows.dataset(valid_idx, reference=fit),
                                     TuneConfig(trials=config.trials, max_rounds=config.max_rounds, seed=config.seed),
                                     progress=progress)
    rows.params, rows.rounds = params, max(int(rounds * 1.1), 10)
    return rows


def fit_booster(frame: pd.DataFrame, columns: list[str], y: np.ndarray, feature_service: str, config: FitConfig,
                weight: np.ndarray | None = None, progress=None, customer_base_weeks: float | None = None,
                stage: np.ndarray | None = None) -> BoosterScorer:
    """Tune on a sample (`tune_rows`), then refit on all rows. `customer_base_weeks`: the encoder adds BG/NBD's
    inputs (`fit_encoder`). `stage` (0/1 per row): rows of two stages of a funnel fitted together, the stage an input
    after the encoder's columns; the scorer predicts stage 1 (`StagedBooster`)."""
    tuned = tune_rows(frame, columns, y, config, weight, progress, customer_base_weeks, stage)
    booster = lgb.train(tuned.params, tuned.dataset(np.arange(len(tuned.y))), num_boost_round=tuned.rounds)
    kind = BoosterScorer if stage is None else StagedBooster
    return kind(booster, tuned.encoder, feature_service, {**tuned.params, "num_boost_round": tuned.rounds})
