"""Which funnel arm's estimate costs the NBA's offer ranking most (issue 16, ninth session).

Usage (after `make demo`, on a copy of its home): python benchmarks/bench_funnel_arms.py --home DIR [--users 3000]
[--seed 11] [--train-rows]

The NBA policy is replayed as `nextbest evaluate` replays it (operator caps, bench_offer_rank.py's set-up). The
demo's uplift champion is the funnel learner: EV(user, offer, channel) = P(open | user, channel, hour) x lift(user,
offer) x value x lever x churn boost - channel costs, with

    lift = P(click | opened, offer) x (P(convert | clicked, offer) - P(convert | not contacted))

(training/uplift.py `fit_funnel`). On every send the NBA makes, its eligible offers are ranked at the NBA's channel
and hour by that EV, then by the same EV with one arm at a time replaced by what the truth (simulation/response.py)
says of that stage, then by the history oracle's beliefs (simulation/beliefs.py: the interests as the history tells
them) in place of the truth, and by those beliefs with every user's price sensitivity (which moves only a coupon's
purchase) at the population's mean, as no model on this history can know it (bench_offer_rank.py, sixth session):
the knowable bound:

- click: `response.p_click`;
- convert after click: P(caused buy | click) (`response.p_buy`) plus the organic purchase the arm's label absorbs,
  1 - (1 - p_buy) x (1 - p_organic within the 7-day window);
- control: `response.p_organic` within the window;
- the after-click lift as a whole (convert - control): p_buy x (1 - p_organic), so that neither side mixes the
  truth's organic level with the model's;
- every offer arm (click and after-click lift): the truth's own ranking up to the churn boost the product adds.

The engage arm P(open | channel, hour) is a factor per (user, channel): at the NBA's channel it multiplies every
offer alike and cannot change the offer (0 by construction); its ranking quality is reported across a user's
channels instead. Each ranking's chosen offer is valued by the truth (expected incremental revenue at half past the
NBA's hour), in all and by the kinds of the two offers. The arms' ranking quality within a user: Spearman, across a
send's eligible offers, of each arm's estimate with the truth's stage probability (the control arm: across users).
With --train-rows, each arm's training rows and positives in a fit of the home's data as `nextbest train uplift`
builds them (the contact log joined through Feast, the 20 % holdout left out). With --other DIR (a copy of the same
home with the uplift retrained), the NBA replayed end to end (`--seeds`) with each arm in turn from the other fit:
which arm carries a retrain's spread. With --refit-click SEEDS, the champion's click arm refitted by each recipe of
CLICK_RECIPES (--click-recipes) once per fit seed, every other arm the champion's: on each --seeds replay's recorded
sends the offers re-ranked with it and valued by the truth, with its within-send Spearman; --end-to-end RECIPES also
replays the NBA with them; each recipe paired with "main" by fit seed. The truth is read only here.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import platform
import time

import numpy as np
import pandas as pd
from bench_history_gap import Recorded, half_past, offer_values, sampled

from nextbest.features.settings import Settings
from nextbest.pipelines.evaluate import champion_set, latest_features, operator_rules, policy_scores
from nextbest.serving import engine
from nextbest.simulation import response
from nextbest.simulation.beliefs import history_beliefs
from nextbest.simulation.replay import ReplayConfig, replay
from nextbest.training.compiled import Rows


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", required=True)
    parser.add_argument("--users", type=int, default=3_000)
    parser.add_argument("--seed", type=int, default=11, help="the replay's seed: its user sample and draws")
    parser.add_argument("--train-rows", action="store_true", help="also count each arm's training rows (a Feast join)")
    parser.add_argument("--other", help="a second home (the same data, another fit of the funnel): the NBA replayed with "
                                        "each arm in turn taken from its uplift champion")
    parser.add_argument("--seeds", default="11,5", help="the replays' seeds for --other and --refit-convert")
    parser.add_argument("--refit-convert", default="", help="fit seeds (e.g. 1,2,3): the NBA with the champion's "
                                                            "after-click arm refitted by each recipe with each seed")
    parser.add_argument("--refit-click", default="", help="fit seeds (e.g. 1,2,3): the champion's click arm refitted by "
                                                          "each recipe in --click-recipes with each seed, scored on the "
                                                          "NBA's recorded sends of every --seeds replay")
    parser.add_argument("--click-recipes", default=",".join(CLICK_RECIPES), help="the click arm's recipes for --refit-click")
    parser.add_argument("--end-to-end", default="", help="with --refit-click: these recipes (comma-separated) also with "
                                                         "the NBA replayed end to end on --seeds")
    parser.add_argument("--bags", type=int, default=0, help="with --refit-convert: also the pooled arm as the mean of "
                                                            "this many fits")
    return parser.parse_args()


def funnel_arms(models: engine.ModelSet, users: engine.Users, config, hours: np.ndarray) -> dict[str, np.ndarray]:
    """The uplift champion's arms per user as serving scores them (its compiled arms): engage (U, C) at `hours`,
    click and convert (U, O), control (U,)."""
    funnel = models.compiled["uplift"]
    if not hasattr(funnel, "fitted") or "click" not in funnel.fitted:
        raise SystemExit("this bench needs a funnel uplift champion with a click arm (the demo's)")
    columns, grid = engine.user_columns(users), engine.request_grid(config)
    n_u, n_c = hours.shape
    n_o = len(config.offers)
    u = np.repeat(np.arange(n_u), n_o)
    offer_rows = Rows(columns, u, np.tile(np.arange(n_o) * n_c, n_u), hours[u, 0].astype(float), grid)
    out = {arm: funnel.fitted[arm].predict(offer_rows).reshape(n_u, n_o) for arm in ("click", "convert")}
    u = np.repeat(np.arange(n_u), n_c)
    c = np.tile(np.arange(n_c), n_u)
    out["engage"] = funnel.fitted["engage"].predict(Rows(columns, u, c, hours[u, c].astype(float), grid)).reshape(n_u, n_c)
    everyone = np.arange(n_u)
    out["control"] = funnel.fitted["control"].predict(Rows(columns, everyone, np.zeros(n_u, dtype=np.int64),
                                                            hours[:, 0].astype(float), grid))
    return out


def row_spearman(a: np.ndarray, b: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Spearman of a and b per row over the entries `ok` (NaN for rows with fewer than 3 or a constant side)."""
    ra = pd.DataFrame(np.where(ok, a, np.nan)).rank(axis=1).to_numpy()
    rb = pd.DataFrame(np.where(ok, b, np.nan)).rank(axis=1).to_numpy()
    ra, rb = ra - np.nanmean(ra, axis=1, keepdims=True), rb - np.nanmean(rb, axis=1, keepdims=True)
    den = np.sqrt(np.nansum(ra**2, axis=1) * np.nansum(rb**2, axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((ok.sum(axis=1) > 2) & (den > 0), np.nansum(ra * rb, axis=1) / den, np.nan)


def stages(period, s, rows: np.ndarray, h: np.ndarray) -> dict[str, np.ndarray]:
    """A believer's (the truth's or the history oracle's) stage probabilities for every offer of sends `rows`."""
    n_o = len(period.offers)
    send = half_past(period, s, rows, h)
    every = lambda f: np.stack([f(np.full(len(rows), o)) for o in range(n_o)], axis=1)  # noqa: E731
    click = every(lambda o: response.p_click(period.truth, period.offers, rows, o))
    buy = every(lambda o: response.p_buy(period.truth, period.offers, rows, o, s.recent[rows], send))
    organic = response.p_organic(period.truth, rows, send)[:, None]
    return {"click": click, "buy": buy, "organic": organic, "convert": 1 - (1 - buy) * (1 - organic)}


def arm_rows(settings: Settings) -> pd.DataFrame:
    """Each funnel arm's training rows and positives as `nextbest train uplift` builds them on this home."""
    from nextbest.features.store import training_store
    from nextbest.training import uplift
    from nextbest.training.datasets import Sampling, split
    from nextbest.training.jobs import ON_DISK, TrainConfig, model_config, read_raw_tables, shared_joins

    config = TrainConfig(seed=settings.seed, sample_rows=settings.train_sample_rows)
    store = training_store(settings)
    data = uplift.build_frame(store, read_raw_tables(settings, ON_DISK), model_config("uplift", config),
                              shared_joins(store, ["uplift"], Sampling(config.sample_rows, config.seed)))
    train, _ = split(data, config.holdout, config.seed)
    arms = uplift.funnel_rows(train)
    if "click" in arms:  # the after-click arm's rows when pooled (UpliftConfig.pooled_convert)
        arms["convert, pooled: the opened rows"] = (arms["click"][0], train.y[arms["click"][0]])
    return pd.DataFrame([{"arm": arm, "rows": int(mask.sum()), "positives": int(np.sum(y)), "rate": float(np.mean(y))}
                         for arm, (mask, y) in arms.items()])


@dataclasses.dataclass
class Sends:
    """The NBA's replayed sends (one row each) with every eligible offer's truth value and stage probabilities."""

    models: engine.ModelSet
    users: engine.Users
    scores: object  # evaluate.PolicyScores
    period: object
    believed: object
    arms: dict[str, np.ndarray]  # funnel_arms over the period's users
    weight: np.ndarray  # (U, O) value x lever x churn boost
    rows: np.ndarray  # user of each send
    first: np.ndarray  # first send of the user's week
    ok: np.ndarray  # (S, O) eligible
    worth: np.ndarray  # (S, O) the truth's expected incremental revenue at the NBA's channel and hour
    offer: np.ndarray  # the NBA's offer
    ev: np.ndarray  # (S, O) the product's EV at the NBA's channel
    truth: dict[str, np.ndarray]
    belief: dict[str, np.ndarray]
    unknown_ps: dict[str, np.ndarray]  # the beliefs with every user's price sensitivity at the population's mean

    def pick(self, key: np.ndarray) -> np.ndarray:
        """The eligible offer with the highest `key` (S, O) per send."""
        return np.where(self.ok, key, -np.inf).argmax(axis=1)

    def value(self, offer: np.ndarray) -> np.ndarray:
        return self.worth[np.arange(len(self.rows)), offer]


def record(settings: Settings, users: int, config: ReplayConfig) -> Sends:
    """Replay the NBA on `users` sampled users (the replay's seed) and record its sends."""
    tables, period = sampled(settings, config, users)
    models = champion_set(settings)
    features = latest_features(settings, period.user_ids)
    scores = policy_scores(settings, period, models, users=features)
    nba = scores.policy("nba (uplift)", True)
    arms = funnel_arms(models, features, scores.config, scores.hours)
    believed = dataclasses.replace(period, truth=history_beliefs(period.truth, tables, period.user_ids, period.start))
    ps = believed.truth.price_sensitivity
    unknown = dataclasses.replace(believed, truth=dataclasses.replace(believed.truth, price_sensitivity=np.full_like(
        ps, ps.mean())))
    offers = scores.config.offers
    value = np.array([o.value * o.lever for o in offers])
    retention = np.array([o.kind == "retention" for o in offers])
    weight = value[None, :] * (1.0 + scores.config.churn_boost * scores.p_churn[:, None] * retention[None, :])  # (U, O)
    log = []

    def record(s, a, rows):
        c, h, n_o = a.channel[rows], a.hour[rows], s.eligible.shape[1]
        log.append({"first": np.full(len(rows), s.day % 7 == 0), "rows": rows, "offer": a.offer[rows],
                    "ok": s.eligible[rows], "ev": nba.ev[rows, :, c] if len(rows) else np.zeros((0, n_o)),
                    "worth": offer_values(period, s, rows, c, h), "truth": stages(period, s, rows, h),
                    "belief": stages(believed, s, rows, h), "unknown_ps": stages(unknown, s, rows, h)})

    replay(period, Recorded(nba, record), config)
    get = lambda key: np.concatenate([entry[key] for entry in log])  # noqa: E731
    both = {who: {k: np.concatenate([e[who][k] for e in log]) for k in log[0][who]} for who in ("truth", "belief", "unknown_ps")}
    return Sends(models, features, scores, period, believed, arms, weight, get("rows"), get("first"), get("ok"),
                 get("worth"), get("offer"), get("ev"), both["truth"], both["belief"], both["unknown_ps"])


def nba_with(settings: Settings, world, base: engine.ModelSet, arms: dict, seeds: list[int], users: int) -> dict:
    """The NBA's revenue per replay seed with the base set's uplift champion rebuilt from `arms` (a funnel's fitted
    arms by name)."""
    from nextbest.serving.config import load_config
    from nextbest.simulation.replay import Rules
    from nextbest.training.registry import Champion
    from nextbest.training.scorers import FunnelUpliftScorer

    a = base.models["uplift"]
    mixed = FunnelUpliftScorer(arms["engage"], arms["convert"], arms["control"], a.model.feature_service,
                               click=arms["click"])
    models = engine.ModelSet({**base.models, "uplift": Champion(a.name, a.version, mixed)}, base.columns).compile()
    rules = Rules.of(load_config(settings.home / "operator.yaml").caps)
    out = {}
    for seed in seeds:
        period = world.sample(users, seed=seed)
        scores = policy_scores(settings, period, models)
        out[f"NBA seed {seed}"] = replay(period, scores.policy("nba (uplift)", True),
                                         ReplayConfig(rules=rules, seed=seed)).metrics["incremental_revenue"]
    return out


def refitted_convert(settings: Settings, fit_seeds: list[int], seeds: list[int], users: int, bags: int = 0) -> pd.DataFrame:
    """The NBA with the home's funnel champion, its after-click arm refitted on the home's training rows by each
    recipe (`UpliftConfig.pooled_convert` False: the clicked rows alone; True: every opened row, clicked an input),
    once per fit seed (the tuning's split, sample and search): the recipe's effect beside the arm's own spread; with
    `bags` > 1 also the pooled arm as the mean of that many fits."""
    from nextbest.features.store import training_store
    from nextbest.pipelines.evaluate import load_period
    from nextbest.training import uplift
    from nextbest.training.datasets import Sampling, split
    from nextbest.training.jobs import ON_DISK, TrainConfig, model_config, read_raw_tables, shared_joins
    from nextbest.training.tabular import FitConfig, fit_booster

    config = TrainConfig(seed=settings.seed, sample_rows=settings.train_sample_rows, trials=5)
    store = training_store(settings)
    data = uplift.build_frame(store, read_raw_tables(settings, ON_DISK), model_config("uplift", config),
                              shared_joins(store, ["uplift"], Sampling(config.sample_rows, config.seed)))
    train, _ = split(data, config.holdout, config.seed)
    rows, frame = uplift.funnel_rows(train), train.frame
    inputs = list(train.features) + list(uplift.OFFER_COLUMNS)
    world, _ = load_period(settings)
    base = champion_set(settings)
    champion = base.models["uplift"].model
    arms = {x: getattr(champion, f"{x}_") for x in champion._fitted}
    out = [{"recipe": "the champion's", "fit seed": np.nan, **nba_with(settings, world, base, arms, seeds, users)}]
    for fit_seed in fit_seeds:
        fit = FitConfig(trials=config.trials, tune_sample=config.tune_sample, seed=fit_seed)
        engaged, clicked = rows["click"]
        for recipe, convert in (
                ("clicked rows alone", lambda: fit_booster(frame[rows["convert"][0]], inputs, rows["convert"][1],  # noqa: B023
                                                           train.feature_service, fit)),  # noqa: B023
                ("pooled: opened rows, clicked an input", lambda: fit_booster(
                    frame[engaged], inputs, train.y[engaged], train.feature_service, fit, stage=clicked))):  # noqa: B023
            out.append({"recipe": recipe, "fit seed": fit_seed,
                        **nba_with(settings, world, base, {**arms, "convert": convert()}, seeds, users)})
        if bags > 1:  # the pooled arm as the mean of `bags` fits (fit seeds fit_seed x 100 + k)
            parts = [fit_booster(frame[engaged], inputs, train.y[engaged], train.feature_service,
                                 FitConfig(trials=config.trials, tune_sample=config.tune_sample, seed=fit_seed * 100 + k),
                                 stage=clicked) for k in range(bags)]
            out.append({"recipe": f"pooled, the mean of {bags} fits", "fit seed": fit_seed,
                        **nba_with(settings, world, base, {**arms, "convert": MeanOf(parts)}, seeds, users)})
    return pd.DataFrame(out)


CLICK_RECIPES = {
    "main": "the engaged rows, the user's whole feature service and the offer's columns (main's recipe, "
            "UpliftConfig.click_inputs='all')",
    "monotone": "main's, the matched affinity (offer_affinity, offer_affinity_rel) monotone increasing",
    "taste only": "the offer's columns and the user's category affinities only (no other user column)",
    "taste + click record": "taste only, and the user's click rate per channel (click_rate_*: a heavy clicker's "
                            "level): uplift.click_columns, UpliftConfig.click_inputs='taste'",
    "additive": "main's inputs, the offer's columns interacting only with the category affinities (LightGBM "
                "interaction constraints): the user's other columns set a level, the taste ranks the offers",
    "additive + monotone": "additive, the matched affinity monotone increasing",
    "offer level": "main's inputs, the offer's identity and category each a level of its own (interacting with "
                   "nothing): a user's offers differ otherwise only through the matched affinity, the offer's kind and value",
    "offer level + monotone": "offer level, the matched affinity monotone increasing",
    "no offer id": "main's without offer_id (the offer as its category, kind and value)",
    "contacted rows": "every contacted row, opened an input (StagedBooster, predicted opened)",
}


@contextlib.contextmanager
def fixed_params(extra: dict):
    """LightGBM parameters added to every trial and the refit of the fits inside (this bench's screening only)."""
    from nextbest.training import tuning

    saved = dict(tuning.BASE_PARAMS)
    tuning.BASE_PARAMS.update(extra)
    try:
        yield
    finally:
        tuning.BASE_PARAMS.clear()
        tuning.BASE_PARAMS.update(saved)


def fit_click(recipe: str, train, rows: dict, fit) -> object:
    """The click arm P(click | engaged, offer) fitted by `recipe` (CLICK_RECIPES) on the training set's rows."""
    from nextbest.training import uplift
    from nextbest.training.encoding import fit_encoder
    from nextbest.training.tabular import fit_booster

    frame = train.frame
    engaged, clicked = rows["click"]
    offer = list(uplift.OFFER_COLUMNS)
    user = list(train.features)
    inputs = user + offer
    if recipe == "taste only":
        inputs = [c for c in user if c.startswith("aff_")] + offer
    elif recipe == "taste + click record":  # UpliftConfig.click_inputs="taste"
        inputs = uplift.click_columns(user, "taste") + offer
    elif recipe == "no offer id":
        inputs = [c for c in inputs if c != "offer_id"]
    if recipe == "contacted rows":
        treated = rows["engage"][0]
        click = (frame["clicked"].to_numpy() == 1) if "clicked" in frame else np.zeros(len(frame), bool)
        return fit_booster(frame[treated], inputs, click[treated].astype("int64"), train.feature_service, fit,
                           stage=engaged[treated].astype("int64"))
    columns = list(fit_encoder(frame[engaged].head(2_000), inputs).columns)
    extra: dict = {}
    if "monotone" in recipe:
        extra["monotone_constraints"] = [1 if c in ("offer_affinity", "offer_affinity_rel") else 0 for c in columns]
    if "offer level" in recipe:
        alone = [i for i, c in enumerate(columns) if c in ("offer_id", "offer_category")]
        extra["interaction_constraints"] = [[i] for i in alone] + [[i for i in range(len(columns)) if i not in alone]]
    if "additive" in recipe:
        taste = [i for i, c in enumerate(columns) if c in offer or c.startswith("aff_") or c.startswith("offer_affinity")]
        rest = [i for i, c in enumerate(columns) if i not in taste]
        extra["interaction_constraints"] = [taste, rest]
    with fixed_params(extra):
        return fit_booster(frame[engaged], inputs, clicked, train.feature_service, fit)


def product_offers(sends: Sends) -> np.ndarray:
    """(S, O): a send's eligible offers of one category each (those with an affinity column aff_<category>)."""
    cats = sends.period.offers["category"].astype(str).to_numpy()
    return sends.ok & np.array([f"aff_{c}" in sends.users for c in cats])[None, :]


def champion_rho(sends: Sends) -> float:
    """The champion's click arm: mean within-send Spearman with the truth's click on the recorded sends."""
    return float(np.nanmean(row_spearman(sends.arms["click"][sends.rows], sends.truth["click"], sends.ok)))


def refitted_click(settings: Settings, recorded: dict, fit_seeds: list[int], recipes: list[str], end_to_end: list[str],
                   users: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The champion's click arm refitted by each recipe once per fit seed on the home's training rows (as `nextbest
    train uplift` builds them), every other arm the champion's: on each replay seed's recorded NBA sends (`recorded`:
    seed -> Sends) the eligible offers re-ranked by the product's EV with that click arm at the NBA's channel and
    hour and the chosen offer valued by the truth, with the arm's within-send Spearman against the truth's click; the
    recipes in `end_to_end` also with the NBA replayed end to end. Returns (per fit, importance of the matched
    affinity)."""
    from nextbest.features.store import training_store
    from nextbest.pipelines.evaluate import load_period
    from nextbest.training import uplift
    from nextbest.training.datasets import Sampling, split
    from nextbest.training.jobs import ON_DISK, TrainConfig, model_config, read_raw_tables, shared_joins
    from nextbest.training.registry import Champion
    from nextbest.training.scorers import FunnelUpliftScorer
    from nextbest.training.tabular import FitConfig

    config = TrainConfig(seed=settings.seed, sample_rows=settings.train_sample_rows, trials=5)
    store = training_store(settings)
    data = uplift.build_frame(store, read_raw_tables(settings, ON_DISK), model_config("uplift", config),
                              shared_joins(store, ["uplift"], Sampling(config.sample_rows, config.seed)))
    train, _ = split(data, config.holdout, config.seed)
    rows = uplift.funnel_rows(train)
    world, _ = load_period(settings)
    base = champion_set(settings)
    champion = base.models["uplift"].model
    arms = {x: getattr(champion, f"{x}_") for x in champion._fitted}
    out, importance = [], []
    for fit_seed in fit_seeds:
        fit = FitConfig(trials=config.trials, tune_sample=config.tune_sample, seed=fit_seed)
        for recipe in recipes:
            c0 = time.process_time()
            click = fit_click(recipe, train, rows, fit)
            fit_cpu = time.process_time() - c0
            gains = pd.Series(click.importance())
            importance.append({"recipe": recipe, "fit seed": fit_seed, **(gains / gains.sum()).reindex(
                ["offer_affinity", "offer_affinity_rel", "offer_id", "offer_category", "offer_kind", "offer_value"]).to_dict(),
                "aff_* (all)": float(gains[[c for c in gains.index if c.startswith("aff_")]].sum() / gains.sum())})
            mixed = FunnelUpliftScorer(arms["engage"], arms["convert"], arms["control"],
                                       base.models["uplift"].model.feature_service, click=click)
            a = base.models["uplift"]
            models = engine.ModelSet({**base.models, "uplift": Champion(a.name, a.version, mixed)}, base.columns).compile()
            row = {"recipe": recipe, "fit seed": fit_seed, "fit CPU-s": fit_cpu}
            for seed, sends in recorded.items():
                new = funnel_arms(models, sends.users, sends.scores.config, sends.scores.hours)
                r = sends.rows
                key = new["click"][r] * (sends.arms["convert"][r] - sends.arms["control"][r][:, None]) * sends.weight[r]
                row[f"sends {seed}"] = sends.value(sends.pick(key)).sum()
                row[f"rho {seed}"] = np.nanmean(row_spearman(new["click"][r], sends.truth["click"], sends.ok))
                row[f"rho products {seed}"] = np.nanmean(row_spearman(new["click"][r], sends.truth["click"],
                                                                      product_offers(sends)))
            if recipe in end_to_end:
                row.update(nba_with(settings, world, base, {**arms, "click": click}, list(recorded), users))
            out.append(row)
    return pd.DataFrame(out), pd.DataFrame(importance)


class MeanOf:
    """The mean of several fitted arms' predictions (this bench's stand-in for an averaged arm)."""

    def __init__(self, parts: list):
        self.parts, self.params_ = parts, {}

    def predict(self, frame) -> np.ndarray:
        return np.mean([p.predict(frame) for p in self.parts], axis=0)

    def compile(self, feature_columns, request):
        return MeanOf([p.compile(feature_columns, request) for p in self.parts])


def swapped_arms(settings: Settings, other: Settings, seeds: list[int], users: int) -> pd.DataFrame:
    """The NBA (the product's EV and rules) replayed with the home's funnel champion, then with each of its arms in
    turn, then every arm, taken from `other`'s funnel champion (another fit on the same data): which arm's fit moves
    the NBA's revenue from one retrain to the next."""
    from nextbest.pipelines.evaluate import load_period

    world, _ = load_period(settings)
    mine, theirs = champion_set(settings), champion_set(other)
    a, b = mine.models["uplift"], theirs.models["uplift"]
    out = []
    for arm in [None, *a.model._fitted, "every arm"]:
        fitted = {x: getattr(b.model if arm in (x, "every arm") else a.model, f"{x}_") for x in a.model._fitted}
        out.append({"arms": f"{a.name}/{a.version}" if arm is None else f"{arm} from {b.name}/{b.version}",
                    **nba_with(settings, world, mine, fitted, seeds, users)})
    table = pd.DataFrame(out)
    for seed in seeds:
        table[f"change seed {seed}"] = table[f"NBA seed {seed}"] / table.loc[0, f"NBA seed {seed}"] - 1
    return table


def main() -> None:
    args = arguments()
    started, cpu0 = time.perf_counter(), time.process_time()
    settings = Settings(home=args.home)
    config = ReplayConfig(rules=operator_rules(settings), seed=args.seed)
    sends = record(settings, args.users, config)
    models, scores, period, arms = sends.models, sends.scores, sends.period, sends.arms
    rows, ok, worth, nba_offer, ev, first = sends.rows, sends.ok, sends.worth, sends.offer, sends.ev, sends.first
    truth, belief = sends.truth, sends.belief
    value = np.array([o.value * o.lever for o in scores.config.offers])
    click, convert = arms["click"][rows], arms["convert"][rows]
    control, w = arms["control"][rows][:, None], sends.weight[rows]

    def keys(src: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        after = src["buy"] * (1 - src["organic"])  # the after-click lift: caused purchases the organic ones do not pre-empt
        return {"click": src["click"] * (convert - control) * w,
                "convert after click": click * (src["convert"] - control) * w,
                "control": click * (convert - src["organic"]) * w,
                "after-click lift (convert - control)": click * after * w,
                "click + after-click lift (every offer arm)": src["click"] * after * w}

    rankings = {"the product's EV (model)": click * (convert - control) * w}
    rankings.update({f"{k} <- truth": v for k, v in keys(truth).items()})
    rankings.update({f"{k} <- history oracle's beliefs": v for k, v in keys(belief).items()})
    rankings.update({f"{k} <- beliefs, price sensitivity unknown": v for k, v in keys(sends.unknown_ps).items()
                     if k in ("convert after click", "after-click lift (convert - control)",
                              "click + after-click lift (every offer arm)")})
    i = np.arange(len(rows))
    pick = {name: np.where(ok, key, -np.inf).argmax(axis=1) for name, key in rankings.items()}
    pick["the history oracle's offer (its own valuation)"] = np.where(
        ok, belief["click"] * belief["buy"] * value, -np.inf).argmax(axis=1)  # p_open is the same for every offer
    pick["the truth's best offer"] = np.where(ok, worth, -np.inf).argmax(axis=1)
    model_pick = pick["the product's EV (model)"]
    same_as_replay = float((model_pick == nba_offer).mean())
    ev_pick = np.where(ok, ev, -np.inf).argmax(axis=1)
    base = worth[i, model_pick]
    gap = worth[i, pick["the history oracle's offer (its own valuation)"]].sum() - base.sum()
    table = pd.DataFrame([{"ranking": name, "truth's value": worth[i, p].sum(),
                           "first sends": worth[i, p][first].sum(), "later sends": worth[i, p][~first].sum(),
                           "gain over the model": worth[i, p].sum() - base.sum(),
                           "share of the history oracle's offer gain": (worth[i, p].sum() - base.sum()) / gap,
                           "same offer as the model": (p == model_pick).mean()} for name, p in pick.items()])
    kind = period.offers["kind"].to_numpy()
    by_kind = []
    for name, p in pick.items():
        if name == "the product's EV (model)":
            continue
        moved = p != model_pick
        frame = pd.DataFrame({"model's offer": kind[model_pick[moved]], "its offer": kind[p[moved]],
                              "gain": worth[i, p][moved] - base[moved]})
        summary = frame.groupby(["model's offer", "its offer"])["gain"].agg(["size", "sum"])
        by_kind.append(summary["sum"].rename(name))
    kinds = pd.concat(by_kind, axis=1).fillna(0.0).T
    kinds = kinds[sorted(kinds.columns)]
    kinds.columns = [f"{a} -> {b}" for a, b in kinds.columns]

    t_after = truth["buy"] * (1 - truth["organic"])
    quality = {
        "click (within a send's offers)": row_spearman(click, truth["click"], ok),
        "convert after click": row_spearman(convert, truth["convert"], ok),
        "after-click lift (convert - control)": row_spearman(convert - control, t_after, ok),
        "lift = click x (convert - control)": row_spearman(click * (convert - control), truth["click"] * t_after, ok),
        "EV's offer ranking (lift x value x boost) against the truth's value": row_spearman(click * (convert - control) * w,
                                                                                            worth, ok),
        "history oracle: click": row_spearman(belief["click"], truth["click"], ok),
        "history oracle: after-click lift": row_spearman(belief["buy"] * (1 - belief["organic"]), t_after, ok),
        "history oracle: value": row_spearman(belief["click"] * belief["buy"] * value, worth, ok),
    }
    # Among a send's category offers only (coupons match no category): the click arm, the history oracle's click and
    # the user's matched affinity feature itself (aff_<the offer's category>, the posterior share the arm is given).
    cats = period.offers["category"].astype(str).to_numpy()
    product = product_offers(sends)
    aff = np.stack([np.asarray(sends.users[f"aff_{c}"], dtype=float)[rows] if f"aff_{c}" in sends.users
                    else np.full(len(rows), np.nan) for c in cats], axis=1)
    quality.update({
        "category offers only: click arm": row_spearman(click, truth["click"], product),
        "category offers only: history oracle's click": row_spearman(belief["click"], truth["click"], product),
        "category offers only: the affinity feature aff_<category> itself": row_spearman(aff, truth["click"], product),
    })
    # A send whose estimate is the same for every offer (a user without categorised events: the posterior is the
    # prior) has no Spearman (NaN, left out of the mean): the history oracle's click is such on a quarter of the sends,
    # the model's almost never, so the two means above are over different sends. The same sends for both:
    informed = np.isfinite(quality["history oracle: click"])
    informed_products = np.isfinite(quality["category offers only: history oracle's click"])
    for name, mask in (("click (within a send's offers)", informed), ("history oracle: click", informed),
                       ("category offers only: click arm", informed_products),
                       ("category offers only: history oracle's click", informed_products)):
        quality[f"{name}, sends where the beliefs differ between offers"] = np.where(mask, quality[name], np.nan)
    quality["click arm, sends where the beliefs are the same for every offer"] = np.where(
        informed, np.nan, quality["click (within a send's offers)"])
    start = np.full(period.n_users, period.start.value)
    u = np.arange(period.n_users)
    p_open_truth = np.stack([response.p_open(period.truth, u, np.full(period.n_users, c), scores.hours[:, c].astype(float),
                                             np.zeros(period.n_users), start) for c in range(scores.hours.shape[1])], 1)
    engage_rho = row_spearman(arms["engage"], p_open_truth, np.ones_like(p_open_truth, dtype=bool))
    control_rho = pd.Series(arms["control"]).corr(pd.Series(response.p_organic(period.truth, u, start)), method="spearman")
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
    load = " ".join(open("/proc/loadavg").read().split()[:3])
    print(f"{platform.node()} {pd.Timestamp.now(tz='UTC'):%Y-%m-%d %H:%M}, {args.users} users, 14 days, {config.rules}; "
          f"uplift {models.versions().get('uplift')}; wall {wall:.0f} s, CPU {cpu:.0f} s, load {load}")
    print(f"\n{len(rows):,} sends ({first.sum():,} first of a user's week); the model's ranking reproduces the replay's "
          f"offer on {same_as_replay:.1%} of them (the product's EV's own argmax: {(ev_pick == nba_offer).mean():.1%}); "
          f"the history oracle's offer gains {gap:,.0f} over the NBA's at its channel and hour")
    print("\neach ranking's chosen offer at the NBA's channel and hour, valued by the truth (expected incremental revenue)")
    print(table.to_markdown(index=False, floatfmt=",.3f"))
    print("\ngain over the model's offer where the ranking moves it, by the kinds of the two offers")
    print(kinds.to_markdown(floatfmt=",.0f"))
    print("\nranking quality within a send's eligible offers: mean Spearman with the truth (all sends / later sends)")
    print(pd.DataFrame([{"estimate": k, "all": np.nanmean(v), "later sends": np.nanmean(v[~first]),
                         "sends with a Spearman": np.isfinite(v).mean()} for k, v in quality.items()])
          .to_markdown(index=False, floatfmt=".3f"))
    print(f"engage arm across a user's channels at the model's hours (period start): mean Spearman {np.nanmean(engage_rho):.3f}; "
          f"control arm across users: Spearman {control_rho:.3f}")
    if args.train_rows:
        t0, c0 = time.perf_counter(), time.process_time()
        counts = arm_rows(settings)
        print(f"\neach arm's training rows (the home's data as `nextbest train uplift` builds it, holdout left out; "
              f"{time.perf_counter() - t0:.0f} s wall, {time.process_time() - c0:.0f} CPU-s)")
        print(counts.to_markdown(index=False, floatfmt=",.4f"))
    if args.other:
        t0, c0 = time.perf_counter(), time.process_time()
        swapped = swapped_arms(settings, Settings(home=args.other), [int(x) for x in args.seeds.split(",")], args.users)
        print(f"\nthe NBA with each funnel arm in turn from {args.other}'s champion (the product's EV and rules; "
              f"{time.perf_counter() - t0:.0f} s wall, {time.process_time() - c0:.0f} CPU-s)")
        print(swapped.to_markdown(index=False, floatfmt=",.4f"))
    if args.refit_click:
        t0, c0 = time.perf_counter(), time.process_time()
        seeds = [int(x) for x in args.seeds.split(",")]
        recorded = {args.seed: sends}
        for seed in seeds:
            if seed not in recorded:
                recorded[seed] = record(settings, args.users, dataclasses.replace(config, seed=seed))
        recorded = {seed: recorded[seed] for seed in seeds}
        recipes = [r.strip() for r in args.click_recipes.split(",")]
        e2e = [r.strip() for r in args.end_to_end.split(",") if r.strip()]
        fits, importance = refitted_click(settings, recorded, [int(x) for x in args.refit_click.split(",")], recipes,
                                          e2e, args.users)
        print(f"\nthe champion's click arm refitted by each recipe ({time.perf_counter() - t0:.0f} s wall, "
              f"{time.process_time() - c0:.0f} CPU-s); 'sends S': the truth's value of the offers the EV picks on replay "
              f"seed S's recorded NBA sends with that click arm; 'rho S': its mean within-send Spearman with the "
              f"truth's click (the champion's: {', '.join(f'{champion_rho(s):.3f}' for s in recorded.values())})")
        for r in recipes:
            print(f"- {r}: {CLICK_RECIPES[r]}")
        print(fits.to_markdown(index=False, floatfmt=",.3f"))
        print("\nshare of the arm's gain importance")
        print(importance.groupby("recipe", sort=False).mean(numeric_only=True).drop(columns="fit seed")
              .to_markdown(floatfmt=".3f"))
        cols = [c for c in fits.columns if c.startswith("sends ") or c.startswith("rho ") or c.startswith("NBA seed")]
        for r in recipes:
            if r == "main":
                continue
            print(f"\n{r} - main, paired by fit seed: mean [95 % interval]")
            for col in cols:
                pair = fits.pivot(index="fit seed", columns="recipe", values=col)
                if r not in pair or pair[r].isna().all() or pair["main"].isna().all():
                    continue
                diff = pair[r] - pair["main"]
                half = 1.96 * diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else np.nan
                print(f"  {col}: {diff.mean():+,.3f} [{diff.mean() - half:+,.3f}, {diff.mean() + half:+,.3f}]"
                      + (f" ({diff.mean() / pair['main'].mean():+.2%})" if not col.startswith("rho") else ""))
    if args.refit_convert:
        t0, c0 = time.perf_counter(), time.process_time()
        seeds = [int(x) for x in args.seeds.split(",")]
        refits = refitted_convert(settings, [int(x) for x in args.refit_convert.split(",")], seeds, args.users,
                                  args.bags)
        print(f"\nthe NBA with the champion's after-click arm refitted by each recipe ({time.perf_counter() - t0:.0f} s "
              f"wall, {time.process_time() - c0:.0f} CPU-s)")
        print(refits.to_markdown(index=False, floatfmt=",.1f"))
        for seed in seeds:
            col = f"NBA seed {seed}"
            pair = refits.dropna(subset=["fit seed"]).pivot(index="fit seed", columns="recipe", values=col)
            alone = pair["clicked rows alone"]
            diff = pair["pooled: opened rows, clicked an input"] - alone  # per fit seed
            half = 1.96 * diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else np.nan
            print(f"seed {seed}: pooled - clicked rows alone, paired by fit seed: {diff.mean():+,.1f} "
                  f"[{diff.mean() - half:+,.1f}, {diff.mean() + half:+,.1f}] ({diff.mean() / alone.mean():+.2%}); "
                  f"the clicked-rows recipe's own spread over fit seeds: sd {alone.std(ddof=1):,.1f}")


if __name__ == "__main__":
    main()
