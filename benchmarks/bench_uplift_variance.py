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

- `full[@SEED]`: the demo's recipe on all training rows (a plain retrain with another training seed: its spread);
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
  product's arm's and `logit`'s probabilities. E.g. `ic-v@7`.

The arms a recipe leaves as the product fits them are fitted once per training seed and reused by every recipe with
that seed (each arm's fit is seeded on its own, so they are the same models: `--no-reuse` refits them).

Per recipe and seed: the NBA's incremental revenue (the truth's expectation), its share of the history oracle, its
revenue on each user's first send of a week (days 0-6 and 7-13 separately) and on the later sends, contacts,
opt-outs per 1,000 contacts, violations, the fit's wall and CPU seconds and the arms' row counts; then each recipe's
revenue paired per user against the first recipe's, with a 95 % interval (with `--ranking`, also each recipe's
within-send Spearman of the offer arms and its value on the champion's recorded sends: `offer_ranking`); and, for
each recipe kind with the first recipe's kind on the same training seeds, the paired mean over those seeds: per user
the mean over seeds of the difference (interval over users), and the per-seed differences (a t interval over
seeds).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import platform
import resource
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from bench_funnel_arms import MeanOf, funnel_arms, product_offers, row_spearman
from bench_funnel_arms import record as record_sends
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold

from nextbest.features.settings import Settings
from nextbest.features.store import training_store
from nextbest.pipelines import evaluate
from nextbest.serving import engine
from nextbest.serving.config import load_config
from nextbest.simulation.beliefs import history_beliefs
from nextbest.simulation.policies import OraclePolicy
from nextbest.simulation.replay import ReplayConfig, Rules, replay
from nextbest.training import tabular, uplift
from nextbest.training.datasets import Sampling, split
from nextbest.training.derived import matched_columns
from nextbest.training.encoding import fit_encoder
from nextbest.training.jobs import ON_DISK, TrainConfig, model_config, read_raw_tables, shared_joins
from nextbest.training.ope import paired_difference
from nextbest.training.registry import Champion
from nextbest.training.scorers import BoosterScorer, LinearScorer, StagedBooster
from nextbest.training.tabular import tune_rows
from nextbest.training.validation import LOGISTIC_C


def recipe_rows(name: str, train, holdout, seed: int):
    """The training set of a recipe's name (its part before '@'; a sample of users drawn with the recipe's seed)."""
    kind, _, own = name.partition("@")
    seed = int(own) if own else seed
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


def recipe_config(name: str, base: uplift.UpliftConfig) -> tuple[uplift.UpliftConfig, Refit]:
    kind, _, seed = name.partition("@")
    fit, refit = base.fit, Refit()
    if seed:
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


def known_recipe(name: str) -> bool:
    """Whether `name` is a recipe this bench knows (its kind, and its seed after '@' a number when given)."""
    kind, at, seed = name.partition("@")
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


def tuned(scorer) -> str:
    """Each arm's tuned rounds / learning rate / leaves / min rows per leaf."""
    out = []
    for arm in ("engage", "click", "convert", "control"):
        if (b := getattr(scorer, f"{arm}_", None)) is not None:
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
    args = parser.parse_args()
    unknown = [r for r in args.recipes.split(",") if not known_recipe(r)]
    if unknown:
        parser.error(f"unknown recipe(s) {', '.join(unknown)}: see the module's docstring (e.g. full@7, ic-v@8)")
    settings = Settings(home=args.home)
    t0, c0 = time.perf_counter(), time.process_time()
    raw = read_raw_tables(settings, ON_DISK)
    store = training_store(settings)
    job = TrainConfig(trials=args.trials, seed=settings.seed, sample_rows=args.sample_rows)
    base = model_config("uplift", job)
    data = uplift.build_frame(store, raw, base, shared_joins(store, ["uplift"], Sampling(job.sample_rows, job.seed)))
    train, holdout = split(data, job.holdout, job.seed)
    print(f"training set: {len(data.frame):,} rows ({len(train.frame):,} train, {len(holdout.frame):,} holdout), "
          f"{time.perf_counter() - t0:.0f} s wall, {time.process_time() - c0:.0f} CPU-s", flush=True)
    del data, raw, store  # the split's two sets are copies: the joined frame and the raw tables are no longer needed
    world, tables = evaluate.load_period(settings)
    models = evaluate.champion_set(settings)
    caps = load_config(settings.home / "operator.yaml").caps
    periods, recorded = {}, {}
    for seed in (int(s) for s in args.seeds.split(",")):
        period = world.sample(args.users, seed=seed)
        config = ReplayConfig(rules=Rules.of(caps), seed=seed)
        beliefs = history_beliefs(period.truth, tables, period.user_ids, period.start)
        oracle = replay(period, OraclePolicy(period, name=evaluate.HISTORY_ORACLE, beliefs=beliefs), config).metrics
        scores = evaluate.policy_scores(settings, period, models)
        prop = replay(period, scores.policy("propensity only", False), config).metrics
        champ = replay(period, scores.policy("nba (uplift)", True), config)
        periods[seed] = (period, config, oracle["incremental_revenue"], prop["incremental_revenue"], champ)
        if args.ranking:
            recorded[seed] = record_sends(settings, args.users, config)
        print(f"seed {seed}: history oracle {oracle['incremental_revenue']:,.1f}, propensity-only "
              f"{prop['incremental_revenue']:,.1f}, the home's champion NBA {champ.metrics['incremental_revenue']:,.1f}",
              flush=True)
    rows, per_user, cache = [], {}, None if args.no_reuse else {}
    for name in args.recipes.split(","):
        rows_set = recipe_rows(name, train, holdout, job.seed)
        cfg, refit = recipe_config(name, base)
        started, cpu = time.perf_counter(), time.process_time()
        scorer = fit_recipe(name, rows_set, cfg, refit, cache)
        fit_s, fit_cpu = time.perf_counter() - started, time.process_time() - cpu
        qini = uplift.evaluate(scorer, holdout)["qini_auc"]
        print(f"{name}: {tuned(scorer)}", flush=True)
        variant = engine.ModelSet({**models.models, "uplift": Champion("uplift", name, scorer)}, models.columns).compile()
        if args.serving:
            first_period = next(iter(periods.values()))[0]
            for label, ms in (("champion", models), (name, variant), ("champion", models), (name, variant)):
                p50, cpu, batch = scoring_ms(settings, first_period, ms)
                print(f"scoring with {label}: one user p50 {p50:.2f} ms ({cpu:.2f} CPU-ms), {first_period.n_users:,} "
                      f"users in a batch {batch:.2f} CPU-s", flush=True)
        for seed, (period, config, oracle, prop, _) in periods.items():
            scores = evaluate.policy_scores(settings, period, variant)
            result = replay(period, scores.policy("nba (uplift)", True), config)
            m = result.metrics
            first, later = week_split(result.sends)
            per_user[name, seed] = evaluate.revenue_per_user(result, period.n_users)
            ranked = offer_ranking(recorded[seed], variant) if seed in recorded else {}
            rows.append({"recipe": name, "seed": seed, "train rows": len(rows_set.frame), **arm_rows(rows_set),
                         **ranked,
                         "fit s": fit_s, "fit CPU-s": fit_cpu, "holdout qini": qini,
                         "NBA": m["incremental_revenue"], "of history oracle": m["incremental_revenue"] / oracle,
                         "x propensity-only": m["incremental_revenue"] / prop, "first sends": first,
                         "later sends": later, "contacts": m["contacts"], "opt-outs /1k": m["opt_outs_per_1k"],
                         "violations": m["violations"]})
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
    """Each recipe kind against the reference's kind, paired on the training seeds both were fitted with: the mean
    over seeds of the per-user difference (its 95 % interval over the users), and the per-seed totals' differences
    (a t interval over the seeds: the retrain spread)."""
    kind = {name: name.partition("@")[0] for name, _ in per_user}
    seed_of = {name: name.partition("@")[2] or "" for name, _ in per_user}
    ref_kind = kind[reference]
    out = []
    for k in dict.fromkeys(kind.values()):
        if k == ref_kind:
            continue
        for replay_seed in replay_seeds:
            pairs = [(n, r) for n in kind for r in kind if kind[n] == k and kind[r] == ref_kind
                     and seed_of[n] == seed_of[r] and (n, replay_seed) in per_user and (r, replay_seed) in per_user]
            if not pairs:
                continue
            diff = np.mean([per_user[n, replay_seed] - per_user[r, replay_seed] for n, r in pairs], axis=0)
            base = float(np.mean([per_user[r, replay_seed].sum() for _, r in pairs]))
            d = paired_difference(diff, np.zeros_like(diff))
            n = len(diff)
            totals = np.array([per_user[a, replay_seed].sum() - per_user[r, replay_seed].sum() for a, r in pairs])
            half = (stats.t.ppf(0.975, len(totals) - 1) * totals.std(ddof=1) / np.sqrt(len(totals))
                    if len(totals) > 1 else np.nan)
            out.append({"recipe": k, "against": ref_kind, "replay seed": replay_seed, "training seeds": len(pairs),
                        "reference mean": base, "mean difference": d.value * n, "users low": d.low * n,
                        "users high": d.high * n, "relative %": 100 * d.value * n / base,
                        "seeds low": totals.mean() - half, "seeds high": totals.mean() + half,
                        "per seed": " / ".join(f"{t:+,.0f}" for t in totals)})
    return pd.DataFrame(out)


if __name__ == "__main__":
    main()
