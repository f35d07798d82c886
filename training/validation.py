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
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold

from nextbest.training.activity import Table, purchases
from nextbest.training.customer_base import BGNBD, INPUTS, fit_bgnbd
from nextbest.training.customer_base import expected_purchases as bgnbd_expected
from nextbest.training.datasets import TrainingSet, utc_naive
from nextbest.training.encoding import fit_encoder
from nextbest.training.metrics import auc_interval, calibration_error
from nextbest.training.scorers import BlendScorer, BoosterScorer, LinearScorer

__all__ = ["Recipe", "TRAIN_ONLY", "user_folds", "time_folds", "training_rows", "cross_validate", "fold_metrics", "booster_recipe", "logistic_recipe",
           "fit_linear", "CUSTOMER_BASE_C", "blend_recipe", "recipe_of", "repeat_purchase_stats", "BGNBD", "fit_bgnbd", "bgnbd_expected", "bgnbd_recipe",
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
        # A hash lookup: `np.isin` on string ids compares pairwise (quadratic: ~5 min a fold at 500k rows).
        train &= ~pd.Series(users, copy=False).isin(pd.unique(users[test])).to_numpy()
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
        encoder = fit_encoder(train.frame, train.inputs, customer_base_weeks=train.customer_base_weeks)
        cats = [encoder.columns.index(c) for c in encoder.categorical]
        dataset = lgb.Dataset(encoder.codes(train.frame), train.y, categorical_feature=cats,
                              weight=None if train.weight is None else train.frame[train.weight].to_numpy(),
                              params={"verbosity": -1, "feature_pre_filter": False, "max_bin": params.get("max_bin", 63)})
        booster = lgb.train(params, dataset, num_boost_round=rounds)
        return booster.predict(encoder.codes(test.frame), num_threads=1)

    return recipe


def fit_linear(data: TrainingSet, c: float = LOGISTIC_C, seed: int = 7, customer_base: bool = False) -> LinearScorer:
    """A regularised (L2) logistic regression on the encoder's dense input of the same columns LightGBM reads.

    With `customer_base`, only on BG/NBD's inputs (the encoder's `customer_base.INPUTS`; every other weight 0): BG/NBD
    recalibrated to the label, the "customer_base" candidate.
    """
    encoder = fit_encoder(data.frame, data.inputs, customer_base_weeks=data.customer_base_weeks)
    w = None if data.weight is None else data.frame[data.weight].to_numpy()
    if customer_base and not encoder.customer_base:
        # These rows (a fold of a table whose other rows had repeat buyers) hold too few repeat buyers to fit BG/NBD:
        # the candidate is the base rate here, chance in that fold, so no fold picks it for nothing.
        rate = float(np.clip(np.average(data.y, weights=w), 1e-6, 1 - 1e-6))
        return LinearScorer(np.zeros(encoder.dense_width), float(np.log(rate / (1 - rate))), encoder,
                            data.feature_service, {"learner": "customer_base", "C": c})
    if customer_base:
        use = np.array([encoder.numeric.index(col) for col in INPUTS])  # numbers come first in the dense input
        # the two inputs' columns of `encoder.dense`, without building the others
        codes = encoder.codes(data.frame)[:, [encoder.columns.index(col) for col in INPUTS]]
        x = np.clip(np.nan_to_num((codes - [encoder.means[col] for col in INPUTS]) / [encoder.stds[col] for col in INPUTS],
                                  nan=0.0, posinf=0.0, neginf=0.0), -10, 10).astype("float32")
    else:
        x = encoder.dense(data.frame)
        use = np.arange(x.shape[1])
    model = LogisticRegression(C=c, max_iter=500, random_state=seed)
    model.fit(x, data.y, sample_weight=w)
    coef = np.zeros(encoder.dense_width)
    coef[use] = model.coef_[0]
    return LinearScorer(coef, float(model.intercept_[0]), encoder, data.feature_service,
                        {"learner": "customer_base" if customer_base else "logistic", "C": c})


def logistic_recipe(c: float = LOGISTIC_C, seed: int = 7, customer_base: bool = False) -> Recipe:
    """The regularised logistic regression of `fit_linear`, as a recipe."""
    return lambda train, test: fit_linear(train, c, seed, customer_base).predict(test.frame)


# Two inputs and thousands of rows: regularisation hardly matters (C 0.1-1 measured alike on CDNOW).
CUSTOMER_BASE_C = 1.0


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
        return logistic_recipe(float(scorer.params_.get("C", LOGISTIC_C)), seed,
                               scorer.params_.get("learner") == "customer_base")
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
    learner: str  # one of CANDIDATES: "lightgbm", "logistic", "blend" or "customer_base"
    metrics: dict[str, float]  # the model's metrics from the nested choice, `chosen_<metric>` the chosen learner's
    # on the same folds, then `<candidate or baseline>_<metric>` and `<rival>_auc_gain[_low|_high]`: the model's
    # (nested) AUC minus the rival's, paired per fold, with its interval
    oof: np.ndarray  # the model's out-of-fold scores: each fold's from the learner chosen without it (`nested_choice`)
    folds: np.ndarray  # fold number per row (-1: not cross-validated)
    choices: tuple[str, ...] = ()  # the learner the nested choice made for each fold


# The learners a model may be (baselines beside them are only measured). "customer_base" (BG/NBD's inputs alone, in a
# logistic regression) is a candidate where the encoder has them: on CDNOW's transaction log it beat every learner on
# all the columns (benchmarks/RESULTS.md), whose extra columns the folds' few thousand customers cannot pay for.
CANDIDATES = ("lightgbm", "logistic", "blend", "customer_base")


def _candidate_scores(parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each candidate's scores from its parts' scores (the blend is LightGBM's and the logistic's mean probability,
    as `BlendScorer`)."""
    return {**parts, "blend": 0.5 * (parts["lightgbm"] + parts["logistic"])}


def _best(y: np.ndarray, scores: dict[str, np.ndarray], folds: np.ndarray) -> str:
    """The candidate in `scores` with the best mean AUC over `folds` (the first in CANDIDATES on a tie)."""
    return max((n for n in CANDIDATES if n in scores),
               key=lambda n: np.nan_to_num(np.nanmean(_fold_aucs(y, scores[n], folds)), nan=-1.0))


def nested_choice(parts: dict[str, Recipe], data: TrainingSet, folds: np.ndarray, outer: dict[str, np.ndarray],
                  embargo_days: int = 0) -> list[str]:
    """For each outer fold, the candidate chosen without any of its rows: by an inner cross-validation of the
    candidates' `parts` (the recipes of every candidate but the blend) over the fold's own training rows only.

    User folds: the other folds dealt into two halves (users stay whole); each candidate fits on one half and is
    scored on the other: one more fit per candidate and outer fold. (A 2-fold inner CV cost twice that in the demo's
    purchase training, +13 against +6 CPU-s, made the same choices on CDNOW and differed in one fold of five on two R
    tables: benchmarks/RESULTS.md, "Real tables, third pass".)
    Time folds: the earlier folds' `outer` scores (the candidates' out-of-fold scores), which come from models
    trained only on rows older than each of them, so they are that inner cross-validation already, at no cost; the
    first time fold has no earlier fold and takes LightGBM, the default.
    """
    ks = np.unique(folds[folds >= 0])
    choices: list[str] = []
    for k in ks:
        if embargo_days > 0:
            earlier = (folds >= 0) & (folds < k)
            choices.append(_best(data.y, outer, np.where(earlier, folds, -1)) if earlier.any() else "lightgbm")
            continue
        others = [j for j in ks if j != k]
        fit, judge = np.isin(folds, others[1::2]), np.isin(folds, others[0::2])
        train, test = data.subset(fit), data.subset(judge)
        scores = _candidate_scores({n: recipe(train, test) for n, recipe in parts.items()})
        choices.append(_best(test.y, scores, np.zeros(len(test.frame), dtype="int64")))
    return choices
_REPORTED = ("auc", "auc_folds_low", "auc_folds_high", "logloss", "brier", "calibration_error")


def validate(data: TrainingSet, fit_tuned: Callable[[TrainingSet], BoosterScorer], folds: np.ndarray,
             baselines: dict[str, Recipe] | None = None, seed: int = 7, embargo_days: int = 0) -> Validated:
    """Tune and fit LightGBM on all rows (`fit_tuned`), cross-validate its recipe, the regularised logistic regression,
    their blend (mean probability) and the `baselines` on the same folds; the candidate with the best mean AUC is the
    model, refit on all rows.

    The model's reported metrics are out of sample for the choice too: each fold is scored by the candidate an inner
    cross-validation on that fold's training rows chose (`nested_choice`), so choosing among candidates on the folds
    that report the winner adds no optimism. The hyperparameters are searched once, on an inner split of all rows
    (shared by every fold: a mild optimism for the LightGBM and blend figures only).
    `embargo_days`: time folds whose training rows are purged of label windows overlapping the fold's (`training_rows`).
    """
    tuned = fit_tuned(data)
    parts: dict[str, Recipe] = {"lightgbm": booster_recipe(tuned.params_), "logistic": logistic_recipe(seed=seed)}
    if tuned.encoder_.customer_base:  # BG/NBD's inputs exist on these rows: the customer_base candidate
        parts["customer_base"] = logistic_recipe(CUSTOMER_BASE_C, seed, customer_base=True)
    scores = {name: cross_validate(recipe, data, folds, embargo_days) for name, recipe in {**parts, **(baselines or {})}.items()}
    scores = _candidate_scores(scores)  # the blend's scores = blend_recipe's, without refitting
    measured = {name: fold_metrics(data.y, p, folds) for name, p in scores.items()}
    learner = _best(data.y, scores, folds)
    choices = nested_choice(parts, data, folds, scores, embargo_days)
    model = np.full(len(folds), np.nan)
    for k, chosen in zip(np.unique(folds[folds >= 0]), choices, strict=True):
        model[folds == k] = scores[chosen][folds == k]
    scorer = tuned if learner == "lightgbm" else fit_linear(data, seed=seed) if learner == "logistic" else \
        fit_linear(data, CUSTOMER_BASE_C, seed, customer_base=True) if learner == "customer_base" else \
        BlendScorer(tuned, fit_linear(data, seed=seed))
    metrics = fold_metrics(data.y, model, folds)
    metrics.update({f"chosen_{k}": measured[learner][k] for k in _REPORTED})
    mine = _fold_aucs(data.y, model, folds)
    for name, m in measured.items():
        metrics.update({f"{name}_{k}": m[k] for k in _REPORTED})
        # the model's gain over each rival, paired fold by fold (the folds' own difficulty cancels out)
        gain, low, high = _interval(mine - _fold_aucs(data.y, scores[name], folds))
        metrics.update({f"{name}_auc_gain": gain, f"{name}_auc_gain_low": low, f"{name}_auc_gain_high": high})
    return Validated(scorer, learner, metrics, model, folds, tuple(choices))


def champion_on_folds(champion, data: TrainingSet, folds: np.ndarray, seed: int = 7, embargo_days: int = 0) -> float:
    """The champion's recipe cross-validated on the challenger's folds: its mean AUC (NaN for a kind it cannot redo)."""
    recipe = recipe_of(champion, seed)
    if recipe is None:
        return float("nan")
    return fold_metrics(data.y, cross_validate(recipe, data, folds, embargo_days), folds)["auc"]
