"""Honest validation: folds grouped by user, metrics cross-validated with intervals over folds, baselines and the
champion's recipe measured on the same folds.

A *recipe* is how a model is made from rows (learner + parameters), not a fitted model: `cross_validate` fits
it on the other folds and scores each fold's users, so no row is ever scored by a model that trained on its user.
The champion gate cross-validates the champion's recipe on the challenger's folds (`recipe_of`), because the
champion itself may have trained on any of these rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy import optimize, special, stats
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold

from nextbest.training.activity import Table, purchases
from nextbest.training.datasets import TrainingSet, utc_naive
from nextbest.training.encoding import fit_encoder
from nextbest.training.metrics import auc_interval, calibration_error
from nextbest.training.scorers import BlendScorer, BoosterScorer, LinearScorer

__all__ = ["Recipe", "TRAIN_ONLY", "user_folds", "time_folds", "training_rows", "cross_validate", "fold_metrics", "booster_recipe", "logistic_recipe",
           "fit_linear", "blend_recipe", "recipe_of", "repeat_purchase_stats", "fit_bgnbd", "bgnbd_expected", "bgnbd_recipe",
           "LOGISTIC_C"]

# fit(train rows) -> score(test rows); one call per fold.
Recipe = Callable[[TrainingSet, TrainingSet], np.ndarray]

LOGISTIC_C = 0.1  # L2 strength on standardised inputs: with tens of correlated RFM columns, C = 1 overfit no less


def user_folds(users: pd.Series, y: np.ndarray, folds: int, seed: int, max_rows: int | None = None) -> np.ndarray:
    """A fold number per row (-1: left out of the cross-validation), grouped by user: every row of a user is in one
    fold, so no user is ever on both sides; stratified on the label where the groups allow it.

    `max_rows`: above it, a seeded sample of whole users (about that many rows) is cross-validated: the figures
    then describe the sample, with the interval its size earns.
    """
    users = users.astype(str).to_numpy()
    out = np.full(len(users), -1, dtype="int64")
    codes, uniques = pd.factorize(users)
    keep = np.ones(len(users), dtype=bool)
    if max_rows is not None and len(users) > max_rows:
        rng = np.random.default_rng(seed)
        chosen = rng.permutation(len(uniques))[: max(int(len(uniques) * max_rows / len(users)), folds)]
        keep = np.isin(codes, chosen)
    idx = np.flatnonzero(keep)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(splitter.split(idx, np.asarray(y)[idx], groups=codes[idx])):
        out[idx[test]] = k
    return out


TRAIN_ONLY = -2  # a fold number for rows that may train but are never scored (the oldest dates of `time_folds`)


def time_folds(times: pd.Series, folds: int) -> np.ndarray:
    """A fold number per row by time, for labels in the future: the distinct dates in order, cut into `folds` + 1
    contiguous blocks; the oldest block only trains (TRAIN_ONLY), block k + 1 is fold k. With `embargo_days`, each
    fold trains only on older rows whose label window has closed before the fold's first date (`training_rows`)."""
    t = utc_naive(times) if isinstance(times, pd.Series) else np.asarray(times, dtype="datetime64[ns]")
    dates = np.unique(t)
    if len(dates) < folds + 1:
        raise ValueError(f"a time-aware split into {folds} folds needs at least {folds + 1} snapshot dates; the rows "
                         f"have {len(dates)}")
    block = np.empty(len(dates), dtype="int64")
    for k, part in enumerate(np.array_split(np.arange(len(dates)), folds + 1)):
        block[part] = k - 1 if k else TRAIN_ONLY
    return block[np.searchsorted(dates, t)]


def training_rows(folds: np.ndarray, k: int, users: np.ndarray | None = None, times: np.ndarray | None = None,
                  embargo_days: int = 0) -> np.ndarray:
    """The rows that may train the model scored on fold `k`.

    Without an embargo (user folds): the other folds, less any row of a user in fold k. With `embargo_days` (the label
    window after each row's time, time folds): only rows whose window [t, t + embargo) has closed by fold k's first
    date. Their outcomes happened before any of fold k's, so no fold trains on a window overlapping its own, and no
    training row's features can contain a validation outcome (a later snapshot's purchase counts would). A user's own
    older rows may train, as they do in production, where the model trained on the past scores the same customers.
    """
    test = folds == k
    if embargo_days > 0 and times is not None:
        t = np.asarray(times, dtype="datetime64[ns]")
        return (folds != -1) & ~test & (t + np.timedelta64(embargo_days, "D") <= t[test].min())
    train = (folds >= 0) & ~test
    if users is not None:
        train &= ~np.isin(users, np.unique(users[test]))
    return train


def cross_validate(recipe: Recipe, data: TrainingSet, folds: np.ndarray, embargo_days: int = 0) -> np.ndarray:
    """Out-of-fold scores: each fold's rows scored by the recipe fitted on its `training_rows` (the other folds' users;
    with `embargo_days` > 0, the older rows whose label window has closed by the fold's first date); NaN outside the
    folds."""
    out = np.full(len(data.frame), np.nan)
    users = data.frame["user_id"].astype(str).to_numpy() if "user_id" in data.frame and not embargo_days else None
    times = utc_naive(data.frame[data.time]) if embargo_days > 0 else None
    for k in np.unique(folds[folds >= 0]):
        test = folds == k
        train = training_rows(folds, k, users, times, embargo_days)
        if len(np.unique(data.y[train])) < 2:
            raise ValueError(f"fold {k}: {int(train.sum()):,} training rows after the {embargo_days}-day embargo, "
                             "not both classes: the snapshot dates must span well beyond the label window (more or "
                             "older dates, a shorter horizon, fewer folds)" if embargo_days else
                             f"fold {k}: its {int(train.sum()):,} training rows hold one class only: too few users of "
                             "a class for the folds (NEXTBEST_CV_FOLDS, NEXTBEST_CV_MAX_ROWS)")
        out[test] = recipe(data.subset(train), data.subset(test))
    return out


def _interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and the t interval of the mean over folds (folds are few: a normal interval would be too narrow)."""
    values = np.asarray(values, dtype="float64")
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return mean, mean - half, mean + half


def _fold_aucs(y: np.ndarray, p: np.ndarray, folds: np.ndarray) -> np.ndarray:
    from sklearn.metrics import roc_auc_score

    return np.array([roc_auc_score(y[folds == k], p[folds == k]) if len(np.unique(y[folds == k])) == 2 else np.nan
                     for k in np.unique(folds[folds >= 0])])


def fold_metrics(y: np.ndarray, p: np.ndarray, folds: np.ndarray) -> dict[str, float]:
    """AUC, log loss, Brier score and expected calibration error per fold: their means with 95 % intervals over folds
    (`<metric>_folds_low/high`), plus DeLong's interval of the AUC of all out-of-fold scores pooled (`auc_low/high`,
    what the quality gate reads)."""
    y = np.asarray(y, dtype="int64")
    p = np.clip(np.asarray(p, dtype="float64"), 1e-6, 1 - 1e-6)
    per: dict[str, list[float]] = {"auc": [], "logloss": [], "brier": [], "calibration_error": []}
    ks = np.unique(folds[folds >= 0])
    for k in ks:
        yk, pk = y[folds == k], p[folds == k]
        from sklearn.metrics import log_loss, roc_auc_score

        per["auc"].append(float(roc_auc_score(yk, pk)) if len(np.unique(yk)) == 2 else float("nan"))
        per["logloss"].append(float(log_loss(yk, pk, labels=[0, 1])))
        per["brier"].append(float(np.mean((pk - yk) ** 2)))
        per["calibration_error"].append(calibration_error(yk, pk))
    out: dict[str, float] = {}
    for name, values in per.items():
        mean, low, high = _interval(np.array(values))
        out.update({name: mean, f"{name}_folds_low": low, f"{name}_folds_high": high})
    inside = folds >= 0
    two = len(np.unique(y[inside])) == 2
    out["auc_low"], out["auc_high"] = auc_interval(y[inside], p[inside]) if two else (float("nan"),) * 2
    out.update(folds=float(len(ks)), rows=float(inside.sum()), base_rate=float(y[inside].mean()))
    return out


# --- learners as recipes ------------------------------------------------------------------------------------------

def booster_recipe(params: dict[str, object]) -> Recipe:
    """LightGBM with fixed parameters (`num_boost_round` among them), as a tuned model's `params_` hold them."""
    params = dict(params)
    rounds = int(params.pop("num_boost_round", 100))

    def recipe(train: TrainingSet, test: TrainingSet) -> np.ndarray:
        encoder = fit_encoder(train.frame, train.inputs)
        cats = [encoder.columns.index(c) for c in encoder.categorical]
        dataset = lgb.Dataset(encoder.codes(train.frame), train.y, categorical_feature=cats,
                              weight=None if train.weight is None else train.frame[train.weight].to_numpy(),
                              params={"verbosity": -1, "feature_pre_filter": False, "max_bin": params.get("max_bin", 63)})
        booster = lgb.train(params, dataset, num_boost_round=rounds)
        return booster.predict(encoder.codes(test.frame), num_threads=1)

    return recipe


def fit_linear(data: TrainingSet, c: float = LOGISTIC_C, seed: int = 7) -> LinearScorer:
    """A regularised (L2) logistic regression on the encoder's dense input of the same columns LightGBM reads."""
    encoder = fit_encoder(data.frame, data.inputs)
    x = encoder.dense(data.frame)
    model = LogisticRegression(C=c, max_iter=500, random_state=seed)
    model.fit(x, data.y, sample_weight=None if data.weight is None else data.frame[data.weight].to_numpy())
    return LinearScorer(model.coef_[0], float(model.intercept_[0]), encoder, data.feature_service,
                        {"learner": "logistic", "C": c})


def logistic_recipe(c: float = LOGISTIC_C, seed: int = 7) -> Recipe:
    """The regularised logistic regression of `fit_linear`, as a recipe."""
    return lambda train, test: fit_linear(train, c, seed).predict(test.frame)


def blend_recipe(params: dict[str, object], c: float = LOGISTIC_C, seed: int = 7) -> Recipe:
    """The mean of the LightGBM and logistic recipes' probabilities (`BlendScorer`)."""
    trees, linear = booster_recipe(params), logistic_recipe(c, seed)
    return lambda train, test: 0.5 * (trees(train, test) + linear(train, test))


def recipe_of(scorer, seed: int = 7) -> Recipe | None:
    """The recipe that made a registered model (its learner and parameters), or None for a kind it cannot redo."""
    if isinstance(scorer, BlendScorer):
        return blend_recipe(scorer.booster_.params_, float(scorer.linear_.params_.get("C") or LOGISTIC_C), seed)
    if isinstance(scorer, BoosterScorer) and scorer.params_:
        return booster_recipe(scorer.params_)
    if isinstance(scorer, LinearScorer):
        return logistic_recipe(float(scorer.params_.get("C", LOGISTIC_C)), seed)
    return None


# --- BG/NBD (Fader, Hardie and Lee 2005), the customer-base baseline for repeat purchase ----------------------------

_WEEK = np.timedelta64(7 * 86_400, "s")


def repeat_purchase_stats(rows: pd.DataFrame, events: pd.DataFrame, time: str = "event_timestamp") -> pd.DataFrame:
    """Per row, from the purchases strictly before its time: frequency x (repeat purchase days), recency t_x and
    customer age T in weeks since the first purchase (BG/NBD's summary), plus inter-purchase gap mean and std (days).

    A user without a purchase before the time has x = 0, t_x = 0 and T = 0.
    """
    buys = events[events["type"].astype(str) == "purchase"]
    days = pd.DataFrame({"user_id": buys["user_id"].astype(str).to_numpy(),
                         "day": utc_naive(buys["ts"]).astype("datetime64[D]")}).drop_duplicates()
    keyed = pd.DataFrame({"user_id": rows["user_id"].astype(str).to_numpy(), "t": utc_naive(rows[time]),
                          "_row": np.arange(len(rows))})
    j = keyed.merge(days, on="user_id")
    j = j[j["day"].to_numpy() < j["t"].to_numpy()].sort_values(["_row", "day"])
    g = j.groupby("_row")
    first, last, n = g["day"].min(), g["day"].max(), g["day"].size()
    gaps = j.assign(gap=g["day"].diff().dt.days).groupby("_row")["gap"]
    out = pd.DataFrame({"x": 0.0, "t_x": 0.0, "T": 0.0, "gap_mean": np.nan, "gap_std": np.nan}, index=np.arange(len(rows)))
    t = keyed.set_index("_row")["t"]
    out.loc[n.index, "x"] = (n - 1).to_numpy(dtype="float64")
    out.loc[n.index, "t_x"] = ((last - first).to_numpy() / _WEEK).astype("float64")
    out.loc[n.index, "T"] = ((t.loc[n.index].to_numpy() - first.to_numpy()) / _WEEK).astype("float64")
    out.loc[n.index, "gap_mean"] = gaps.mean().reindex(n.index).to_numpy()
    out.loc[n.index, "gap_std"] = gaps.std().reindex(n.index).to_numpy()
    return out


def _bgnbd_loglik(log_params: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray, n: np.ndarray) -> float:
    r, alpha, a, b = np.exp(log_params)
    a1 = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
    a2 = special.gammaln(a + b) + special.gammaln(b + x) - special.gammaln(b) - special.gammaln(a + b + x)
    a3 = -(r + x) * np.log(alpha + T)
    with np.errstate(divide="ignore", invalid="ignore"):
        a4 = np.where(x > 0, np.log(a) - np.log(b + x - 1) - (r + x) * np.log(alpha + t_x), -np.inf)
    return float(-(n * (a1 + a2 + np.logaddexp(a3, a4))).sum())


@dataclass(frozen=True)
class BGNBD:
    """Fitted BG/NBD parameters (purchase rate ~ Gamma(r, alpha), dropout probability ~ Beta(a, b)); weeks."""

    r: float
    alpha: float
    a: float
    b: float


def fit_bgnbd(x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> BGNBD:
    """Maximum-likelihood BG/NBD on customers with a first purchase (T > 0)."""
    seen = T > 0
    # Customers with the same (x, t_x, T) add the same term: one row per distinct summary, weighted by its count
    # (snapshots and short histories repeat them often), then a quasi-Newton search on log parameters.
    summary = pd.DataFrame({"x": x[seen], "t_x": t_x[seen], "T": T[seen]}).value_counts().reset_index()
    args = tuple(summary[c].to_numpy(dtype="float64") for c in ("x", "t_x", "T", "count"))
    result = optimize.minimize(_bgnbd_loglik, np.zeros(4), args=args, method="L-BFGS-B", bounds=[(-10, 10)] * 4)
    return BGNBD(*(float(v) for v in np.exp(result.x)))


def bgnbd_expected(m: BGNBD, x: np.ndarray, t_x: np.ndarray, T: np.ndarray, weeks: float) -> np.ndarray:
    """Expected purchases in the next `weeks` given (x, t_x, T) (the paper's eq. 10); new customers (T = 0) get
    the population's expectation for a customer of age 0."""
    r, alpha, a, b = m.r, m.alpha, m.a, m.b
    hyp = special.hyp2f1(r + x, b + x, a + b + x - 1, weeks / (alpha + T + weeks))
    head = (a + b + x - 1) / (a - 1) * (1 - ((alpha + T) / (alpha + T + weeks)) ** (r + x) * hyp)
    alive = 1 + (x > 0) * a / (b + x - 1) * ((alpha + T) / (alpha + t_x)) ** (r + x)
    return np.nan_to_num(head / alive, nan=0.0)


def bgnbd_recipe(events: Table, horizon_days: int) -> Recipe:
    """BG/NBD fitted on the training rows' purchase histories, scoring expected purchases within the horizon; a row
    whose user has not bought yet gets the share of such training rows that bought within the horizon."""
    events = purchases(events)  # the only events a purchase history reads (DuckDB: the events file stays on disk)

    def recipe(train: TrainingSet, test: TrainingSet) -> np.ndarray:
        fit_stats = repeat_purchase_stats(train.frame, events, train.time)
        model = fit_bgnbd(*(fit_stats[c].to_numpy() for c in ("x", "t_x", "T")))
        s = repeat_purchase_stats(test.frame, events, test.time)
        expected = bgnbd_expected(model, *(s[c].to_numpy() for c in ("x", "t_x", "T")), horizon_days / 7)
        p = 1 - np.exp(-np.clip(expected, 0, None))  # a probability-like score with the same ranking
        # BG/NBD describes customers from their first purchase on: it has nothing to say about who buys a first time.
        # Scoring those users as "a customer of age 0" (eq. 10 at T = 0) put them above most real customers on the
        # demo world, where 72 % of rows had never bought and bought 3x less often (AUC 0.49-0.53); their own
        # observed rate in the training rows is the honest baseline for them.
        never, never_train = s["T"].to_numpy() <= 0, fit_stats["T"].to_numpy() <= 0
        first_rate = float(train.y[never_train].mean()) if never_train.any() else 0.0
        return np.where(never, first_rate, p)

    return recipe


# --- the cross-validated training of one model --------------------------------------------------------------------

@dataclass(frozen=True)
class Validated:
    """A model chosen and measured by cross-validation, refit on all rows."""

    scorer: object  # the chosen learner, refit on every row
    learner: str  # "lightgbm", "logistic" or "blend"
    metrics: dict[str, float]  # the chosen learner's cross-validated metrics, then `<candidate or baseline>_<metric>`
    # and `<rival>_auc_gain[_low|_high]`: the model's AUC minus the rival's, paired per fold, with its interval
    oof: np.ndarray  # the chosen learner's out-of-fold scores (NaN outside the folds)
    folds: np.ndarray  # fold number per row (-1: not cross-validated)


CANDIDATES = ("lightgbm", "logistic", "blend")  # the learners a model may be; baselines beside them are only measured
_REPORTED = ("auc", "auc_folds_low", "auc_folds_high", "logloss", "brier", "calibration_error")


def validate(data: TrainingSet, fit_tuned: Callable[[TrainingSet], BoosterScorer], folds: np.ndarray,
             baselines: dict[str, Recipe] | None = None, seed: int = 7, embargo_days: int = 0) -> Validated:
    """Tune and fit LightGBM on all rows (`fit_tuned`), cross-validate its recipe, the regularised logistic regression,
    their blend (mean probability) and the `baselines` on the same folds; the candidate with the best mean AUC is the
    model, refit on all rows.

    The hyperparameters are searched once, on an inner split of all rows: the folds then judge the tuned recipe.
    `embargo_days`: time folds whose training rows are purged of label windows overlapping the fold's (`training_rows`).
    """
    tuned = fit_tuned(data)
    recipes: dict[str, Recipe] = {"lightgbm": booster_recipe(tuned.params_), "logistic": logistic_recipe(seed=seed),
                                  **(baselines or {})}
    scores = {name: cross_validate(recipe, data, folds, embargo_days) for name, recipe in recipes.items()}
    scores["blend"] = 0.5 * (scores["lightgbm"] + scores["logistic"])  # = blend_recipe's scores, without refitting
    measured = {name: fold_metrics(data.y, p, folds) for name, p in scores.items()}
    learner = max(CANDIDATES, key=lambda n: np.nan_to_num(measured[n]["auc"], nan=-1.0))
    scorer = tuned if learner == "lightgbm" else fit_linear(data, seed=seed) if learner == "logistic" else \
        BlendScorer(tuned, fit_linear(data, seed=seed))
    metrics = dict(measured[learner])
    mine = _fold_aucs(data.y, scores[learner], folds)
    for name, m in measured.items():
        metrics.update({f"{name}_{k}": m[k] for k in _REPORTED})
        # the model's gain over each rival, paired fold by fold (the folds' own difficulty cancels out)
        gain, low, high = _interval(mine - _fold_aucs(data.y, scores[name], folds))
        metrics.update({f"{name}_auc_gain": gain, f"{name}_auc_gain_low": low, f"{name}_auc_gain_high": high})
    return Validated(scorer, learner, metrics, scores[learner], folds)


def champion_on_folds(champion, data: TrainingSet, folds: np.ndarray, seed: int = 7, embargo_days: int = 0) -> float:
    """The champion's recipe cross-validated on the challenger's folds: its mean AUC (NaN for a kind it cannot redo)."""
    recipe = recipe_of(champion, seed)
    if recipe is None:
        return float("nan")
    return fold_metrics(data.y, cross_validate(recipe, data, folds, embargo_days), folds)["auc"]
