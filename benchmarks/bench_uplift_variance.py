"""Is the NBA's offer error variance? The funnel uplift's learning curve and variance cuts, judged by the policy
(issue 16, ninth session).

Usage (after `make demo`, on a copy of its home): python benchmarks/bench_uplift_variance.py --home DIR
  [--users 3000] [--seeds 11,5] [--recipes full,full@8,half,quarter,bag5] [--trials 5] [--sample-rows 500000]
  [--serving]

The uplift training set is built once as `nextbest train uplift` builds it (the contact log's point-in-time join,
the one time holdout); each recipe fits the demo's learner (the funnel: engage / click / convert-after-click /
control arms; `training.uplift.fit_funnel`) on its rows, and the NBA policy with that uplift model in place of the
champion (every other champion as it is) is replayed as `nextbest evaluate` replays it (the home's operator caps
and learned opt-out costs, 3,000 users, 14 fresh days per seed), beside the history oracle and propensity-only
(which read no uplift: the same in every recipe). Recipes (comma-separated):

- `full[@SEED]`: the demo's recipe on all training rows (a plain retrain with another training seed: its spread),
  every arm one fit (`UpliftConfig.arm_fits` 1: the control arm's recipe before issue 16's tenth session; the product's K is
  `ctl-bagK`);
- `half`, `quarter` (`[@SEED]`): the same on a seeded sample of half / a quarter of the training users;
- `rowhalf[@SEED]`: a seeded half of the training rows drawn row by row (every user, half its rows), against `half`'s
  half of the users with all their rows: what a row of a user already seen adds against a new user;
- `half-ARM[@SEED]`: only the funnel's arm ARM (engage, click, convert, control) on a seeded half of its users;
- `all[@SEED]`: the training rows plus the holdout (the rows a model refitted after its gate could use);
- `bagK[@SEED]`: each arm tuned once, then K boosters on K Poisson bootstraps of the users (`Refit.bags`), averaged;
- `lr[@SEED]`: each arm's tuned learning rate halved, twice the rounds (`Refit.slow`);
- `tN[@SEED]`: N Optuna trials per arm (`t1`: the base parameters, no search; the rounds by early stopping);
- `tsN[@SEED]`: the trials tuned on up to N thousand rows per arm (`FitConfig.tune_sample`; the default 20);
- `cvK[@SEED]`: the refit's rounds by early stopping over K user-grouped folds of all rows (`Refit.cv_rounds`);
- `avgK[@SEED]`: K funnels, each tuned and refitted with its own seed, each arm their mean (`average_boosters`);
- the offer arms' shape (issue 16, tenth session; `SHAPES`): `SHAPE-ARMS[@SEED]`, ARMS `c` (the click arm), `v` (the
  after-click arm) or `cv` (both), each with the product's tuning and refit, every other arm the product's:
  `ic` interaction constraints (the offer's columns and the user's taste and response columns, `RESPONSE_PREFIXES`, in
  one group, every user column in the other: the user's level learnt apart from the offer's fit to the user; the
  after-click arm's click input in both), `few` the arm on the taste and response columns and the offer's only,
  `lin` LightGBM `linear_tree` (piecewise-linear leaves), `ps` `path_smooth` 50, `xt` `extra_trees`, `mcs`
  `min_data_in_leaf` fixed at 300, `share` the arm without the offer's identity and category (an offer is its
  kind, value and matched affinity: the offers share their evidence), `logit` a regularised logistic regression
  (`validation.LOGISTIC_C`) on the standardised taste, response and offer columns (the after-click arm on the
  clicked rows alone: a linear model has no stage interaction): the plain baseline arm, `logitp` the same on every
  opened row with the click and its product with each input added (predicted clicked), and `blend` the mean of the
  product's arm's and `logit`'s probabilities. E.g. `ic-v@7`;
- `home`: the home's uplift champion as it is (no fit);
- `ctl-KIND[@SEED]`: `full[@SEED]`'s funnel (fitted once per seed and shared; `@home`: the home's champion) with only
  its control arm P(convert | not contacted) replaced (issue 16, tenth session; `CONTROL_RECIPES`): `own` (the booster on the user's own
  profile, purchase history and tags only, no contact-response or time-profile columns), `pool` (the control rows
  pooled with the contacted rows left unclicked, which convert only organically where clicks are tracked, "control"
  a stage input, predicted as control: `fit_booster(stage=...)`), `poolown` (both), `bgnbd` (the booster with the
  BG/NBD purchase-process inputs for the label window, `fit_encoder(customer_base_weeks=...)`, as the purchase and
  churn models), `reg` (the tuned booster regularised harder: at most 7 leaves, >= 200 rows per leaf, L2 10), `lr`
  (the plain baseline: a logistic regression on the user's purchase / RFM / activity numbers), and, to diagnose
  only, `truth` (the truth's P(organic purchase within the window) of each replayed user at the period's start:
  exact ranking and level), `truthlevel` (the truth's ranking scaled to the fitted arm's mean over the replayed
  users: the ranking without the level) and `scaleP` (the fitted arm itself times P / 100: its level moved); and
  `unclicked` (the pooled after-click arm read at clicked = 0, where serving reads the control arm: once per user,
  `engine.funnel_factors`) and `mix` (the mean of that and the fitted control arm): one organic estimate that both
  sides of the lift share; `bagK` (issue 16, tenth session, bag10): the mean of K control arms' probabilities, the
  funnel's own (training seed S) and K - 1 refits of the product's recipe with seeds S+100, .., S+100(K-1) (each its own
  tuning split, tuning sample, TPE and bagging seed): the arm's fit-to-fit noise averaged out (`@home`: the home's
  champion's control arm and K - 1 refits beside it, as the demo would have fitted it with K control fits).
- `fitsK-ARMS[@SEED]` (issue 16, eleventh session, arms11): the product's own fit (`uplift.fit_funnel`) with
  `UpliftConfig.arm_fits` K for the arms named in ARMS (`all`, or arm names joined by '+': engage, click, convert,
  control) and one fit for the others: each named arm the mean of K seeded fits (seeds S, S+100, ..). Every
  (arm, seed) fit is made once per run and shared by the recipes that use it (the same model: each fit is seeded on
  its own), and each recipe's "train CPU-s" is the sum of its fits' CPU seconds, shared or not. `fits3-control` is
  the tenth session's product recipe (= `ctl-bag3`), `fits3-click+convert+control` measured in the eleventh.

The arms a recipe leaves as the product fits them are fitted once per training seed and reused by every recipe with
that seed (each arm's fit is seeded on its own, so they are the same models: `--no-reuse` refits them).

Per recipe and seed: the NBA's incremental revenue (the truth's expectation), its share of the history oracle, its
revenue on each user's first send of a week (days 0-6 and 7-13 separately) and on the later sends, contacts,
opt-outs per 1,000 contacts, violations, the fit's wall and CPU seconds and the arms' row counts; then each recipe's
revenue paired per user against the first recipe's, with a 95 % interval (with `--ranking`, also each recipe's
within-send Spearman of the offer arms and its value on the champion's recorded sends: `offer_ranking`); and, for
each recipe kind with the first recipe's kind on the same training seeds, the paired mean over those seeds: per user
the mean over seeds of the difference (interval over users), and the per-seed differences (a t interval over
seeds; `X@home` against `home`). With `--whom` each NBA replay is a shadow replay (bench_gap_parts.py's `Recorder`:
the history oracle decides on the NBA's situations without acting) that also counts the user-days the history oracle
contacts and the NBA leaves alone, their truth value, and the fitted control arm's error on those users (`whom`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import platform
import resource
import time
import warnings
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from bench_funnel_arms import MeanOf, funnel_arms, product_offers, row_spearman
from bench_funnel_arms import record as record_sends
from bench_gap_parts import Recorder
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold

from nextbest.features.settings import Settings
from nextbest.features.store import training_store
from nextbest.pipelines import evaluate
from nextbest.serving import engine
from nextbest.serving.config import load_config
from nextbest.simulation import response
from nextbest.simulation.beliefs import history_beliefs
from nextbest.simulation.policies import OraclePolicy
from nextbest.simulation.replay import ReplayConfig, Rules, replay
from nextbest.training import tabular, uplift
from nextbest.training.compiled import Rows
from nextbest.training.datasets import Sampling, split
from nextbest.training.derived import matched_columns
from nextbest.training.encoding import fit_encoder
from nextbest.training.jobs import ON_DISK, TrainConfig, model_config, read_raw_tables, shared_joins
from nextbest.training.ope import paired_difference
from nextbest.training.registry import Champion
from nextbest.training.scorers import BoosterScorer, FunnelUpliftScorer, LinearScorer, StagedBooster
from nextbest.training.tabular import fit_booster, tune_rows
from nextbest.training.validation import LOGISTIC_C


def recipe_rows(name: str, train, holdout, seed: int):
    """The training set of a recipe's name (its part before '@'; a sample of users drawn with the recipe's seed)."""
    kind, _, own = name.partition("@")
    seed = int(own) if own.isdigit() else seed
    if kind == "half":
        return uplift._user_sample(train, len(train.frame) // 2, seed)
    if kind == "quarter":
        return uplift._user_sample(train, len(train.frame) // 4, seed)
    if kind == "rowhalf":  # half the rows of every user (each row kept with probability 1/2): all users, fewer rows
        return train.subset(np.random.default_rng(seed).random(len(train.frame)) < 0.5)
    if kind == "all":
        return dataclasses.replace(train, frame=pd.concat([train.frame, holdout.frame], ignore_index=True))
    return train


@dataclasses.dataclass(frozen=True)
class Refit:
    """How a recipe refits each arm after its tuning (the product's `fit_booster`: one booster on all rows)."""

    bags: int = 1  # the mean of this many boosters, each on a Poisson bootstrap of the users with its own seed
    slow: int = 1  # the tuned learning rate / slow, slow x the rounds
    cv_rounds: int = 0  # > 1: the rounds by early stopping over this many user-grouped folds of all rows
    limits: tuple[tuple[str, float, str], ...] = ()  # (parameter, bound, "max" or "min"): the tuned value capped


def recipe_config(name: str, base: uplift.UpliftConfig) -> tuple[uplift.UpliftConfig, Refit]:
    kind, _, seed = name.partition("@")
    fit, refit = base.fit, Refit()
    if seed.isdigit():
        fit = dataclasses.replace(fit, seed=int(seed))
    if kind.startswith("bag"):
        refit = Refit(bags=int(kind[3:]))
    if kind == "lr":
        refit = Refit(slow=2)
    if kind.startswith("ts") and kind[2:].isdigit():
        fit = dataclasses.replace(fit, tune_sample=int(kind[2:]) * 1000)
    if kind.startswith("cv") and kind[2:].isdigit():
        refit = Refit(cv_rounds=int(kind[2:]))
    if kind.startswith("t") and kind[1:].isdigit():
        fit = dataclasses.replace(fit, trials=int(kind[1:]))
    return dataclasses.replace(base, fit=fit, learner="funnel", seed=fit.seed), refit


def average_boosters(boosters: list[lgb.Booster]) -> lgb.Booster:
    """One LightGBM model whose raw score is the mean of the boosters' raw scores (their trees together, each leaf
    value divided by their number): saved, loaded and compiled as any booster. All must share one feature layout."""
    k = len(boosters)
    texts = [b.model_to_string() for b in boosters]
    head = texts[0][: texts[0].index("\nTree=")]
    head = "\n".join(line for line in head.splitlines() if not line.startswith("tree_sizes="))  # sizes change
    tail = texts[0][texts[0].index("end of trees"):]

    def scaled(line: str) -> str:
        key, _, values = line.partition("=")
        if key not in ("leaf_value", "internal_value"):
            return line
        return f"{key}=" + " ".join(repr(float(v) / k) for v in values.split())

    trees = []
    for text in texts:
        for block in text[text.index("\nTree="): text.index("end of trees")].split("\nTree=")[1:]:
            trees.append("\n".join(scaled(line) for line in block.strip("\n").splitlines()[1:]))
    body = "".join(f"Tree={i}\n{tree}\n\n\n" for i, tree in enumerate(trees))
    return lgb.Booster(model_str=f"{head}\n\n{body}{tail}")


def refit_booster(frame, columns, y, feature_service, config, weight=None, progress=None, customer_base_weeks=None,
                  stage=None, *, refit: Refit = Refit()):
    """`training.tabular.fit_booster` (its tuning, `tune_rows`), its refit as `refit` says."""
    tuned = tune_rows(frame, columns, y, config, weight, None, customer_base_weeks, stage)
    params, rounds, idx, w = tuned.params, tuned.rounds, np.arange(len(tuned.y)), tuned.weight
    y, dataset = tuned.y, tuned.dataset
    groups = frame["user_id"].astype(str).to_numpy() if "user_id" in frame else idx.astype(str)
    if refit.cv_rounds > 1:
        folds = list(GroupKFold(refit.cv_rounds).split(idx, y, groups))
        cv = lgb.cv({**params, "seed": config.seed}, dataset(idx), num_boost_round=config.max_rounds, folds=folds,
                    callbacks=[lgb.early_stopping(20, verbose=False)])
        rounds = max(int(len(next(iter(cv.values()))) * 1.1), 10)
    if refit.slow > 1:
        params, rounds = {**params, "learning_rate": params["learning_rate"] / refit.slow}, rounds * refit.slow
    for key, bound, side in refit.limits:  # e.g. ("num_leaves", 7, "max"): at most 7 leaves, whatever was tuned
        value = params.get(key, bound)
        params = {**params, key: type(value)(min(value, bound) if side == "max" else max(value, bound))}
    kind = BoosterScorer if stage is None else StagedBooster
    if refit.bags <= 1:
        return kind(lgb.train(params, dataset(idx), num_boost_round=rounds), tuned.encoder, feature_service,
                    {**params, "num_boost_round": rounds})
    codes = pd.factorize(groups)[0]
    boosters = []
    for b in range(refit.bags):
        draw = np.random.default_rng([config.seed, b]).poisson(1.0, codes.max() + 1)[codes].astype("float64")
        boosters.append(lgb.train({**params, "seed": config.seed + b}, dataset(idx, weight=draw if w is None else draw * w),
                                  num_boost_round=rounds))
    return kind(average_boosters(boosters), tuned.encoder, feature_service, {**params, "num_boost_round": rounds})


_ARMS = ("engage", "click", "convert", "control")  # the order `uplift.fit_funnel` fits them in


def half_users(arm: str, seed: int, fit_booster):
    """`fit_booster` fitting the funnel's arm `arm` on a seeded half of its users (all their rows), the others on all
    theirs: which arm's rows the value depends on."""
    calls = iter(_ARMS)

    def fit(frame, columns, y, feature_service, config, weight=None, **kw):
        if next(calls) == arm:
            users = frame["user_id"].astype(str).to_numpy()
            unique = np.unique(users)
            keep = np.isin(users, np.random.default_rng(seed).permutation(unique)[: len(unique) // 2])
            frame, y = frame[keep], np.asarray(y)[keep]
            weight = None if weight is None else np.asarray(weight)[keep]
        return fit_booster(frame, columns, y, feature_service, config, weight, **kw)

    return fit


RESPONSE_PREFIXES = ("aff_", "click_rate_", "convert_rate_", "open_rate_")  # the user's taste and response columns
SHAPES: dict[str, dict] = {  # the offer arms' shape recipes: extra LightGBM parameters fixed through the tuning
    "ic": {}, "few": {}, "logit": {}, "logitp": {}, "share": {}, "blend": {},  # (built per call: they depend on the arm's columns)
    "lin": {"linear_tree": True, "linear_lambda": 1.0},
    "ps": {"path_smooth": 50.0},
    "xt": {"extra_trees": True},
    "mcs": {"min_data_in_leaf": 300},
}
_SHAPE_ARMS = {"c": ("click",), "v": ("convert",), "cv": ("click", "convert")}


def shape_of(kind: str) -> tuple[str, tuple[str, ...]] | None:
    """(shape, arms) of a recipe kind `SHAPE-ARMS` (e.g. `ic-v`), None for any other kind."""
    shape, _, arms = kind.partition("-")
    if shape in SHAPES and arms in _SHAPE_ARMS:
        return shape, _SHAPE_ARMS[arms]
    return None


def offer_side(columns: list[str]) -> list[str]:
    """The offer's columns and the user's taste and response columns of an arm's `columns`."""
    return [c for c in columns if c.startswith(RESPONSE_PREFIXES) or c in uplift.OFFER_COLUMNS]


def interaction_groups(columns: list[str], staged: bool) -> list[list[int]]:
    """LightGBM `interaction_constraints` over the encoder's inputs of `columns` (its matched columns appended, the
    stage after them when `staged`): the offer's columns (and the offer's matched affinity) with the user's taste and
    response columns in one group, every user column in the other; the stage in both."""
    inputs = [*columns, *matched_columns(columns)]
    offer = set(uplift.OFFER_COLUMNS) | {"offer_affinity", "offer_affinity_rel"}
    level = [i for i, c in enumerate(inputs) if c not in offer]
    fit = [i for i, c in enumerate(inputs) if c in offer or c.startswith(RESPONSE_PREFIXES)]
    if staged:
        level, fit = [*level, len(inputs)], [*fit, len(inputs)]
    return [level, fit]


def fixed_tuning(fixed: dict):
    """`tabular.tune_booster` with `fixed` LightGBM parameters in every trial and in the tuned result (a searched one
    included: the fixed value replaces the search's)."""
    from nextbest.training import tuning

    def tune(fit, valid, config, progress=None):
        saved_base, saved_space = tuning.BASE_PARAMS, tuning._space
        tuning.BASE_PARAMS = {**saved_base, **fixed}
        tuning._space = lambda trial: {**saved_space(trial), **fixed}
        try:
            params, rounds, loss = tuning.tune_booster(fit, valid, config, progress)
        finally:
            tuning.BASE_PARAMS, tuning._space = saved_base, saved_space
        return {**params, **fixed}, rounds, loss

    return tune


def fit_logit(frame, columns, y, feature_service, stage=None, pooled: bool = False) -> LinearScorer:
    """The plain arm: an L2 logistic regression (`validation.LOGISTIC_C`) on the standardised taste, response and
    offer columns (`offer_side`; strings one-hot, the matched affinity included), on the later stage's rows alone;
    `pooled`: on every row of both stages, the stage and its product with every input added (each input's weight
    at the later stage its own plus its interaction's), predicted at the later stage."""
    y = np.asarray(y)
    if stage is not None and not pooled:
        keep = np.asarray(stage) == 1
        frame, y = frame[keep], y[keep]
    encoder = fit_encoder(frame, offer_side(columns))
    x = encoder.dense(frame)
    if stage is not None and pooled:
        later = np.asarray(stage, dtype="float32")[:, None]
        model = LogisticRegression(C=LOGISTIC_C, max_iter=2000).fit(np.hstack([x, later, x * later]), y)
        w, k = model.coef_[0], x.shape[1]
        return LinearScorer(w[:k] + w[k + 1:], float(model.intercept_[0] + w[k]), encoder, feature_service,
                            {"learner": "logistic, pooled", "C": LOGISTIC_C, "rows": len(y)})
    model = LogisticRegression(C=LOGISTIC_C, max_iter=1000).fit(x, y)
    return LinearScorer(model.coef_[0], float(model.intercept_[0]), encoder, feature_service,
                        {"learner": "logistic", "C": LOGISTIC_C, "rows": len(y)})


def shaped(kind: str, fit_booster, cache: dict | None):
    """`fit_booster` for the funnel's four arms (called in `_ARMS` order) with the shape of a recipe kind applied to
    its arms (`shape_of`; none for `full`); with `cache`, an arm fitted as the product fits it is kept per (arm,
    training seed, trials) and reused."""
    shape, arms = shape_of(kind) or ("", ())
    calls = iter(_ARMS)

    def fit(frame, columns, y, feature_service, config, weight=None, progress=None, customer_base_weeks=None,
            stage=None):
        arm = next(calls)
        if arm not in arms:
            key = (arm, config.seed, config.trials, config.tune_sample, stage is None)
            if cache is not None and key in cache:
                return cache[key]
            out = fit_booster(frame, columns, y, feature_service, config, weight, progress=progress,
                              customer_base_weeks=customer_base_weeks, stage=stage)
            if cache is not None:
                cache[key] = out
            return out
        if shape in ("logit", "logitp"):
            return fit_logit(frame, columns, y, feature_service, stage, pooled=shape == "logitp")
        if shape == "blend":  # the product's arm and the plain one, their probabilities' mean
            return MeanOf([fit_booster(frame, columns, y, feature_service, config, weight, progress=progress,
                                       customer_base_weeks=customer_base_weeks, stage=stage),
                           fit_logit(frame, columns, y, feature_service, stage)])
        if shape == "few":
            columns = offer_side(columns)
        if shape == "share":  # the offer as its kind, value and matched affinity: offers share their evidence
            columns = [c for c in columns if c not in ("offer_id", "offer_category")]
        fixed = dict(SHAPES[shape])
        if shape == "ic":
            fixed["interaction_constraints"] = interaction_groups(list(columns), stage is not None)
        saved = tabular.tune_booster
        tabular.tune_booster = fixed_tuning(fixed)
        try:
            return fit_booster(frame, columns, y, feature_service, config, weight, progress=progress,
                               customer_base_weeks=customer_base_weeks, stage=stage)
        finally:
            tabular.tune_booster = saved

    return fit


def fits_of(kind: str) -> dict[str, int] | None:
    """The per-arm fit counts of a recipe kind `fitsK-ARMS` (ARMS `all` or arm names joined by '+'): the named arms K
    fits, the others one; None for any other kind."""
    head, dash, arms = kind.partition("-")
    if not (head.startswith("fits") and head[4:].isdigit() and int(head[4:]) >= 1 and dash):
        return None
    names = uplift.FUNNEL_ARMS if arms == "all" else tuple(arms.split("+"))
    if not set(names) <= set(uplift.FUNNEL_ARMS):
        return None
    return {a: int(head[4:]) if a in names else 1 for a in uplift.FUNNEL_ARMS}


def shared_fits(cache: dict, spent: list[float]):
    """`fit_booster` that makes each distinct fit (rows, columns, labels, stage, seed, budget) once per run and
    appends its CPU seconds to `spent` on every use (the recipe's training cost as if fitted alone)."""
    def fit(frame, columns, y, feature_service, config, weight=None, progress=None, customer_base_weeks=None,
            stage=None):
        key = ("fits", len(frame), tuple(columns), int(np.sum(y)), None if stage is None else int(np.sum(stage)),
               config.seed, config.trials, config.tune_sample, weight is None, customer_base_weeks)
        if key not in cache:
            cpu = time.process_time()
            out = fit_booster(frame, columns, y, feature_service, config, weight, progress=progress,
                              customer_base_weeks=customer_base_weeks, stage=stage)
            cache[key] = (out, time.process_time() - cpu)
        spent.append(cache[key][1])
        return cache[key][0]

    return fit


def known_recipe(name: str) -> bool:
    """Whether `name` is a recipe this bench knows (its kind, and its seed after '@' a number when given)."""
    kind, at, seed = name.partition("@")
    if name == "home":
        return True
    if kind.startswith("ctl-"):  # a control arm recipe, on full@SEED or on the home's champion
        own = kind[4:]
        known = own in CONTROL_RECIPES or any(own.startswith(p) and own[len(p):].isdigit() for p in ("scale", "bag"))
        return known and (not at or seed.isdigit() or seed == "home")
    if fits_of(kind) is not None:
        return not at or seed.isdigit()
    counted = any(kind.startswith(p) and kind[len(p):].isdigit() for p in ("bag", "ts", "cv", "avg", "t"))
    plain = kind in ("full", "half", "quarter", "rowhalf", "all", "lr") or kind in {f"half-{a}" for a in _ARMS}
    return (plain or counted or shape_of(kind) is not None) and (not at or seed.isdigit())


def fit_recipe(name: str, rows, cfg: uplift.UpliftConfig, refit: Refit, cache: dict | None = None):
    """The funnel of a recipe (its arms refitted as `refit` says; a shape recipe's arms shaped, `shaped`, the others
    reused from `cache`); `avgK`: K funnels, each tuned and refitted with
    its own seed (cfg's seed + 0..K-1), each arm the mean of the K arms' raw scores (`average_boosters`)."""
    kind = name.partition("@")[0]
    saved = uplift.fit_booster
    # The product's fit_booster for the product's refit; the product's tuning with another refit where it differs.
    booster = saved if refit == Refit() else functools.partial(refit_booster, refit=refit)
    if kind.startswith("half-"):  # one arm on half its users
        booster = half_users(kind.removeprefix("half-"), cfg.fit.seed, booster)
    if (kind == "full" or shape_of(kind)) and refit == Refit():  # the product's arms, one recipe's shape on some
        booster = shaped(kind, booster, cache)
    uplift.fit_booster = booster
    try:
        if not kind.startswith("avg"):
            return uplift.fit_funnel(rows, cfg)
        members = [uplift.fit_funnel(rows, dataclasses.replace(cfg, fit=dataclasses.replace(cfg.fit, seed=cfg.fit.seed + j)))
                   for j in range(int(kind[3:]))]
    finally:
        uplift.fit_booster = saved
    first = members[0]
    for arm in ("engage", "click", "convert", "control"):
        if getattr(first, f"{arm}_") is not None:
            getattr(first, f"{arm}_").booster_ = average_boosters([getattr(m, f"{arm}_").booster_ for m in members])
    return first


CONTROL_RECIPES = ("own", "pool", "poolown", "bgnbd", "reg", "lr", "truth", "truthlevel", "unclicked", "mix")  # + scaleP
CONTACT_VIEWS = ("channel", "time_profile")  # how a user answers contacts, when they read: not organic buying
# The plain baseline's inputs: the user's purchase record, RFM and activity (names as the behaviour and tags views
# spell them; a company's data has them under the same contract).
LR_MARKS = ("purchase", "revenue", "recency", "frequency", "monetary", "repeat_rate", "ipt_", "customer_age",
            "r_score", "f_score", "m_score", "events_", "app_opens_", "views_", "add_to_carts_", "tenure",
            "days_since_last_event", "abandoned_cart")


def organic_columns(features: list[str], contact_columns: set[str]) -> list[str]:
    """The user's features that can move organic buying: all but the contact-response and time-profile views'."""
    return [c for c in features if c not in contact_columns]


class UserValues:
    """A control arm that is a number per user id (the truth's organic P(convert), for the diagnosis): predicts on
    frames (their `user_id`) and, compiled, on serving's `Rows` (the request's users' ids)."""

    params_: dict = {}

    def __init__(self, values: pd.Series, fill: float):
        self.values, self.fill = values, fill

    def _of(self, ids) -> np.ndarray:
        return self.values.reindex(pd.Index(np.asarray(ids, dtype=object).astype(str))).fillna(self.fill).to_numpy(float)

    def predict(self, x) -> np.ndarray:
        if isinstance(x, Rows):
            return self._of(x.users.users["user_id"][x.rows])
        return self._of(x["user_id"])

    def compile(self, feature_columns, request):
        return self


class PlainLogit:
    """The plain baseline control arm: a logistic regression on the user's purchase / RFM / activity numbers
    (signed log1p, missing as the training median plus a missing flag, standardised)."""

    params_: dict = {}

    def __init__(self, columns: list[str]):
        self.columns = columns

    def _x(self, get) -> np.ndarray:
        x = np.column_stack([pd.to_numeric(pd.Series(get(c)), errors="coerce").to_numpy(float) for c in self.columns])
        missing = np.isnan(x)
        x = np.where(missing, self.median_, x)
        x = np.sign(x) * np.log1p(np.abs(x))
        return np.column_stack([(x - self.mean_) / self.sd_, missing.astype(float)])

    def fit(self, frame: pd.DataFrame, y: np.ndarray) -> PlainLogit:
        raw = np.column_stack([pd.to_numeric(frame[c], errors="coerce").to_numpy(float) for c in self.columns])
        self.median_ = np.nan_to_num(np.nanmedian(raw, axis=0))
        t = np.where(np.isnan(raw), self.median_, raw)
        t = np.sign(t) * np.log1p(np.abs(t))
        self.mean_, self.sd_ = t.mean(axis=0), np.where(t.std(axis=0) > 1e-9, t.std(axis=0), 1.0)
        self.model_ = LogisticRegression(C=1.0, max_iter=2000).fit(self._x(lambda c: frame[c]), y)
        return self

    def predict(self, x) -> np.ndarray:
        if isinstance(x, Rows):
            return self.model_.predict_proba(self._x(lambda c: x.users.users[c][x.rows]))[:, 1]
        return self.model_.predict_proba(self._x(lambda c: x[c]))[:, 1]

    def compile(self, feature_columns, request):
        return self


class Scaled:
    """A fitted arm's P(convert) times a constant (the control arm's level moved, its ranking kept)."""

    def __init__(self, arm, factor: float):
        self.arm, self.factor, self.params_ = arm, factor, dict(getattr(arm, "params_", {}))

    def predict(self, x) -> np.ndarray:
        return np.asarray(self.arm.predict(x), dtype=float) * self.factor

    def compile(self, feature_columns, request):
        return Scaled(self.arm.compile(feature_columns, request), self.factor)


class Unclicked:
    """The pooled after-click arm (a `StagedBooster`, the stage = clicked) read at clicked = 0: its estimate of the
    user's organic level (an opened message left unclicked changes nothing); with `control` and `share` < 1, that
    mixed with the control arm's, share x unclicked + (1 - share) x control: one organic level both sides share."""

    def __init__(self, convert, control=None, share: float = 1.0, compiled: bool = False):
        self.convert, self.control, self.share, self.compiled = convert, control, share, compiled
        self.params_ = {}

    def _unclicked(self, x) -> np.ndarray:
        if self.compiled:
            codes = self.convert.plan.codes(x)
            return self.convert.booster.predict(np.column_stack([codes, np.zeros(len(codes))]), num_threads=1)
        codes = self.convert.encoder_.codes(x)
        return self.convert.booster_.predict(np.column_stack([codes, np.zeros(len(codes))]))

    def predict(self, x) -> np.ndarray:
        p = self._unclicked(x)
        if self.control is None or self.share >= 1:
            return p
        return self.share * p + (1 - self.share) * np.asarray(self.control.predict(x), dtype=float)

    def compile(self, feature_columns, request):
        return Unclicked(self.convert.compile(feature_columns, request),
                         None if self.control is None else self.control.compile(feature_columns, request), self.share,
                         compiled=True)


def control_arm(kind: str, train, cfg: uplift.UpliftConfig, contact_columns: set[str], truth: pd.Series | None = None,
                fitted=None):
    """The control arm of recipe `ctl-KIND` (`CONTROL_RECIPES`) fitted on `train` with `cfg`'s seed and budget
    (`scaleP`: the `fitted` funnel's own control arm times P / 100)."""
    if kind.startswith("scale") and kind[5:].isdigit():
        return Scaled(fitted.control_, int(kind[5:]) / 100)
    if kind.startswith("bag") and kind[3:].isdigit():  # the mean of K control arms' probabilities, seeds S .. S+K-1
        frame, rows = train.frame, uplift.funnel_rows(train)
        mask, y = rows["control"]
        members = [fitted.control_]  # the funnel's own control arm (seed S) is the first member; the others refitted
        for i in range(1, int(kind[3:])):  # seeds S + 100 i: no member shared between the bags of seeds S and S + 1
            members.append(fit_booster(frame[mask], list(train.features), y, train.feature_service,
                                       dataclasses.replace(cfg.fit, seed=cfg.fit.seed + 100 * i)))
        return MeanOf(members)
    if kind in ("unclicked", "mix"):
        if not isinstance(fitted.convert_, StagedBooster):
            raise SystemExit(f"ctl-{kind} needs the pooled after-click arm (UpliftConfig.pooled_convert)")
        return Unclicked(fitted.convert_, fitted.control_, 1.0 if kind == "unclicked" else 0.5)
    frame, rows = train.frame, uplift.funnel_rows(train)
    mask, y = rows["control"]
    features = list(train.features)
    own = organic_columns(features, contact_columns)
    if kind in ("own", "bgnbd", "reg"):
        columns = own if kind == "own" else features
        if kind == "reg":
            return refit_booster(frame[mask], columns, y, train.feature_service, cfg.fit,
                                 refit=Refit(limits=(("num_leaves", 7, "max"), ("min_data_in_leaf", 200, "min"),
                                                     ("lambda_l2", 10.0, "min"))))
        weeks = cfg.window_days / 7 if kind == "bgnbd" else None
        return fit_booster(frame[mask], columns, y, train.feature_service, cfg.fit, customer_base_weeks=weeks)
    if kind in ("pool", "poolown"):
        treated = frame[train.treatment].to_numpy() == 1
        clicked = frame["clicked"].to_numpy() == 1 if "clicked" in frame else np.zeros(len(frame), bool)
        pooled = ~treated | (treated & ~clicked)  # the contacted rows left unclicked convert only organically
        return fit_booster(frame[pooled], own if kind == "poolown" else features, train.y[pooled],
                           train.feature_service, cfg.fit, stage=(~treated)[pooled].astype("int64"))
    if kind == "lr":
        return PlainLogit([c for c in own if any(m in c for m in LR_MARKS)
                           and pd.api.types.is_numeric_dtype(frame[c])]).fit(frame[mask], y)
    if kind in ("truth", "truthlevel"):
        return UserValues(truth, float(truth.mean()))
    raise SystemExit(f"unknown control recipe ctl-{kind}; choose from {', '.join(CONTROL_RECIPES)}")


def with_control(funnel: FunnelUpliftScorer, control) -> FunnelUpliftScorer:
    return FunnelUpliftScorer(funnel.engage_, funnel.convert_, control, funnel.feature_service, click=funnel.click_)


def control_of_users(models: engine.ModelSet, scores, users: engine.Users) -> np.ndarray:
    """The uplift champion's control arm P(convert | not contacted) per user, as serving scores it."""
    columns = engine.user_columns(users)
    n = columns.n
    x = Rows(columns, np.arange(n), np.zeros(n, dtype=np.int64), scores.hours[:, 0].astype(float),
             engine.request_grid(scores.config))
    return np.asarray(models.compiled["uplift"].fitted["control"].predict(x), dtype=float)


def tuned(scorer) -> str:
    """Each arm's tuned rounds / learning rate / leaves / min rows per leaf."""
    out = []
    for arm in ("engage", "click", "convert", "control"):
        if (b := getattr(scorer, f"{arm}_", None)) is not None and b.params_:
            p = b.params_
            out.append(f"{arm} {p.get('num_boost_round')}r/{p.get('learning_rate', 0):.3g}/{p.get('num_leaves')}l/"
                       f"{p.get('min_data_in_leaf')}m")
    return ", ".join(out)


def scoring_ms(settings, period, models, single: int = 300) -> tuple[float, float, float]:
    """The decision path's model work with `models`: p50 ms of one user's send-time and conversion/uplift scores
    (as serving scores one decision), the same in CPU ms, and the batch scoring's CPU seconds for the period's users
    (`evaluate.policy_scores`)."""
    from nextbest.serving.config import catalog_config

    config = catalog_config(period.offers, period.channels, base=load_config(settings.home / "operator.yaml"))
    users = evaluate.latest_features(settings, period.user_ids[:single])
    ms, cpu_ms = [], []
    for u in range(single):
        one = engine.user_columns({k: v[u:u + 1] for k, v in users.items()})
        t, c = time.perf_counter(), time.process_time()
        p_open = engine.send_time_scores(models, one, config)
        hours = p_open.argmax(axis=2)
        engine.conversion_scores(models, one, config, hours, p_open=p_open)
        ms.append((time.perf_counter() - t) * 1000)
        cpu_ms.append((time.process_time() - c) * 1000)
    c = time.process_time()
    evaluate.policy_scores(settings, period, models)
    return float(np.median(ms)), float(np.median(cpu_ms)), time.process_time() - c


def arm_rows(train) -> dict[str, int]:
    f = train.frame
    treated = f[train.treatment].to_numpy() == 1
    opened, clicked = f["opened"].to_numpy() == 1, f["clicked"].to_numpy() == 1
    return {"contacted": int(treated.sum()), "engaged": int((treated & (opened | clicked)).sum()),
            "clicked": int((treated & clicked).sum()), "control": int((~treated).sum()),
            "conversions_after_click": int(train.y[treated & clicked].sum()), "control_conversions": int(train.y[~treated].sum())}


def week_split(sends: pd.DataFrame) -> tuple[float, float]:
    """Revenue on each user's first send of each week (days 0-6, 7-13) and on the later sends."""
    s = sends.sort_values(["user_idx", "day"])
    week = s["day"].to_numpy() // 7
    first = ~s.assign(week=week).duplicated(["user_idx", "week"]).to_numpy()
    revenue = s["expected_revenue"].to_numpy()
    return float(revenue[first].sum()), float(revenue[~first].sum())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--users", type=int, default=3_000)
    parser.add_argument("--seeds", default="11,5")
    parser.add_argument("--recipes", default="full,full@8,half,quarter")
    parser.add_argument("--sample-rows", type=int, default=TrainConfig.sample_rows,
                        help="contact-log rows joined, past it a stratified sample (`TrainConfig.sample_rows`)")
    parser.add_argument("--serving", action="store_true", help="also time the decision path's scoring per recipe")
    parser.add_argument("--trials", type=int, default=5, help="Optuna trials per arm (the demo's: 5)")
    parser.add_argument("--ranking", action="store_true", help="also each recipe's offer ranking on the home's "
                        "champion's recorded NBA sends (bench_funnel_arms.py): the offer arms' within-send Spearman "
                        "with the truth and the value of the offers it picks there (fixed sends)")
    parser.add_argument("--per-user", type=Path, help="write every recipe's per-user revenue here (.npz) to pair runs")
    parser.add_argument("--no-reuse", action="store_true", help="refit the arms a shape recipe leaves as the product's "
                        "for every recipe (by default fitted once per training seed and reused: the same models)")
    parser.add_argument("--whom", action="store_true", help="shadow replays: the user-days the history oracle contacts "
                                                            "and the NBA leaves alone, and the control arm's error there")
    args = parser.parse_args()
    unknown = [r for r in args.recipes.split(",") if not known_recipe(r)]
    if unknown:
        parser.error(f"unknown recipe(s) {', '.join(unknown)}: see the module's docstring (e.g. full@7, ic-v@8, "
                     "ctl-own@7)")
    settings = Settings(home=args.home)
    t0, c0 = time.perf_counter(), time.process_time()
    raw = read_raw_tables(settings, ON_DISK)
    store = training_store(settings)
    job = TrainConfig(trials=args.trials, seed=settings.seed, sample_rows=args.sample_rows)
    # The one-fit-per-arm recipe is every recipe's base (`full`); `ctl-bagK` / `fitsK-control` is the product's control
    # arm of K fits, `fitsK-ARMS` the product's `arm_fits`.
    base = dataclasses.replace(model_config("uplift", job), arm_fits=dict.fromkeys(uplift.FUNNEL_ARMS, 1))
    data = uplift.build_frame(store, raw, base, shared_joins(store, ["uplift"], Sampling(job.sample_rows, job.seed)))
    train, holdout = split(data, job.holdout, job.seed)
    print(f"training set: {len(data.frame):,} rows ({len(train.frame):,} train, {len(holdout.frame):,} holdout), "
          f"{time.perf_counter() - t0:.0f} s wall, {time.process_time() - c0:.0f} CPU-s", flush=True)
    contact_columns = {f.name for v in CONTACT_VIEWS if v in {x.name for x in store.list_feature_views()}
                       for f in store.get_feature_view(v).features}
    del data, raw, store  # the split's two sets are copies: the joined frame and the raw tables are no longer needed
    world, tables = evaluate.load_period(settings)
    models = evaluate.champion_set(settings)
    caps = load_config(settings.home / "operator.yaml").caps
    periods, recorded, extra = {}, {}, {}
    for seed in (int(s) for s in args.seeds.split(",")):
        period = world.sample(args.users, seed=seed)
        config = ReplayConfig(rules=Rules.of(caps), seed=seed)
        beliefs = history_beliefs(period.truth, tables, period.user_ids, period.start)
        oracle = replay(period, OraclePolicy(period, name=evaluate.HISTORY_ORACLE, beliefs=beliefs), config).metrics
        scores = evaluate.policy_scores(settings, period, models)
        prop = replay(period, scores.policy("propensity only", False), config).metrics
        champ = replay(period, scores.policy("nba (uplift)", True), config)
        n = period.n_users
        organic = pd.Series(response.p_organic(period.truth, np.arange(n), np.full(n, period.start.value)),
                            index=pd.Index(period.user_ids.astype(str)))
        periods[seed] = (period, config, oracle["incremental_revenue"], prop["incremental_revenue"], champ)
        extra[seed] = {"oracle": OraclePolicy(period, name=evaluate.HISTORY_ORACLE, beliefs=beliefs),
                       "beliefs": beliefs, "organic": organic, "users": evaluate.latest_features(settings, period.user_ids)}
        if args.ranking:
            recorded[seed] = record_sends(settings, args.users, config)
        print(f"seed {seed}: history oracle {oracle['incremental_revenue']:,.1f}, propensity-only "
              f"{prop['incremental_revenue']:,.1f}, the home's champion NBA {champ.metrics['incremental_revenue']:,.1f}",
              flush=True)
    rows, per_user, fitted, cache = [], {}, {}, None if args.no_reuse else {}
    truth_all = pd.concat([e["organic"] for e in extra.values()])
    truth_all = truth_all[~truth_all.index.duplicated()]
    for name in args.recipes.split(","):
        rows_set = recipe_rows(name, train, holdout, job.seed)
        cfg, refit = recipe_config(name, base)
        kind = name.partition("@")[0]
        started, cpu = time.perf_counter(), time.process_time()
        if name == "home":  # the home's uplift champion as it is
            scorer = fitted[name] = models.models["uplift"].model
        elif kind.startswith("ctl-"):  # full@SEED's funnel (fitted once; @home: the champion) with its control arm replaced
            full = "home" if name.endswith("@home") else f"full@{cfg.fit.seed}"
            if full == "home":
                fitted[full] = models.models["uplift"].model
            elif full not in fitted:
                fitted[full] = fit_recipe(full, train, cfg, Refit(), cache)
            started, cpu = time.perf_counter(), time.process_time()
            scorer = with_control(fitted[full], control_arm(kind[4:], rows_set, cfg, contact_columns, truth_all,
                                                            fitted[full]))
        elif fits_of(kind) is not None:  # the product's fit with these arm fits, each (arm, seed) fit made once
            spent: list[float] = []
            saved = uplift.fit_booster
            uplift.fit_booster = shared_fits({} if cache is None else cache, spent)
            try:
                scorer = uplift.fit_funnel(rows_set, dataclasses.replace(cfg, arm_fits=fits_of(kind)))
            finally:
                uplift.fit_booster = saved
        else:
            scorer = fit_recipe(name, rows_set, cfg, refit, cache)
        fitted[name] = scorer
        fit_s, fit_cpu = time.perf_counter() - started, time.process_time() - cpu
        train_cpu = sum(spent) if fits_of(kind) is not None else fit_cpu
        qini = np.nan if kind.startswith("ctl-truth") else uplift.evaluate(scorer, holdout)["qini_auc"]
        print(f"{name}: {tuned(scorer)}; holdout qini {qini:.5f}", flush=True)
        variant = engine.ModelSet({**models.models, "uplift": Champion("uplift", name, scorer)}, models.columns).compile()
        variants = {seed: variant for seed in periods}
        if kind == "ctl-truthlevel":  # the truth's ranking at the fitted arm's level over each replay's users
            plain = engine.ModelSet({**models.models, "uplift": Champion("uplift", full, fitted[full])},
                                    models.columns).compile()
            for seed, (period, *_) in periods.items():
                e = extra[seed]
                level = control_of_users(plain, evaluate.policy_scores(settings, period, plain, users=e["users"]),
                                         e["users"]).mean() / e["organic"].mean()
                arm = UserValues(truth_all * level, float(truth_all.mean() * level))
                variants[seed] = engine.ModelSet({**models.models, "uplift": Champion(
                    "uplift", name, with_control(fitted[full], arm))}, models.columns).compile()
        if args.serving:
            first_period = next(iter(periods.values()))[0]
            for label, ms in (("champion", models), (name, variant), ("champion", models), (name, variant)):
                p50, cpu, batch = scoring_ms(settings, first_period, ms)
                print(f"scoring with {label}: one user p50 {p50:.2f} ms ({cpu:.2f} CPU-ms), {first_period.n_users:,} "
                      f"users in a batch {batch:.2f} CPU-s", flush=True)
        for seed, (period, config, oracle, prop, _) in periods.items():
            e = extra[seed]
            scores = evaluate.policy_scores(settings, period, variants[seed], users=e["users"])
            nba = scores.policy("nba (uplift)", True)
            shadow = Recorder(period, nba, e["oracle"], e["beliefs"]) if args.whom else None
            result = replay(period, shadow or nba, config)
            m = result.metrics
            first, later = week_split(result.sends)
            per_user[name, seed] = evaluate.revenue_per_user(result, period.n_users)
            ranked = offer_ranking(recorded[seed], variant) if seed in recorded else {}
            rows.append({"recipe": name, "seed": seed, "train rows": len(rows_set.frame), **arm_rows(rows_set),
                         **ranked,
                         "fit s": fit_s, "fit CPU-s": fit_cpu, "train CPU-s": train_cpu, "holdout qini": qini,
                         "NBA": m["incremental_revenue"], "of history oracle": m["incremental_revenue"] / oracle,
                         "x propensity-only": m["incremental_revenue"] / prop, "first sends": first,
                         "later sends": later, "contacts": m["contacts"], "opt-outs /1k": m["opt_outs_per_1k"],
                         "violations": m["violations"]})
            if shadow is not None:
                rows[-1].update(whom(shadow, nba, control_of_users(variants[seed], scores, e["users"]),
                                     e["organic"].to_numpy()))
            print(pd.DataFrame(rows[-1:]).to_markdown(index=False, floatfmt=",.3f"), flush=True)
    out = pd.DataFrame(rows)
    print(f"\n{platform.node()} {platform.processor() or platform.machine()} {pd.Timestamp.now(tz='UTC'):%Y-%m-%d %H:%M} "
          f"UTC, {args.users} users, 14 days, load average {' / '.join(f'{x:.1f}' for x in os.getloadavg())}, "
          f"{time.perf_counter() - t0:.0f} s wall, {time.process_time() - c0:.0f} CPU-s, peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")
    print(out.to_markdown(index=False, floatfmt=",.3f"))
    reference = args.recipes.split(",")[0]
    print(f"\nrevenue paired per user against `{reference}` (95 % interval):")
    diffs = []
    for (name, seed), values in per_user.items():
        d = paired_difference(values, per_user[reference, seed])
        n = len(values)
        diffs.append({"recipe": name, "seed": seed, "difference": d.value * n, "low": d.low * n, "high": d.high * n,
                      "relative": d.value * n / per_user[reference, seed].sum()})
    print(pd.DataFrame(diffs).to_markdown(index=False, floatfmt=",.4f"))
    if args.per_user:
        np.savez(args.per_user, **{f"{name}|{seed}": v for (name, seed), v in per_user.items()})
    print(seed_paired(per_user, reference, [int(x) for x in args.seeds.split(",")]).to_markdown(index=False,
                                                                                              floatfmt=",.2f"))


def whom(shadow: Recorder, nba, control: np.ndarray, organic: np.ndarray) -> dict[str, float]:
    """The "whom" part of a shadow replay: the user-days only the history oracle contacts (count, the truth's value,
    distinct users) and only the NBA contacts; the (user, offer) pairs with no channel of positive EV at the period's
    start; the control arm's mean P(convert) over the truth's organic one on the history oracle's extra users and on
    all users (above 1 on the former only: the arm's over-estimate left them uncontacted)."""
    only = {k: pd.concat([f for key, f in shadow.log if key == k], ignore_index=True) for k in ("oracle only", "nba only")}
    users = only["oracle only"]["user"].to_numpy()
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an ineligible (user, offer) has no channel: all NaN
        best = np.nanmax(np.where(np.isfinite(nba.ev), nba.ev, np.nan), axis=2)  # (U, O) over channels
    pairs = np.isfinite(best)
    extra_users = np.zeros(len(control), bool)
    extra_users[users] = True
    # Percentile ranks across the replayed users: the arm ranks these users' organic buying higher than the truth
    # does when its rank is above the truth's (an over-estimate relative to the others, which is what moves them).
    rank_c, rank_t = pd.Series(control).rank(pct=True).to_numpy(), pd.Series(organic).rank(pct=True).to_numpy()
    on = extra_users if extra_users.any() else None
    return {"oracle-only user-days": len(users), "oracle-only value": float(only["oracle only"]["value"].sum()),
            "oracle-only users": int(extra_users.sum()), "nba-only user-days": len(only["nba only"]),
            "nba-only value": float(only["nba only"]["value"].sum()),
            "pairs no +EV": float((best[pairs] <= 0).mean()),
            "control - truth pp, oracle-only users": 100 * float((control - organic)[on].mean()) if on is not None else np.nan,
            "control - truth pp, all": 100 * float((control - organic).mean()),
            "control rank, oracle-only users": float(rank_c[on].mean()) if on is not None else np.nan,
            "truth rank, oracle-only users": float(rank_t[on].mean()) if on is not None else np.nan,
            "control mean": float(control.mean())}


def offer_ranking(sends, models: engine.ModelSet) -> dict[str, float]:
    """A funnel's offer arms on the champion's recorded NBA sends (`bench_funnel_arms.record`): the mean within-send
    Spearman, across a send's eligible offers, of the click arm with the truth's click, of the after-click lift
    (convert - control) with the truth's (p_buy x (1 - p_organic)), the latter among the category products only; and
    the truth's value of the offers its EV picks at the NBA's channel and hour (the champion's own pick: its
    replay's sends)."""
    arms = funnel_arms(models, sends.users, sends.scores.config, sends.scores.hours)
    r, truth = sends.rows, sends.truth
    click, after = arms["click"][r], arms["convert"][r] - arms["control"][r][:, None]
    t_after = truth["buy"] * (1 - truth["organic"])
    return {"rho click": float(np.nanmean(row_spearman(click, truth["click"], sends.ok))),
            "rho after-click": float(np.nanmean(row_spearman(after, t_after, sends.ok))),
            "rho after-click products": float(np.nanmean(row_spearman(after, t_after, product_offers(sends)))),
            "fixed sends": float(sends.value(sends.pick(click * after * sends.weight[r])).sum())}


def seed_paired(per_user: dict, reference: str, replay_seeds: list[int]) -> pd.DataFrame:
    """Each recipe kind against the reference's kind (`X@home` against `home`), paired on the training seeds both were fitted with: the mean
    over seeds of the per-user difference (its 95 % interval over the users), and the per-seed totals' differences
    (a t interval over the seeds: the retrain spread)."""
    kind = {name: name if name.endswith("@home") else name.partition("@")[0] for name, _ in per_user}  # X@home apart
    seed_of = {name: name.partition("@")[2] or "" for name, _ in per_user}
    ref_kind = kind[reference]
    out = []
    for k in dict.fromkeys(kind.values()):
        if k in (ref_kind, "home"):
            continue
        for replay_seed in replay_seeds:
            if k.endswith("@home"):  # a recipe on the home's champion, against the champion itself
                both = (k, replay_seed) in per_user and ("home", replay_seed) in per_user
                pairs = [(k, "home")] if both else []
            else:
                pairs = [(n, r) for n in kind for r in kind if kind[n] == k and kind[r] == ref_kind and
                         seed_of[n] == seed_of[r] and (n, replay_seed) in per_user and (r, replay_seed) in per_user]
            if not pairs:
                continue
            diff = np.mean([per_user[n, replay_seed] - per_user[r, replay_seed] for n, r in pairs], axis=0)
            base = float(np.mean([per_user[r, replay_seed].sum() for _, r in pairs]))
            d = paired_difference(diff, np.zeros_like(diff))
            n = len(diff)
            totals = np.array([per_user[a, replay_seed].sum() - per_user[r, replay_seed].sum() for a, r in pairs])
            half = (stats.t.ppf(0.975, len(totals) - 1) * totals.std(ddof=1) / np.sqrt(len(totals))
                    if len(totals) > 1 else np.nan)
            out.append({"recipe": k, "against": "home" if k.endswith("@home") else ref_kind, "replay seed": replay_seed, "training seeds": len(pairs),
                        "reference mean": base, "mean difference": d.value * n, "users low": d.low * n,
                        "users high": d.high * n, "relative %": 100 * d.value * n / base,
                        "seeds low": totals.mean() - half, "seeds high": totals.mean() + half,
                        "per seed": " / ".join(f"{t:+,.0f}" for t in totals)})
    return pd.DataFrame(out)


if __name__ == "__main__":
    main()
