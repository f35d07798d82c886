"""Uplift: P(convert | contacted) - P(convert | not contacted), from LightGBM meta-learners on the contact log.

Five learners are candidates (`LEARNERS`); with `learner="auto"` (the default) the default learner (the funnel one
where the log tracks opens, else the S-learner) is refitted on all rows unless another candidate's cross-fitted
per-offer Qini AUC is surely above the S-learner's, paired on the same folds, offers and rows (the lower end of a
bootstrap interval of the gap above 0), and then the best of those (`choose_learner`, `paired_gaps`, `pick_learner`): on a log whose heterogeneity no learner can confirm, a choice by
the highest point estimate picked by noise (benchmarks/RESULTS.md, Thornton).
- "s": one model over user and action, control rows with no action (`SLearnerScorer`); also the reference the
  others are paired against (benchmarks/bench_uplift.py);
- "t": one model per arm (`UpliftScorer`);
- "x": the X-learner, imputed effects from the other arm's model, one regression (`EffectScorer`);
- "dr": the doubly robust (DR-)learner, one regression on cross-fitted AIPW pseudo-outcomes (`EffectScorer`);
- "funnel": the funnel learner below, a candidate only when the log tracks opens.

The funnel learner follows the funnel a contact works through (`FunnelUpliftScorer`): a contact can only
cause a purchase once it is opened and its offer clicked, so the uplift is

    P(open | user, channel, hour) x P(click | opened, user, offer) x (P(convert | clicked, user, offer) - P(convert | not contacted, user))

Each arm is fitted on plenty of rows (all contacted rows, the opened rows, the opened rows again for the after-click
arm with whether each was clicked as an input, the control rows), instead of the difference of two conversion
models that both mostly learn the organic rate. Without click tracking (no `clicked_at` in the contact log) the click and
conversion stages are one: P(convert | opened, user, offer).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import lightgbm as lgb
import numpy as np
import pandas as pd

from nextbest.features.feature_services import service_name
from nextbest.training.datasets import (
    REQUEST_COLUMNS,
    SharedJoins,
    TrainingSet,
    contact_frame,
    service_features,
)
from nextbest.training.encoding import fit_encoder
from nextbest.training.metrics import (
    _metric_name,
    fold_interval,
    per_offer_uplift_metrics,
    qini_auc_replicates,
    summarise_offers,
)
from nextbest.training.scorers import (
    S_ACTION_COLUMNS,
    AveragedBooster,
    BoosterScorer,
    EffectScorer,
    FunnelUpliftScorer,
    SLearnerScorer,
    UpliftScorer,
)
from nextbest.training.shrinkage import (
    MARGIN_Z,
    STRENGTHS,
    Shrinkage,
    average_effects,
    choose_strength,
    greedy_actions,
    shrunk,
)
from nextbest.training.tabular import FitConfig, fit_booster
from nextbest.training.tuning import BASE_PARAMS

__all__ = ["UpliftConfig", "UpliftScorer", "EffectScorer", "SLearnerScorer", "FunnelUpliftScorer", "OFFER_COLUMNS", "click_columns", "ENGAGE_COLUMNS",
           "LEARNERS", "NO_CONTACT", "build_frame", "fit", "fit_learner", "fit_arm", "parse_arm_fits", "FUNNEL_ARMS", "ARM_FITS", "funnel_rows", "candidates", "choose_learner", "pick_learner",
           "paired_gaps", "selection_table", "REFERENCE", "offer_scores",
           "evaluate", "paired_qini", "fit_shrinkage", "shrinks", "action_names", "frame_actions", "logged_actions", "action_draws", "action_grid", "action_rows"]

# Request columns each funnel arm reads: opening depends on the channel and hour, converting after an open on the offer.
ENGAGE_COLUMNS: tuple[str, ...] = ("channel", "local_hour")
OFFER_COLUMNS: tuple[str, ...] = ("offer_id", "offer_category", "offer_kind", "offer_value")
_MIN_CLICKS = 200  # fewer tracked clicks than this: one stage from open to conversion
FUNNEL_ARMS: tuple[str, ...] = ("engage", "click", "convert", "control")  # the funnel's arms, in the order they are fitted
# Fits averaged per funnel arm by default (`UpliftConfig.arm_fits`; an arm not named: one fit): see the field.
ARM_FITS: dict[str, int] = {"control": 3}


@dataclass(frozen=True)
class UpliftConfig:
    """Label window and tuning budget (each arm is tuned separately)."""

    window_days: int = 7
    fit: FitConfig = field(default_factory=FitConfig)
    learner: str = "auto"  # "auto" (`pick_learner`: funnel with tracked opens, else s, unless another is surely better) or one of LEARNERS
    folds: int = 3  # cross-fitting folds (by user) for the automatic choice
    select_rounds: int = 100  # boosting rounds per model while choosing (the refit of the chosen one is tuned)
    select_rows: int = 20_000  # rows (whole users, seeded sample) the choice is cross-fitted on: bounds its cost
    # Fit how far each user's uplift may leave its action's average effect (`fit_shrinkage`), which decisions then use.
    # None (default) = automatic: on for a log of at most `shrink_max_actions` actions (no contact included: the shape
    # of a randomised experiment, where the argmax lost to the best fixed offer), off for a targeted log of many
    # actions: on the demo world's (60 actions) the out-of-sample choice of strength is too noisy and came out 0,
    # which would take the targeting out of every decision (benchmarks/RESULTS.md).
    shrinkage: bool | None = None
    shrink_max_actions: int = 8
    margin_z: float = MARGIN_Z  # the policy leaves the best fixed action only for a gain this many standard errors above 0
    min_action_rows: int = 10  # an action gets a shrinkage center when logged at least this often
    seed: int = 7
    # The funnel's after-click arm P(convert | clicked, offer) fitted on every opened row, whether it was clicked an
    # input (`fit_booster(stage=...)`, `StagedBooster`), not on the clicked rows alone (10k of 227k contacts on the demo
    # world): the opened rows left unclicked teach it each user's organic level. False: the clicked rows alone (the
    # recipe before issue 16's ninth session). See benchmarks/RESULTS.md.
    pooled_convert: bool = True
    # The user's features the funnel's click arm P(click | opened, offer) reads (`click_columns`): "all" (default), or
    # "taste": only the category affinities and click rates (10k clicks on the demo world against ~130 user columns).
    # "taste" is not the default: on the demo world it gained +0.49 / +0.51 % against the demo's older after-click arm
    # but +0.33 % / -0.08 % (interval across 0) beside the pooled one, paired over six fit seeds, and +0.08 / +0.26 %
    # and +0.06 / -0.01 % in two whole retrains (benchmarks/RESULTS.md, "The click arm's offer ranking").
    click_inputs: str = "all"
    # How many seeded fits each funnel arm is the mean of (arm name -> k; an arm not named: one fit). Each fit has its
    # own seed (`fit.seed + 100 i`: its own tuning split and sample, TPE and bagging seed; the first fit is the one-fit
    # arm itself); an arm of k > 1 fits is saved as k LightGBM text models (`AveragedBooster`). Per arm, not one
    # number, because the arms' evidence differs by orders of magnitude (on the demo world ~227k contacts to learn opens
    # on the engage arm, ~10k clicks, 644 control conversions), so what the mean of k fits removes and what it
    # costs (k x the arm's fit, k predicts per scored row in serving) differ per arm. Default: the control arm of 3
    # (issue 16's tenth session: one fit in nine over-estimated a few heavy buyers' organic rate and dropped them), the
    # other arms one fit. Measured in the eleventh session (12 training seeds, demo world): the click, after-click and
    # control arms of 3 ("click=3,convert=3,control=3") gained +0.45 % of the NBA's revenue (interval above 0 on both
    # replays, under the issue's +0.5 % bar) and halved its spread from one retrain to the next, at +50 % of the
    # uplift's training CPU and +0.2-0.4 ms of model work per decision, which the serving budget (already missed) could
    # not be shown to absorb: not the default yet. Averaging the engage arm too added cost, not value. See
    # benchmarks/RESULTS.md, "The control arm averaged over k fits" and "Every funnel arm as the mean of k seeded
    # fits". CLI: `nextbest train uplift --fits` (`parse_arm_fits`).
    arm_fits: dict[str, int] = field(default_factory=lambda: dict(ARM_FITS))

    def __post_init__(self):
        check_arm_fits(self.arm_fits)

    def fits(self, arm: str) -> int:
        """The number of seeded fits the funnel arm `arm` is the mean of."""
        return int(self.arm_fits.get(arm, 1))


def check_arm_fits(arm_fits: dict[str, int]) -> None:
    """ValueError naming what is wrong with a per-arm fit count mapping (an unknown arm, a count below 1)."""
    unknown = sorted(set(arm_fits) - set(FUNNEL_ARMS))
    if unknown:
        raise ValueError(f"arm_fits: unknown funnel arm(s) {', '.join(map(repr, unknown))}; the arms are "
                         f"{', '.join(FUNNEL_ARMS)}")
    for arm, k in arm_fits.items():
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"arm_fits: the {arm} arm's number of fits must be a whole number of at least 1 "
                             f"(1 = one fit), not {k!r}")


MAX_ARM_FITS = 20  # the CLI's bound: each fit costs the arm's whole fit again (and a predict per row in serving)


def parse_arm_fits(text: str) -> dict[str, int]:
    """The CLI's `--fits`: "K" (every funnel arm the mean of K fits) or "ARM=K,..." (the arms named; the others keep
    `ARM_FITS`' default), e.g. "3" or "click=3,convert=3". ValueError with what is wrong and how to write it."""
    how = (f"write K (every arm) or ARM=K pairs separated by commas, e.g. '3' or 'click=3,convert=3'; arms: "
           f"{', '.join(FUNNEL_ARMS)}; K a whole number from 1 to {MAX_ARM_FITS}")

    def count(value: str, where: str) -> int:
        value = value.strip()
        if not value.isdigit() or not 1 <= int(value) <= MAX_ARM_FITS:
            raise ValueError(f"--fits: {where} {value!r} is not a number of fits: {how}")
        return int(value)

    text = text.strip()
    if not text:
        raise ValueError(f"--fits is empty: {how}")
    if "=" not in text:
        return dict.fromkeys(FUNNEL_ARMS, count(text, "the count"))
    out = dict(ARM_FITS)
    for part in text.split(","):
        arm, eq, value = part.partition("=")
        arm = arm.strip()
        if not eq or arm not in FUNNEL_ARMS:
            raise ValueError(f"--fits: {part.strip()!r} does not name a funnel arm: {how}")
        out[arm] = count(value, f"the {arm} arm's count")
    return out


LEARNERS: tuple[str, ...] = ("s", "t", "x", "dr", "funnel")
NO_CONTACT = "no contact"  # the control arm's action
_MIN_OPENS = 20  # fewer tracked opens than this: the funnel learner is no candidate


def build_frame(store, raw: dict, config: UpliftConfig = UpliftConfig(), shared: SharedJoins | None = None) -> TrainingSet:
    """Contacted and control rows of the contact log, label = converted within the window."""
    service = service_name("uplift")
    frame = contact_frame(store, raw, config.window_days, service, shared, treated_only=False)
    if frame["treated"].min() == 1:
        raise ValueError("uplift needs a control group: contacts rows with variant 'control' (held out, not sent)")
    frame = frame.assign(label=frame["converted"])
    return TrainingSet(frame, service, service_features(store, service), REQUEST_COLUMNS["uplift"], treatment="treated")


def fit(train: TrainingSet, config: UpliftConfig = UpliftConfig(), progress=None):
    """The learner `config.learner`, or with "auto" the default (the funnel learner where opens are tracked, else the
    S-learner) unless another candidate's cross-fitted per-offer Qini AUC is surely above S's, paired
    (`choose_learner`, `pick_learner`): each learner's figures and paired gap to S
    are kept on the scorer as `selection_` (logged with the holdout metrics as `cv_<figure>/<learner>`), the reason
    as the param `learner_choice`."""
    if config.learner != "auto":
        scorer = fit_learner(config.learner, train, config, progress)
    else:
        table = choose_learner(train, config)
        best, reason = pick_learner(table)
        scorer = fit_learner(best, train, config, progress)
        scorer.selection_ = {f"cv_{k}/{name}": v for name, row in table.items() for k, v in row.items()}
        scorer.params_["learner_choice"] = reason  # MLflow param: why this learner (`pick_learner`)
    if shrinks(train, config):
        scorer.shrinkage_ = fit_shrinkage(scorer, train, config)
        # Recorded with the run (MLflow params): how far this champion's choices may leave the best fixed action.
        scorer.params_["shrinkage_strength"] = scorer.shrinkage_.strength
        scorer.params_["shrinkage_strength_by_fold"] = ",".join(f"{v:g}" for v in scorer.shrinkage_by_fold_)
    return scorer


def shrinks(train: TrainingSet, config: UpliftConfig = UpliftConfig()) -> bool:
    """Whether the champion fitted on `train` gets a shrinkage: as asked, or (`shrinkage=None`) when the log holds at
    most `shrink_max_actions` distinct actions, no contact included (a randomised experiment's shape)."""
    if config.shrinkage is not None:
        return config.shrinkage
    return len(set(frame_actions(train.frame, train.treatment))) <= config.shrink_max_actions


def fit_learner(learner: str, train: TrainingSet, config: UpliftConfig = UpliftConfig(), progress=None):
    """Fit one learner by name; the name is recorded in the scorer's params (and so in MLflow)."""
    fitters = {"funnel": fit_funnel, "s": fit_s_learner, "t": fit_t_learner, "x": fit_x_learner, "dr": fit_dr_learner}
    if learner not in fitters:
        raise ValueError(f"unknown uplift learner {learner!r}; choose auto or one of {', '.join(LEARNERS)}")
    if learner == "funnel" and not opens_tracked(train):
        raise ValueError("the funnel uplift learner needs open tracking (`opened_at` in the contacts table); "
                         "choose s, t, x, dr or auto")
    scorer = fitters[learner](train, config, progress)
    scorer.params_["learner"] = learner
    return scorer


def opens_tracked(train: TrainingSet) -> bool:
    """Whether enough contacted rows carry a tracked open for the funnel learner."""
    return "opened" in train.frame and int(train.frame["opened"].sum()) >= _MIN_OPENS


def candidates(train: TrainingSet) -> tuple[str, ...]:
    """The learners the data supports: the funnel one only with open tracking."""
    return tuple(name for name in LEARNERS if name != "funnel" or opens_tracked(train))


def choose_learner(train: TrainingSet, config: UpliftConfig = UpliftConfig(),
                   learners: tuple[str, ...] | None = None) -> dict[str, dict[str, float]]:
    """Each learner's per-offer Qini AUC, AUUC and uplift@20 % cross-fitted over `config.folds` folds of users
    (fit on the others, scored on the fold): the mean over folds and its 95 % t-interval; and its paired gap to the
    S-learner (`REFERENCE`, always fitted: every other learner is paired with it) with a simultaneous 95 % interval
    (`paired_gaps`). `pick_learner` reads the table.

    Fits are untuned (`config.select_rounds` rounds of the default parameters) to keep the choice cheap; the
    chosen learner is then refitted, tuned, on all rows.
    """
    quick = replace(config, fit=replace(config.fit, trials=1, max_rounds=config.select_rounds))
    # On the demo world (309k rows) the choice on all rows cost 3x the funnel's own fit; on a 20k-row sample of
    # users it still separated the funnel from the others (benchmarks/RESULTS.md).
    train = _user_sample(train, config.select_rows, config.seed)
    if "user_id" not in train.frame:  # one row per customer: each row its own user (the bootstrap resamples users)
        train = replace(train, frame=train.frame.assign(user_id=np.arange(len(train.frame)).astype(str)))
    folds = user_folds(_users(train.frame), config.folds, config.seed)
    names = [REFERENCE, *(n for n in (learners or candidates(train)) if n != REFERENCE)]
    table, scored = {}, {}
    for name in names:
        per_fold: list[dict[str, float]] = []
        scored[name] = []
        for k in range(config.folds):
            fit_rows, test_rows = folds != k, folds == k
            try:
                scorer = fit_learner(name, train.subset(fit_rows), quick)
            except ValueError:  # a fold without what this learner needs (e.g. too few opens)
                scored[name].append(None)
                continue
            rows, scores = offer_scores(scorer, train.subset(test_rows), seed=config.seed + k)
            per_fold.append(_offer_metrics(rows, scores))
            scored[name].append((rows, scores, per_fold[-1]))
        row: dict[str, float] = {"folds": float(len(per_fold))}
        for key in ("qini_auc", "auuc", "uplift_at_20"):
            row[key], row[f"{key}_low"], row[f"{key}_high"] = fold_interval([f[key] for f in per_fold])
        table[name] = row
    for name, gap in paired_gaps(scored, config.seed).items():
        table[name].update(gap)
    return table


REFERENCE = "s"  # the learner `auto` keeps unless another is surely better: the plainest one (one model, action as input)
_BOOTSTRAP = 200  # resamples of each test fold's users for the paired gaps' interval


def paired_gaps(scored: dict[str, list], seed: int, resamples: int = _BOOTSTRAP) -> dict[str, dict[str, float]]:
    """Each learner's cross-fitted Qini AUC minus the S-learner's on the same folds, the same offers and the same
    rows (`offer_scores` draws the controls' offers with the fold's seed, whatever the learner): the mean over folds of
    the per-fold gap, and a simultaneous 95 % interval from a paired bootstrap over each test fold's users.

    Why a bootstrap over users: with 3 folds a t-interval of the per-fold gaps has 2 degrees of freedom (its
    half-width is 4.3 standard errors, so nothing ever clears it), more folds for the choice multiply its cost (every
    candidate refitted per fold), and pairs per (fold, offer) are not independent (an offer's rows share the fold's
    controls and model). The scores of the fitted fold models are resampled instead: each resample draws the fold's
    users with replacement (a control row's copies for every offer go with their user), the same draw for both
    learners, and recomputes both per-offer Qini AUCs and their treated-row-weighted mean (`summarise_offers`'
    weighting) without refitting (`metrics.qini_auc_replicates`); the folds are resampled independently and their
    gaps averaged. The interval is the gap +- z bootstrap standard errors, simultaneous over the m candidates paired
    with S (Bonferroni: z = the normal quantile of 1 - 0.025 / m, 2.50 for 4 candidates, 2.58 for 5): `auto` asks
    whether ANY candidate is surely above S, and with 1.96 per candidate a log where none is better lets one through
    up to m x 2.5 % of the time (on Thornton one of 5 training parts picked t with 1.96 and lost to S on its test
    fold: benchmarks/RESULTS.md). It holds the test users' noise, not the fits' (each learner's fold models are kept
    fixed): a learner better on these folds' fits is taken to be better, which the planted tests
    (tests/test_uplift_learners.py) and benchmarks/RESULTS.md check against S.
    `scored[name]` holds per fold `(rows, scores, metrics)` from `offer_scores` / `_offer_metrics`, or None.
    """
    from scipy.stats import norm

    reference = scored.get(REFERENCE)
    out: dict[str, dict[str, float]] = {}
    if reference is None:
        return out
    z = float(norm.ppf(1 - 0.025 / max(len(scored) - 1, 1)))  # simultaneous 95 % over the candidates paired with S
    rng = np.random.default_rng(seed)
    folds = len(reference)
    draws = []  # per fold: each row's count in each resample (resamples x rows), or None
    for k in range(folds):
        if reference[k] is None:
            draws.append(None)
            continue
        rows = reference[k][0]
        users, codes = np.unique(rows["user_id"].astype(str).to_numpy(), return_inverse=True)
        counts = rng.multinomial(len(users), np.full(len(users), 1 / len(users)), size=resamples)
        draws.append(counts[:, codes])
    replicate_cache: dict[tuple[str, int], np.ndarray] = {}

    def replicates(name: str, k: int) -> np.ndarray:
        if (name, k) not in replicate_cache:
            rows, scores, metrics = scored[name][k]
            replicate_cache[name, k] = _qini_replicates(rows, scores, _scored_offers(metrics), draws[k])
        return replicate_cache[name, k]

    for name, per_fold in scored.items():
        both = [k for k in range(folds) if per_fold[k] is not None and reference[k] is not None
                and np.isfinite(per_fold[k][2]["qini_auc"]) and np.isfinite(reference[k][2]["qini_auc"])]
        if name == REFERENCE:
            out[name] = {"gap_to_s": 0.0, "gap_to_s_low": 0.0, "gap_to_s_high": 0.0, "gap_folds": float(len(both))}
            continue
        if not both:
            out[name] = {"gap_to_s": float("nan"), "gap_to_s_low": float("nan"), "gap_to_s_high": float("nan"),
                         "gap_folds": 0.0}
            continue
        gap = float(np.mean([per_fold[k][2]["qini_auc"] - reference[k][2]["qini_auc"] for k in both]))
        boot = np.mean([replicates(name, k) - replicates(REFERENCE, k) for k in both], axis=0)
        se = float(np.nanstd(boot, ddof=1)) if np.isfinite(boot).sum() >= 2 else float("nan")
        out[name] = {"gap_to_s": gap, "gap_to_s_low": gap - z * se, "gap_to_s_high": gap + z * se,
                     "gap_folds": float(len(both))}
    return out


def _scored_offers(metrics: dict[str, float]) -> list[str]:
    """The offers a fold's point estimate scored (`summarise_offers`' `qini_auc/<offer>` keys)."""
    return [k.removeprefix("qini_auc/") for k in metrics if k.startswith("qini_auc/")]


def _qini_replicates(rows: pd.DataFrame, scores: dict[str, np.ndarray], offers: list[str],
                     draws: np.ndarray) -> np.ndarray:
    """Per resample (`draws`: resamples x rows), the treated-row-weighted mean over `offers` of the per-offer Qini
    AUC of the resampled rows: `_offer_metrics`' headline figure, resampled."""
    y, treated, offer = rows["label"].to_numpy(), rows["_treated"].to_numpy(), rows["_offer"].to_numpy()
    total, weight = np.zeros(len(draws)), np.zeros(len(draws))
    for name, score in scores.items():
        if _metric_name(name) not in offers:
            continue
        keep = offer == name
        q = qini_auc_replicates(y[keep], treated[keep], score[keep], draws[:, keep])
        w = draws[:, keep][:, treated[keep]].sum(axis=1).astype("float64")
        ok = np.isfinite(q)
        total[ok] += w[ok] * q[ok]
        weight[ok] += w[ok]
    return np.divide(total, weight, out=np.full(len(draws), np.nan), where=weight > 0)


def pick_learner(table: dict[str, dict[str, float]]) -> tuple[str, str]:
    """The learner `auto` fits, and why: a candidate whose paired gap to the S-learner (`paired_gaps`) is surely above
    0 (the lower end of its simultaneous 95 % interval), the one with the largest gap among those; else the default:
    the funnel learner where the log tracks opens (a candidate in the table) unless its gap to s is surely below 0,
    otherwise s. Without an S-learner's figure (no fold it could fit): the best cross-fitted Qini AUC, as before.

    Why the funnel is the default where opens are tracked: it learns from the opens (and clicks) the other learners
    ignore, and on a targeted log of many actions the per-offer Qini of a 20,000-row choice sample cannot tell it from
    s surely (demo world, eighth session: funnel's gap to s +0.007 to +0.092 over four samples, each interval across 0
    at one of them) while the NBA with s's uplift earned 90 % of the history oracle against 95 % with the funnel's
    (benchmarks/RESULTS.md). Without tracked opens (a randomised experiment's export) s is the default: another
    learner only where surely better."""
    sure = {n: r for n, r in table.items() if n != REFERENCE and r.get("gap_to_s_low", np.nan) > 0}
    if sure:
        best = max(sure, key=lambda n: sure[n]["gap_to_s"])
        r = sure[best]
        return best, (f"{best}: paired gap to s {r['gap_to_s']:+.3f} [{r['gap_to_s_low']:+.3f}, "
                      f"{r['gap_to_s_high']:+.3f}] over {int(r.get('gap_folds', 0))} folds")
    funnel = table.get("funnel", {})
    if funnel.get("folds", 0) > 0 and funnel.get("gap_to_s_high", np.nan) > 0:
        return "funnel", (f"funnel: the default where opens are tracked; its paired gap to s {funnel['gap_to_s']:+.3f} "
                          f"[{funnel['gap_to_s_low']:+.3f}, {funnel['gap_to_s_high']:+.3f}] is not surely below 0 and "
                          "no candidate's is surely above 0")
    if REFERENCE in table and table[REFERENCE].get("folds", 0) > 0:
        return REFERENCE, "kept s: no candidate's paired gap to s is surely above 0 (simultaneous 95 % intervals)"
    best = max(table, key=lambda name: (np.nan_to_num(table[name]["qini_auc"], nan=-np.inf), name == "t"))
    return best, f"{best}: the best cross-fitted Qini AUC (no fold could fit the S-learner)"


def selection_table(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """`choose_learner`'s table back from a run's metrics (`cv_<key>/<learner>`, as `fit` records it)."""
    table: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if key.startswith("cv_") and "/" in key:
            field_, name = key.removeprefix("cv_").split("/", 1)
            table.setdefault(name, {})[field_] = value
    return table


def _user_sample(train: TrainingSet, rows: int, seed: int) -> TrainingSet:
    """All rows of a seeded sample of users, at most `rows` rows (all of them when fewer)."""
    if len(train.frame) <= rows:
        return train
    users = _users(train.frame)
    order = np.random.default_rng(seed).permutation(np.unique(users))
    counts = pd.Series(users).value_counts().reindex(order).to_numpy()
    keep = set(order[: max(int(np.searchsorted(np.cumsum(counts), rows, side="right")), 1)])
    return train.subset(np.fromiter((u in keep for u in users), dtype=bool, count=len(users)))


def _users(frame: pd.DataFrame) -> np.ndarray:
    """Each row's user (a frame without users: each row its own, e.g. one row per customer in an experiment)."""
    return frame["user_id"].astype(str).to_numpy() if "user_id" in frame else np.arange(len(frame)).astype(str)


def user_folds(user_ids: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A fold number per row, the same for all rows of a user (no user on both sides of a fit)."""
    users, inverse = np.unique(user_ids, return_inverse=True)
    return np.random.default_rng(seed).permutation(len(users))[inverse] % folds


def fit_funnel(train: TrainingSet, config: UpliftConfig = UpliftConfig(), progress=None) -> FunnelUpliftScorer:
    """Four arms: opened on all contacted rows (user + channel + hour), clicked on the opened rows (user + offer),
    converted after a click (user + offer), converted on the control rows (user only). Without enough
    tracked clicks, three: converted on the opened rows instead of the click and after-click arms.

    The after-click arm (`config.pooled_convert`, the default) is fitted on every opened row with whether it was
    clicked as an input and predicts a click (`StagedBooster`): the clicked rows are a few (10k of 227k contacts on
    the demo world) and the opened rows left unclicked, which convert only organically, teach it each user's level.
    On the demo world the NBA earned +0.46 to +0.68 % with it, paired over six fit seeds, and the arm's spread from
    fit to fit fell by a third (benchmarks/RESULTS.md, issue 16, ninth session).

    Clicks are three times as frequent as conversions and carry no organic purchases, so the click arm learns
    which offer interests whom from far more signal: on the demo world the NBA policy went from 66 % to
    68 % of the oracle's incremental revenue with it (1.24x propensity-only).

    On the 20k-user simulated world the NBA policy's first contact earned 5.24 of the oracle's 10.19 (true
    incremental revenue per user at the same hours) with the T-learner and 6.09 with these arms: the
    difference of two conversion models ranked offers and channels mostly by noise (the organic rate
    dominates both), while opens are plentiful and conversions after an open carry the offer's effect.
    """
    frame = train.frame
    rows = funnel_rows(train)
    features = list(train.features)
    engage = fit_arm("engage", frame[rows["engage"][0]], features + list(ENGAGE_COLUMNS), rows["engage"][1],
                     train.feature_service, config, progress)
    offer_inputs = features + list(OFFER_COLUMNS)
    click = None
    if "click" in rows:
        click = fit_arm("click", frame[rows["click"][0]], click_columns(features, config.click_inputs) + list(OFFER_COLUMNS),
                        rows["click"][1], train.feature_service, config, progress)
    if click is not None and config.pooled_convert:
        # The after-click arm on every opened row, whether it was clicked an input (StagedBooster): predicts clicked.
        engaged, clicked = rows["click"]
        convert = fit_arm("convert", frame[engaged], offer_inputs, train.y[engaged], train.feature_service, config,
                          progress, stage=clicked)
    else:
        convert = fit_arm("convert", frame[rows["convert"][0]], offer_inputs, rows["convert"][1], train.feature_service,
                          config, progress)
    control = fit_arm("control", frame[rows["control"][0]], features, rows["control"][1], train.feature_service, config,
                      progress)
    return FunnelUpliftScorer(engage, convert, control, train.feature_service, click=click)


def fit_arm(arm: str, frame: pd.DataFrame, columns: list[str], y: np.ndarray, feature_service: str,
            config: UpliftConfig, progress=None, stage: np.ndarray | None = None) -> BoosterScorer:
    """One funnel arm: one `fit_booster`, or with `config.fits(arm)` k > 1 the mean of k fits' probabilities (seeds
    `fit.seed + 100 i`, the first the one-fit arm itself; one encoder: the same rows and columns), an
    `AveragedBooster` (staged when `stage` is given, as the pooled after-click arm)."""
    fits = [fit_booster(frame, columns, y, feature_service, replace(config.fit, seed=config.fit.seed + 100 * i),
                        progress=progress, stage=stage) for i in range(config.fits(arm))]
    if len(fits) == 1:
        return fits[0]
    return AveragedBooster([f.booster_ for f in fits], fits[0].encoder_, feature_service, fits[0].params_)


TASTE_PREFIXES: tuple[str, ...] = ("aff_", "click_rate_")  # the click arm's user columns with click_inputs="taste"


def click_columns(features: list[str], inputs: str = "all") -> list[str]:
    """The user's features the funnel's click arm reads (`UpliftConfig.click_inputs`): "all", every feature; "taste",
    the category affinities (aff_*, from which the offer's matched affinity is derived) and the user's click rates
    (click_rate_*: how readily they click at all), or every feature where the feature service has no category
    affinity (which offer a user clicks is a matter of taste; the rest of a profile may teach the arm noise)."""
    if inputs not in ("taste", "all"):
        raise ValueError(f"click_inputs must be 'taste' or 'all', not {inputs!r}")
    taste = [c for c in features if c.startswith(TASTE_PREFIXES)]
    if inputs == "all" or not any(c.startswith("aff_") for c in taste):
        return list(features)
    return taste


def funnel_rows(train: TrainingSet) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each funnel arm's training rows (a boolean mask over `train.frame`) and labels: "engage" (opened, on the
    contacted rows), "click" (clicked, on the opened rows; only with enough tracked clicks), "convert" (converted, on
    the clicked rows, or on the opened rows without a click arm), "control" (converted, on the control rows).
    ValueError when too few opened contacts with and without a conversion."""
    frame = train.frame
    treated = frame[train.treatment].to_numpy() == 1
    opened = treated & (frame["opened"].to_numpy() == 1) if "opened" in frame else treated
    if opened.sum() < 20 or len(np.unique(train.y[opened])) < 2:
        raise ValueError("uplift (funnel): too few opened contacts with and without a conversion; choose another "
                         "learner (--learner s, t, x or dr)")
    out = {"engage": (treated, frame["opened"].to_numpy()[treated])}
    clicked = frame["clicked"].to_numpy() == 1 if "clicked" in frame else np.zeros(len(frame), bool)
    engaged = opened | (treated & clicked)  # a click without a tracked open still means the message was read
    if (treated & clicked).sum() >= _MIN_CLICKS and len(np.unique(train.y[treated & clicked])) == 2:
        out["click"] = (engaged, clicked[engaged].astype("int64"))
        after = treated & clicked
    else:
        after = opened
    out["convert"] = (after, train.y[after])
    out["control"] = (~treated, train.y[~treated])
    return out


def fit_s_learner(train: TrainingSet, config: UpliftConfig = UpliftConfig(), progress=None) -> SLearnerScorer:
    """S-learner: one LightGBM on all rows over the user's features and the action, the control rows with no
    action (their offer and channel columns empty: they were never sent one); uplift = the model with the action
    minus the model without (`SLearnerScorer`)."""
    _, control = _arms(train)
    frame = train.frame.copy()
    frame.loc[control, [c for c in S_ACTION_COLUMNS if c in frame]] = np.nan  # coded as missing, as "no action" is
    scorer = fit_booster(frame, train.inputs, train.y, train.feature_service, config.fit, progress=progress)
    return SLearnerScorer(scorer.booster_, scorer.encoder_, train.feature_service, scorer.params_)


def fit_t_learner(train: TrainingSet, config: UpliftConfig = UpliftConfig(), progress=None) -> UpliftScorer:
    """One model per arm; the control arm reads the user's features only.

    Control rows were never sent, so their channel is empty and their offer and hour were never seen by the
    user: organic conversion cannot depend on them. Leaving them out of the control arm removes variance
    (on the 5k-user simulated world: Spearman with the oracle's uplift 0.115 -> 0.120). An X-learner's
    treated-arm effect (0.143) and an S-learner with a treatment column (undefined: it ignored the column)
    did not rank clearly better, so the T-learner stays (benchmarks/RESULTS.md).
    """
    treated = train.frame[train.treatment].to_numpy() == 1
    t_frame, c_frame = train.frame[treated], train.frame[~treated]
    t_model = fit_booster(t_frame, train.inputs, train.y[treated], train.feature_service, config.fit, progress=progress)
    c_model = fit_booster(c_frame, list(train.features), train.y[~treated], train.feature_service, config.fit,
                          progress=progress)
    return UpliftScorer(t_model, c_model, train.feature_service)


def fit_x_learner(train: TrainingSet, config: UpliftConfig = UpliftConfig(), progress=None) -> EffectScorer:
    """X-learner: arm models mu1(user, offer, channel, hour) and mu0(user); imputed effects y - mu0 on the
    treated rows and mu1(offer) - y on the control rows given each offer; one regression of both, weighted
    so that it averages them as e x tau0 + (1 - e) x tau1 (e: the offer's share against control)."""
    t_learner = fit_t_learner(train, config, progress)
    treated, control = _arms(train)
    frame, y = train.frame, train.y.astype("float64")
    share = _offer_share(frame, treated)
    rows_t = frame[treated]
    e_t = share.reindex(rows_t["offer_id"].astype(str)).to_numpy()
    rows_c, offer_c = _controls_for_offers(frame, treated, config.seed)
    e_c = share.reindex(offer_c).to_numpy()
    mu0_t = t_learner.control_.predict(rows_t)
    mu1_c = t_learner.treated_.predict(rows_c)
    target = np.r_[y[treated] - mu0_t, mu1_c - rows_c["label"].to_numpy(dtype="float64")]
    weight = np.r_[(1 - e_t) / e_t, e_c / (1 - e_c)]
    return _fit_effect(pd.concat([rows_t, rows_c], ignore_index=True), list(train.inputs), target, weight,
                       train.feature_service, config)


def fit_dr_learner(train: TrainingSet, config: UpliftConfig = UpliftConfig(), progress=None) -> EffectScorer:
    """DR-learner: AIPW pseudo-outcomes from arm models fitted on the other half of the users (cross-fitted, so
    no row's pseudo-outcome comes from a model that saw it), then one regression of them on user and action.

    Treated row with offer o: mu1 - mu0 + (y - mu1) / e_o; control row given offer o: mu1 - mu0 - (y - mu0) / (1 - e_o),
    with e_o the offer's share against control in the log (a randomised experiment's assignment rate).
    """
    if "user_id" not in train.frame:  # one row per customer: each row its own user
        train = replace(train, frame=train.frame.assign(user_id=np.arange(len(train.frame)).astype(str)))
    treated, _ = _arms(train)
    frame = train.frame
    share = _offer_share(frame, treated)
    rows_c, offer_c = _controls_for_offers(frame, treated, config.seed)
    rows_t = frame[treated].reset_index(drop=True)
    users = frame["user_id"].astype(str).to_numpy()
    halves = user_folds(users, 2, config.seed)
    half_of = pd.Series(halves, index=users).groupby(level=0).first()
    halves_t = halves[treated]
    halves_c = half_of.reindex(rows_c["user_id"].astype(str)).to_numpy()  # a control copy sits in its user's half
    mu1_t, mu0_t = np.zeros(len(rows_t)), np.zeros(len(rows_t))
    mu1_c, mu0_c = np.zeros(len(rows_c)), np.zeros(len(rows_c))
    for half in (0, 1):
        arms = fit_t_learner(train.subset(halves != half), config, progress)
        on_t, on_c = halves_t == half, halves_c == half
        mu1_t[on_t], mu0_t[on_t] = arms.treated_.predict(rows_t[on_t]), arms.control_.predict(rows_t[on_t])
        mu1_c[on_c], mu0_c[on_c] = arms.treated_.predict(rows_c[on_c]), arms.control_.predict(rows_c[on_c])
    e_t = share.reindex(rows_t["offer_id"].astype(str)).to_numpy()
    e_c = share.reindex(offer_c).to_numpy()
    y_t, y_c = rows_t["label"].to_numpy(dtype="float64"), rows_c["label"].to_numpy(dtype="float64")
    target = np.r_[mu1_t - mu0_t + (y_t - mu1_t) / e_t, mu1_c - mu0_c - (y_c - mu0_c) / (1 - e_c)]
    return _fit_effect(pd.concat([rows_t, rows_c], ignore_index=True), list(train.inputs), target, None,
                       train.feature_service, config)


def _arms(train: TrainingSet) -> tuple[np.ndarray, np.ndarray]:
    treated = train.frame[train.treatment].to_numpy() == 1
    if treated.all() or not treated.any():
        raise ValueError("uplift needs contacted and control rows")
    return treated, ~treated


def _offer_share(frame: pd.DataFrame, treated: np.ndarray) -> pd.Series:
    """Per offer, its treated rows' share of (its treated rows + all control rows): P(offer | offer or control)."""
    counts = frame.loc[treated, "offer_id"].astype(str).value_counts()
    return counts / (counts + int((~treated).sum()))


def _offer_request(frame: pd.DataFrame, treated: np.ndarray, offer: str, n: int,
                   rng: np.random.Generator) -> pd.DataFrame:
    """Request columns for `n` rows scored FOR `offer`: its attributes, and channel and hour drawn from the rows
    it was actually sent with (the action it would have been)."""
    sent = frame[treated & (frame["offer_id"].astype(str) == offer).to_numpy()]
    pick = sent.iloc[rng.integers(0, len(sent), n)]
    return pick[list(OFFER_COLUMNS + ENGAGE_COLUMNS)].reset_index(drop=True)


def _controls_for_offers(frame: pd.DataFrame, treated: np.ndarray, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """The control rows once per offer that was sent, each copy given that offer's request columns."""
    rng = np.random.default_rng(seed)
    controls = frame[~treated].reset_index(drop=True)
    parts, names = [], []
    for offer in sorted(frame.loc[treated, "offer_id"].astype(str).unique()):
        request = _offer_request(frame, treated, offer, len(controls), rng)
        parts.append(controls.drop(columns=list(request.columns)).join(request))
        names.append(np.full(len(controls), offer, dtype=object))
    return pd.concat(parts, ignore_index=True), np.concatenate(names)


def _fit_effect(frame: pd.DataFrame, columns: list[str], target: np.ndarray, weight: np.ndarray | None,
                feature_service: str, config: UpliftConfig) -> EffectScorer:
    """One LightGBM regression of the pseudo-outcomes (default parameters, rounds by early stopping on 20 %)."""
    encoder = fit_encoder(frame, columns)
    x = encoder.codes(frame)
    cats = [encoder.columns.index(c) for c in encoder.categorical]
    params = {**BASE_PARAMS, "objective": "regression", "metric": "l2", "seed": config.seed}
    valid = np.random.default_rng(config.seed).random(len(target)) < 0.2

    def data(rows, reference=None):
        return lgb.Dataset(x[rows], target[rows], weight=None if weight is None else weight[rows], reference=reference,
                           categorical_feature=cats, feature_name=[f"f{i}" for i in range(x.shape[1])],
                           free_raw_data=False, params={"verbosity": -1, "feature_pre_filter": False,
                                                        "max_bin": BASE_PARAMS["max_bin"]})

    fit_set = data(~valid)
    probe = lgb.train(params, fit_set, num_boost_round=config.fit.max_rounds, valid_sets=[data(valid, fit_set)],
                      callbacks=[lgb.early_stopping(20, verbose=False)])
    rounds = max(int((probe.best_iteration or config.fit.max_rounds) * 1.1), 10)
    booster = lgb.train(params, data(np.ones(len(target), dtype=bool)), num_boost_round=rounds)
    return EffectScorer(booster, encoder, feature_service, {**params, "num_boost_round": rounds})


def offer_scores(scorer, holdout: TrainingSet, seed: int = 7) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Scores per offer for `per_offer_uplift_metrics`: that offer's treated rows as sent, and every control row
    scored FOR that offer (its attributes, a channel and hour it was sent with). Returns the rows (treated rows,
    then the controls once per offer) and, per offer, a score for each of them (NaN where it does not apply)."""
    treated = holdout.frame[holdout.treatment].to_numpy() == 1
    rows_c, offer_c = _controls_for_offers(holdout.frame, treated, seed)
    rows_t = holdout.frame[treated].reset_index(drop=True)
    rows = pd.concat([rows_t, rows_c], ignore_index=True)
    score = np.asarray(scorer.predict(rows), dtype="float64")
    offer = np.r_[rows_t["offer_id"].astype(str).to_numpy(dtype=object), offer_c]
    is_treated = np.r_[np.ones(len(rows_t), bool), np.zeros(len(rows_c), bool)]
    out = {}
    for name in np.unique(offer):
        keep = offer == name
        out[str(name)] = np.where(keep, score, np.nan)
    return rows.assign(_offer=offer, _treated=is_treated), out


def evaluate(scorer, holdout: TrainingSet, seed: int = 7) -> dict[str, float]:
    """Per-offer normalised Qini AUC, AUUC (scikit-uplift's definitions) and uplift@20 % on the holdout, each
    offer's treated rows ranked against the control rows scored for that offer; the headline figures weight
    offers by their treated rows. The cross-fitted choice of learner (when made) comes along as `cv_*`."""
    rows, scores = offer_scores(scorer, holdout, seed)
    out = _offer_metrics(rows, scores)
    out["treated_share"] = float((holdout.frame[holdout.treatment] == 1).mean())
    return {**out, **getattr(scorer, "selection_", {})}


def _offer_metrics(rows: pd.DataFrame, scores: dict[str, np.ndarray]) -> dict[str, float]:
    """`summarise_offers` of the per-offer metrics of `offer_scores`' rows and scores."""
    y, treated, offer = rows["label"].to_numpy(), rows["_treated"].to_numpy(), rows["_offer"].to_numpy()
    per_offer = {}
    for name, score in scores.items():
        keep = offer == name
        per_offer.update(per_offer_uplift_metrics(y[keep], treated[keep], offer[keep], {name: score[keep]}))
    return summarise_offers(per_offer)


def paired_qini(challenger, champion, holdout: TrainingSet, draws: int = 200, seed: int = 7,
                level: float = 0.95) -> dict[str, float]:
    """`evaluate`'s Qini AUC of two scorers on the same holdout rows, and their difference (challenger minus
    champion) with a `level` interval from a paired bootstrap over the holdout's users: each draw resamples users
    with replacement, and both rankings are judged on the same draw, so what the two share cancels and the interval
    is that of the difference itself (the gate's "surely better": its low end above 0). The resamples are
    `paired_gaps`' (`_qini_replicates`: every offer the point estimate scored, recomputed without a sort per draw),
    taken `_DRAW_CHUNK` at a time so the (draws x rows) matrix stays small on a large holdout."""
    rows, ours = offer_scores(challenger, holdout, seed)
    _, theirs = offer_scores(champion, holdout, seed)
    mine, other = _offer_metrics(rows, ours), _offer_metrics(rows, theirs)
    out = {"challenger": mine["qini_auc"], "champion": other["qini_auc"]}
    out["difference"] = out["challenger"] - out["champion"]
    theirs_scored = set(_scored_offers(other))
    offers = [name for name in _scored_offers(mine) if name in theirs_scored]
    users, member = np.unique(_users(rows), return_inverse=True)
    rng = np.random.default_rng(seed)
    diffs = []
    for start in range(0, draws, _DRAW_CHUNK):
        counts = rng.multinomial(len(users), np.full(len(users), 1.0 / len(users)), size=min(_DRAW_CHUNK, draws - start))
        times = counts[:, member]  # each drawn user's rows, as many times as the user was drawn
        diffs.append(_qini_replicates(rows, ours, offers, times) - _qini_replicates(rows, theirs, offers, times))
    diffs = np.concatenate(diffs) if diffs else np.array([])
    diffs = diffs[np.isfinite(diffs)]
    tail = (1 - level) / 2
    low, high = (np.quantile(diffs, [tail, 1 - tail]) if len(diffs) else (np.nan, np.nan))
    return {**out, "low": float(low), "high": float(high), "draws": float(len(diffs)), "users": float(len(users))}


_DRAW_CHUNK = 25  # bootstrap draws per (draws x rows) matrix in `paired_qini`


# --- the policy's shrinkage (training/shrinkage.py) ------------------------------------------------------------


def action_names(offer: np.ndarray, channel: np.ndarray, treated: np.ndarray) -> np.ndarray:
    """"offer @ channel" where treated, else NO_CONTACT: the one spelling of an action."""
    named = pd.Series(offer, dtype=object).astype(str).to_numpy() + " @ " + \
        pd.Series(channel, dtype=object).astype(str).to_numpy()
    return np.where(np.asarray(treated, dtype=bool), named, NO_CONTACT).astype(object)


def frame_actions(frame: pd.DataFrame, treatment: str = "treated") -> np.ndarray:
    """Each contacts row's action: "offer @ channel" where treated, else NO_CONTACT."""
    return action_names(frame["offer_id"].to_numpy(), frame["channel"].to_numpy(), frame[treatment].to_numpy() == 1)


def logged_actions(frame: pd.DataFrame, treatment: str = "treated") -> tuple[np.ndarray, np.ndarray]:
    """Each row's logged action ("offer @ channel", or NO_CONTACT) and its probability under the logging policy."""
    action = frame_actions(frame, treatment)
    if "propensity" in frame and frame["propensity"].notna().all() and (frame["propensity"] > 0).all():
        return action, frame["propensity"].to_numpy(dtype="float64")
    share = pd.Series(action).value_counts(normalize=True)
    return action.astype(object), share.reindex(action).to_numpy()


def action_draws(train: pd.DataFrame, actions: list[str], treatment: str, n: int,
                 seed: int) -> list[tuple[pd.DataFrame, np.ndarray]]:
    """Per action, its request columns as logged in the training rows (the offer's attributes, the channel, send
    hours) and, for each of `n` rows, which of those examples the row is scored with."""
    rng = np.random.default_rng(seed)
    sent = train[train[treatment].to_numpy() == 1]
    logged = frame_actions(sent, treatment)
    out = []
    for a in actions:
        examples = sent[logged == a][list(OFFER_COLUMNS + ENGAGE_COLUMNS)].reset_index(drop=True)
        out.append((examples, rng.integers(0, len(examples), n)))
    return out


def action_grid(rows: pd.DataFrame, draws: list[tuple[pd.DataFrame, np.ndarray]], part: slice = slice(None)) -> pd.DataFrame:
    """`rows` (the rows `part` of those `draws` were made for) once per action (action-major), each copy with its
    drawn request columns."""
    columns = list(OFFER_COLUMNS + ENGAGE_COLUMNS)
    base = rows.drop(columns=columns)
    return pd.concat([base.join(examples.iloc[draw[part]].reset_index(drop=True)) for examples, draw in draws],
                     ignore_index=True)


def action_rows(rows: pd.DataFrame, train: pd.DataFrame, actions: list[str], treatment: str,
                seed: int) -> pd.DataFrame:
    """`rows` once per action (action-major), each copy with that action's request columns: the offer's
    attributes and channel from the training rows that logged it, a send hour drawn from them."""
    return action_grid(rows, action_draws(train, actions, treatment, len(rows), seed))


_SHRINK_GRID = 200_000  # (row, action) copies scored per call while fitting the shrinkage: bounds memory


def _uplift_of_actions(scorer, rows: pd.DataFrame, train: pd.DataFrame, actions: list[str], treatment: str,
                       seed: int) -> np.ndarray:
    """The scorer's uplift of each action for each of `rows` (rows x actions), in chunks of rows."""
    draws = action_draws(train, actions, treatment, len(rows), seed)
    out = np.empty((len(rows), len(actions)))
    step = max(_SHRINK_GRID // max(len(actions), 1), 1)
    for start in range(0, len(rows), step):
        part = slice(start, start + step)
        grid = action_grid(rows.iloc[part].reset_index(drop=True), draws, part)
        out[part] = np.asarray(scorer.predict(grid), dtype="float64").reshape(len(actions), -1).T
    return out


def fit_shrinkage(scorer, train: TrainingSet, config: UpliftConfig = UpliftConfig()) -> Shrinkage:
    """The fitted `scorer`'s shrinkage (training/shrinkage.py): its strength chosen cross-fitted on the same seeded
    sample of users the learner is chosen on (its learner refitted untuned on each fold's complement; each
    strength's policy judged by its IPS gain over strength 0 on the fold) and the log's average effect of each action
    on every training row.

    Serving applies it to the champion's uplift before the expected value (`serving.engine.conversion_scores`), and
    `nextbest evaluate --logs` judges the same rule (`pipelines/offpolicy.py`)."""
    learner = scorer.params_.get("learner", "t")
    action, propensity = logged_actions(train.frame, train.treatment)
    counts = pd.Series(action).value_counts()
    actions = sorted(a for a, n in counts.items() if a != NO_CONTACT and n >= config.min_action_rows)
    center = average_effects(action, propensity, train.y.astype("float64"), actions, NO_CONTACT)
    sample = _user_sample(train, config.select_rows, config.seed)
    s_action, s_propensity = logged_actions(sample.frame, sample.treatment)
    reward = sample.y.astype("float64")
    folds = user_folds(_users(sample.frame), config.folds, config.seed)
    quick = replace(config, fit=replace(config.fit, trials=1, max_rounds=config.select_rounds))
    chosen = {s: np.full(len(sample.frame), NO_CONTACT, dtype=object) for s in STRENGTHS}
    for k in range(config.folds):
        test = folds == k
        fit_rows = sample.subset(~test)
        try:
            model = fit_learner(learner, fit_rows, quick)
        except ValueError:  # a fold without what this learner needs: no evidence for a deviation from it
            continue
        rows = sample.frame[test].reset_index(drop=True)
        uplift = _uplift_of_actions(model, rows, fit_rows.frame, actions, train.treatment, config.seed + k)
        fold_center = average_effects(s_action[~test], s_propensity[~test], reward[~test], actions, NO_CONTACT)
        for s in STRENGTHS:
            chosen[s][test] = greedy_actions(shrunk(uplift, fold_center, s), actions, NO_CONTACT)
    strength, _ = choose_strength(chosen, s_action, s_propensity, reward, config.margin_z)
    by_fold = []
    for k in range(config.folds):  # each fold's own choice, for the record: how stable the strength is
        other = folds != k
        by_fold.append(choose_strength({s: c[other] for s, c in chosen.items()}, s_action[other], s_propensity[other],
                                       reward[other], config.margin_z)[0])
    scorer.shrinkage_by_fold_ = by_fold
    return Shrinkage(strength, dict(zip(actions, center.tolist(), strict=True)))
