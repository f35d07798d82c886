"""Optuna tuning of LightGBM: seeded TPE, median pruning on the validation logloss, a trial budget."""

from __future__ import annotations

from dataclasses import dataclass

import lightgbm as lgb
import optuna

__all__ = ["TuneConfig", "BASE_PARAMS", "tune_booster"]

# One thread: on a shared 2-core machine two OpenMP threads spin-wait on each other and a boosting round took
# 3-10x longer than with one (benchmarks/RESULTS.md). 63 bins halve the histogram work at no AUC cost here.
BASE_PARAMS: dict[str, object] = {
    "objective": "binary", "metric": "binary_logloss", "verbosity": -1, "num_threads": 1, "max_bin": 63,
    "force_row_wise": True, "learning_rate": 0.1, "num_leaves": 31, "min_data_in_leaf": 50, "feature_fraction": 0.7,
    "bagging_fraction": 0.7, "bagging_freq": 1, "lambda_l2": 1.0,
}


@dataclass(frozen=True)
class TuneConfig:
    """How hard to search."""

    trials: int = 10
    max_rounds: int = 300  # boosting rounds per trial, cut by early stopping
    early_stopping: int = 20  # rounds without validation improvement
    seed: int = 7


def _space(trial: optuna.Trial) -> dict[str, object]:
    return {
        # Rates below 0.05 need more rounds than the budget for no AUC gain on these data sets.
        "learning_rate": trial.suggest_float("learning_rate", 0.05, 0.25, log=True),
        "num_leaves": trial.suggest_int("num_leaves", 7, 63, log=True),
        "min_data_in_leaf": trial.suggest_int("min_data_in_leaf", 20, 400, log=True),
        "feature_fraction": trial.suggest_float("feature_fraction", 0.4, 0.9),
        "bagging_fraction": trial.suggest_float("bagging_fraction", 0.5, 0.9),
        "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 10.0, log=True),
    }


def _prune_callback(trial: optuna.Trial, every: int = 10):
    def callback(env: lgb.callback.CallbackEnv) -> None:
        if env.iteration % every:
            return
        trial.report(env.evaluation_result_list[0][2], step=env.iteration)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return callback


def tune_booster(fit: lgb.Dataset, valid: lgb.Dataset, config: TuneConfig,
                 progress=None) -> tuple[dict[str, object], int, float]:
    """Search parameters on (fit, valid); returns the best parameters, boosting rounds and validation logloss.

    The split into fit and valid is the caller's, made once: every trial sees the same rows.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=min(5, max(config.trials // 2, 1)))
    study = optuna.create_study(direction="minimize", sampler=sampler,
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=20))
    # The first trial is the hand-picked default, so a tiny budget is never worse than no tuning.
    study.enqueue_trial({k: BASE_PARAMS[k] for k in ("learning_rate", "num_leaves", "min_data_in_leaf",
                                                     "feature_fraction", "bagging_fraction", "lambda_l2")})

    def objective(trial: optuna.Trial) -> float:
        params = {**BASE_PARAMS, **_space(trial), "seed": config.seed}
        booster = lgb.train(params, fit, num_boost_round=config.max_rounds, valid_sets=[valid],
                            callbacks=[lgb.early_stopping(config.early_stopping, verbose=False), _prune_callback(trial)])
        trial.set_user_attr("rounds", int(booster.best_iteration or config.max_rounds))
        return float(booster.best_score["valid_0"]["binary_logloss"])

    callbacks = [lambda study, trial: progress()] if progress else None
    study.optimize(objective, n_trials=max(config.trials, 1), callbacks=callbacks)
    best = study.best_trial
    return {**BASE_PARAMS, **best.params, "seed": config.seed}, int(best.user_attrs["rounds"]), float(best.value)


