"""Train one model end to end: training set from Feast -> one split -> fit -> evaluate -> MLflow -> gate."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from nextbest.features.feature_services import service_name
from nextbest.features.settings import Settings
from nextbest.training import channel, churn, label, offer_net, propensity, purchase, send_time, uplift
from nextbest.training.activity import Table, connect
from nextbest.training.datasets import (
    CONTACTS,
    SNAPSHOTS,
    Sampling,
    SharedJoins,
    TrainingSet,
    feature_snapshots,
    split,
)
from nextbest.training.metrics import charts, uplift_chart
from nextbest.training.registry import LABEL_PREFIX, MODEL_NAMES, gate, log_model, primary_metric
from nextbest.training.tabular import FitConfig
from nextbest.training.validation import bgnbd_recipe, champion_on_folds, time_folds, user_folds, validate

__all__ = ["TrainConfig", "TrainResult", "MODELS", "DEFAULT_MODELS", "model_config", "read_raw_tables", "shared_joins",
           "train_model", "train_models", "ON_DISK", "NotTrainable", "skipped_models", "check_labels", "feature_problem",
           "quality_refusal", "CV_MODELS", "TIME_SPLIT_MODELS", "cv_folds", "holdout_kind"]

MODELS: tuple[str, ...] = tuple(MODEL_NAMES)
# What `train all` and retraining train unless asked: the models decisions use (conversion, uplift, send time,
# churn) and the purchase propensity batch scoring writes back. The channel-response model and the offer network
# are not read by any decision (the send-time and conversion models answer their questions there), so training
# them by default spent minutes on models nothing used; `nextbest train channel` / `train offer-net` still train them.
DEFAULT_MODELS: tuple[str, ...] = tuple(m for m in MODELS if m not in ("channel", "offer_net"))


@dataclass(frozen=True)
class TrainConfig:
    """Job parameters shared by all models (each model picks what applies to it)."""

    trials: int = 10  # Optuna trials per LightGBM model
    tune_sample: int = 20_000  # rows per tuning fit
    holdout: float = 0.2  # share of rows in the one holdout
    window_days: int = 7  # contact outcome window
    horizon_days: int = 30  # purchase/churn horizon
    as_of: pd.Timestamp | None = None  # newest snapshot date for purchase/churn
    dates: int = 4  # weekly snapshot dates for purchase/churn, newest at as_of
    split: str = "user"  # cross-validation: "user" (folds grouped by user) or "time" (purchase/churn: folds of dates,
    # each trained only on rows whose horizon closed before its first date)
    epochs: int = 6  # PyTorch models
    seed: int = 7
    sample_rows: int = 500_000  # rows joined per row set (contact log, snapshots); larger ones are sampled
    uplift_learner: str = "auto"  # uplift: auto (cross-fitted choice) or t, x, dr, funnel
    # uplift: fit the policy's shrinkage (training/shrinkage.py), which decisions then use; None = automatic (a log of
    # few actions, a randomised experiment's shape: `uplift.shrinks`)
    uplift_shrinkage: bool | None = None
    # uplift (funnel): how many seeded fits each arm is the mean of (`UpliftConfig.arm_fits`); None = its default
    uplift_arm_fits: dict[str, int] | None = None


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
    warnings: tuple[str, ...] = ()  # what the user must know about this model's data (shown loudly)
    train_rows: int = 0  # rows the registered model was fitted on (all rows when cross-validated)
    learner: str = "lightgbm"  # the learner chosen by cross-validation (validation.CANDIDATES)
    embargo_days: int = 0  # > 0: cross-validated over time, each fold trained on rows whose horizon closed before it


def model_config(name: str, config: TrainConfig):
    """The model module's own config, from the shared job config."""
    fit = FitConfig(trials=config.trials, tune_sample=config.tune_sample, seed=config.seed)
    if name == "conversion":
        return propensity.ConversionConfig(window_days=config.window_days, fit=fit)
    if name == "channel":
        return channel.ChannelConfig(window_days=config.window_days, fit=fit)
    if name == "purchase":
        return purchase.PurchaseConfig(horizon_days=config.horizon_days, as_of=config.as_of, dates=config.dates, fit=fit)
    if name == "churn":
        return churn.ChurnConfig(horizon_days=config.horizon_days, as_of=config.as_of, dates=config.dates, fit=fit)
    if name == "uplift":
        arm_fits = {} if config.uplift_arm_fits is None else {"arm_fits": dict(config.uplift_arm_fits)}
        return uplift.UpliftConfig(window_days=config.window_days, fit=fit, learner=config.uplift_learner, seed=config.seed,
                                   shrinkage=config.uplift_shrinkage, **arm_fits)
    if name == "send_time":
        return send_time.SendTimeConfig(window_days=config.window_days, epochs=config.epochs, seed=config.seed)
    if name == "offer_net":
        return offer_net.OfferNetConfig(window_days=config.window_days, epochs=config.epochs, seed=config.seed)
    if name.startswith(LABEL_PREFIX):
        return label.LabelConfig(name=label.check_name(name.removeprefix(LABEL_PREFIX)), fit=fit)
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


_MODULES = {"conversion": propensity, "channel": channel, "purchase": purchase, "churn": churn, "uplift": uplift,
            "send_time": send_time, "offer_net": offer_net}


def _module(name: str):
    """The training module of a model: its own, or `label` for a label-NAME model."""
    return label if name.startswith(LABEL_PREFIX) else _MODULES[name]


# model -> (the row set it is trained on, its FeatureService's model name)
_ROWS: dict[str, tuple[str, str]] = {"conversion": (CONTACTS, "conversion"), "uplift": (CONTACTS, "uplift"),
                                     "channel": (CONTACTS, "channel_response"), "send_time": (CONTACTS, "send_time"),
                                     "offer_net": (CONTACTS, "offer_net"), "purchase": (SNAPSHOTS, "purchase"),
                                     "churn": (SNAPSHOTS, "churn")}


def shared_joins(store, names: list[str], sampling: Sampling | None = None) -> SharedJoins:
    """One point-in-time join per row set for the models `names` (the contact log once, the snapshots once)."""
    groups: dict[str, list[str]] = {}
    for name in (n for n in names if n in _ROWS):  # a label model's rows are its own labels file
        rows, model = _ROWS[name]
        groups.setdefault(rows, []).append(service_name(model))
    return SharedJoins(store, {k: tuple(v) for k, v in groups.items()}, sampling or Sampling())


# The tables training reads through DuckDB from their Parquet files: at 1M users 31M events and 16M contacts,
# several GB in pandas, of which training needs aggregates (labels, purchase histories) and a sample of rows.
ON_DISK = ("events", "contacts")


def read_raw_tables(settings: Settings, on_disk: tuple[str, ...] = ()) -> dict[str, Table]:
    """The raw tables of the current snapshot as DataFrames; those named in `on_disk` as their Parquet file."""
    from nextbest.features.contract import TABLES
    from nextbest.features.ingest import read_raw, recover_raw

    recover_raw(settings.raw_dir)
    files = {t: path for t in on_disk if (path := Path(settings.raw_dir) / f"{t}.parquet").exists()}
    return {**{t: df for t in TABLES if t not in on_disk and (df := read_raw(settings.raw_dir, t)) is not None}, **files}


class NotTrainable(ValueError):
    """This data cannot train this model (one class only, features missing at the date): nothing was registered."""


def _contact_log_facts(contacts: Table) -> tuple[int, set[str], bool]:
    """(rows, the outcome columns with a value, whether any row is of the control group), read by DuckDB."""
    with connect(contacts=contacts) as con:
        have = {r[0] for r in con.execute("DESCRIBE contacts").fetchall()}
        outcomes = [c for c in ("opened_at", "clicked_at", "converted_at") if c in have]
        control = "bool_or(variant::VARCHAR = 'control')" if "variant" in have else "false"
        counts = con.execute(f"SELECT count(*), {control}"
                             + "".join(f", count({c})" for c in outcomes) + " FROM contacts").fetchone()
    return int(counts[0]), {c for c, k in zip(outcomes, counts[2:], strict=True) if k}, bool(counts[1])


def holdout_kind(train_times: pd.Series, holdout_times: pd.Series) -> str:
    """"time" when every holdout row is strictly later than every training row (so no decision from the holdout's
    first time on was trained on: the policy gate may judge on them), else "stratified". An export with one send time
    shares it between both sides: "stratified", whatever order the split made."""
    return "time" if holdout_times.min() > train_times.max() else "stratified"

def skipped_models(raw: dict[str, Table], names: list[str]) -> dict[str, str]:
    """The models of `names` this data cannot train, with the reason (a company without a contact log
    still gets purchase and churn)."""
    contacts = raw.get("contacts")
    rows, with_values, control = _contact_log_facts(contacts) if contacts is not None else (0, set(), False)
    if not rows:
        return {n: "no contact log (contacts table)" for n in names if n in _ROWS and _ROWS[n][0] == CONTACTS}

    def tracked(col: str) -> bool:
        return col in with_values

    needs = {  # model -> (what the contact log lacks for it, or None)
        "uplift": None if control else "no control group in the contact log (rows with variant `control`, not sent)",
        "send_time": None if tracked("opened_at") else "no open tracking in the contact log (`opened_at`)",
        "channel": None if tracked("opened_at") or tracked("clicked_at") else
        "no open or click tracking in the contact log (`opened_at`, `clicked_at`)",
    }
    for model in ("conversion", "uplift", "offer_net"):
        if not tracked("converted_at"):
            needs[model] = "no conversions in the contact log (`converted_at`)"
    return {n: why for n in names if (why := needs.get(n))}


MIN_LABEL_MATCH = 0.5  # below this share of label rows naming a known user, the labels file is refused
_WARN_LABEL_MATCH = 0.95  # below this, the unmatched rows are dropped with a warning


def check_labels(labels: pd.DataFrame, users: pd.DataFrame, file: str = "labels") -> tuple[pd.DataFrame, list[str]]:
    """The label rows naming an ingested user, and warnings; a ValueError when few do (ids that lost their
    zero padding, another id column, another company's file)."""
    known = pd.Index(users["user_id"].astype(str))
    ids = labels["user_id"].astype(str)
    hit = ids.isin(known)
    share = float(hit.mean()) if len(hit) else 0.0
    if share < MIN_LABEL_MATCH:
        example = (f" (e.g. {ids[~hit].iloc[0][:24]!r}; ingested ids look like {known[0][:24]!r})"
                   if (~hit).any() and len(known) else "")
        raise ValueError(f"{file}: only {int(hit.sum()):,} of {len(ids):,} label rows ({share:.0%}) name an ingested user"
                         f"{example}: check the id column and its format (zero padding, prefixes); nothing was trained")
    warnings = []
    if share < _WARN_LABEL_MATCH:
        warnings.append(f"{file}: {int((~hit).sum()):,} of {len(ids):,} label rows ({1 - share:.0%}) name no ingested "
                        "user and were left out")
    return labels[hit.to_numpy()].reset_index(drop=True), warnings


def label_date_warnings(labels: pd.DataFrame, snapshots: pd.DatetimeIndex | None) -> list[str]:
    """A warning when label dates have no feature snapshot of their own (they join an older one)."""
    if snapshots is None or not len(snapshots) or labels.empty:
        return []
    dates = pd.DatetimeIndex(pd.to_datetime(labels["as_of"], utc=True))
    older = snapshots.searchsorted(dates, side="right") - 1  # the snapshot each date joins (the newest at or before it)
    gap = (dates - snapshots[np.clip(older, 0, None)]).days.where(older >= 0, 10**6)
    off = np.asarray(gap) > 0
    if not off.any():
        return []
    worst = dates[int(np.argmax(gap))].date()
    return [f"{int(off.sum()):,} of {len(dates):,} label rows fall between feature snapshots and join one up to "
            f"{min(int(np.max(gap)), 9999)} d older: run `nextbest features build --as-of {worst}` (one date) or give "
            "labels on snapshot dates"]


def feature_problem(data: TrainingSet) -> str | None:
    """Why the features of the newest training date cannot train a model (all missing, or one value each), or None.

    The newest date is the one asked for (`--as-of`); features missing there mean no snapshot near it.
    """
    features = [f for f in data.features if f in data.frame]
    if data.frame.empty:
        return None
    if not features:  # LightGBM would fail deep inside with "maximum feature index in dataset is -1"
        return (f"the FeatureService {data.feature_service} gives no features: no feature views are registered; run "
                "`nextbest features apply` after `features build`")
    frame = data.frame
    newest = frame[frame[data.time] == frame[data.time].max()][features]
    when = pd.Timestamp(frame[data.time].max()).date()
    if len(newest) < 50:  # rows at many times (a contact log, labels with their own dates): judge them all
        newest, when = frame[features], "the training dates"
    if newest.isna().all(axis=1).mean() > 0.5:
        return (f"the features are missing for {newest.isna().all(axis=1).mean():.0%} of the rows at {when}: no feature "
                f"snapshot near that date; run `nextbest features build --as-of {when}` and `features apply`")
    if (newest.nunique(dropna=False) <= 1).all():
        return (f"every feature has a single value at {when} ({len(newest):,} rows): nothing to learn from; check the "
                "date against the data's span (`features build --history-days`, `--as-of`)")
    return None


def _monitoring_block(settings: Settings) -> str | None:
    # imported on use: monitoring reads the service's logs, which training never needs otherwise
    from nextbest.monitoring.monitor import promotion_block

    return promotion_block(settings)


def quality_refusal(name: str, metrics: dict[str, float]) -> str | None:
    """Why a model must not be promoted whatever its champion scores: its holdout or cross-validated AUC is not clearly above chance."""
    if primary_metric(name) != "auc":
        return None
    auc, low, high = metrics.get("auc", np.nan), metrics.get("auc_low", np.nan), metrics.get("auc_high", np.nan)
    judged = "cross-validated" if "folds" in metrics else "holdout"
    if np.isnan(low):
        return f"{judged} AUC {auc:.4f} cannot be told from chance (too few positives or negatives): not promoted"
    if low <= 0.5:
        return (f"{judged} AUC {auc:.4f} (95 % interval {low:.4f}-{high:.4f}) is not clearly above chance (0.5): "
                "not promoted; check the labels and the features at the training dates")
    return None


# The models cross-validated (user-level rows, small enough); the contact models keep their one time holdout.
CV_MODELS = ("purchase", "churn")


TIME_SPLIT_MODELS = ("purchase", "churn")  # labels in a window after the snapshot: the time-aware split applies


def cv_folds(settings: Settings, name: str, data: TrainingSet, seed: int, split: str = "user") -> np.ndarray | None:
    """User-grouped folds (or with `split` "time", folds of snapshot dates: `validation.time_folds`) for a model
    cross-validated under `settings.cv_folds`, or None for the one holdout."""
    if settings.cv_folds < 2 or not (name in CV_MODELS or name.startswith(LABEL_PREFIX)):
        return None
    if split == "time":
        return time_folds(data.frame[data.time], settings.cv_folds)
    users = data.frame["user_id"].astype(str)
    per_user = pd.Series(data.y).groupby(users.to_numpy()).max()
    if min(per_user.sum(), (per_user == 0).sum()) < settings.cv_folds:  # too few users of a class for k folds
        return None
    return user_folds(users, data.y, settings.cv_folds, seed, settings.cv_max_rows)


def _primary(name: str, scorer, holdout: TrainingSet) -> float:
    if name == "uplift":
        return uplift.evaluate(scorer, holdout)["qini_auc"]
    if name == "send_time":  # the AUC only: the hour-choice metrics are logged with the challenger's run
        return send_time.evaluate(scorer, holdout, hour_choice_rows=0)["auc"]
    return _module(name).evaluate(scorer, holdout)["auc"]


def train_model(settings: Settings, name: str, config: TrainConfig = TrainConfig(), raw: dict | None = None,
                store=None, progress=None, labels: pd.DataFrame | None = None,
                shared: SharedJoins | None = None, defer: bool = False) -> TrainResult:
    """Build the training set, split once, fit, evaluate on the holdout, log to MLflow and run the gate.

    `shared` lets several models reuse one point-in-time join of the same rows (see `train_models`).
    `defer`: leave the promotion of a model that has a champion to the policy gate (registry.gate).
    """
    from nextbest.features.ingest import manifest
    from nextbest.features.store import training_store

    started = time.perf_counter()
    step = progress or (lambda text: None)
    module = _module(name)
    cfg = model_config(name, config)
    raw = raw if raw is not None else read_raw_tables(settings, ON_DISK)
    warnings: list[str] = []
    if labels is not None:
        labels, warnings = check_labels(labels, raw["users"])
        raw = {**raw, "labels": labels}
    store = store or training_store(settings)
    if name.startswith(LABEL_PREFIX):  # its own FeatureService, registered next to the built-in ones
        from nextbest.features.store import apply_label_service

        apply_label_service(store, cfg.name)
    step(f"{name}: training set")
    shared = shared or shared_joins(store, [name], Sampling(config.sample_rows, config.seed))
    try:
        data = module.build_frame(store, raw, cfg, shared)
    except ValueError as err:  # what the tables cannot give this model (no complete outcome window, no control group)
        raise NotTrainable(f"{name}: {err}") from None
    if len(data.frame) < 20 or len(np.unique(data.y)) < 2:
        fix = ("the labels file must hold at least 20 labelled users and both classes (0 and 1)" if labels is not None
               else "more data, a longer history or another --as-of/--horizon")
        raise NotTrainable(f"{name}: {len(data.frame)} training rows with labels {sorted(np.unique(data.y).tolist())}; "
                           f"need both classes: {fix}")
    if (problem := feature_problem(data)) is not None:
        raise NotTrainable(f"{name}: {problem}")
    if labels is not None:
        warnings += label_date_warnings(labels, feature_snapshots(store))
    embargo = cfg.horizon_days if config.split == "time" else 0  # days after a row's time its label is decided in
    try:
        folds = cv_folds(settings, name, data, config.seed, config.split)
    except ValueError as err:
        raise NotTrainable(f"{name}: {err} (`--dates`)") from None
    paired = None  # a paired judgement of the champion on the same rows, where the model has one
    if folds is not None:  # k-fold: candidates, baselines and the champion's recipe on the same folds
        step(f"{name}: fit and cross-validate")
        baselines = {"bgnbd": bgnbd_recipe(raw["events"], cfg.horizon_days)} if name == "purchase" else {}
        try:
            validated = validate(data, lambda rows: module.fit(rows, cfg), folds, baselines, config.seed, embargo)
        except ValueError as err:  # an embargo the snapshot dates cannot keep
            raise NotTrainable(f"{name}: {err}") from None
        scorer, metrics = validated.scorer, validated.metrics
        train, holdout = data, data.subset(folds >= 0)  # refit on every row; judged on the out-of-fold scores
        p_eval = validated.oof[folds >= 0]
        how = {"split": f"{int(metrics['folds'])}-fold cross-validation " + (
            f"over time, {embargo}-day embargo" if embargo else "grouped by user"), "learner": validated.learner,
            "nested_choices": ",".join(validated.choices)}

        def champion_score(champion) -> float:
            return champion_on_folds(champion, data, folds, config.seed, embargo)
    else:
        train, holdout = split(data, config.holdout, config.seed)
        step(f"{name}: fit")
        scorer = module.fit(train, cfg)
        step(f"{name}: evaluate")
        metrics = module.evaluate(scorer, holdout)
        p_eval = None if name == "uplift" else np.asarray(scorer.predict(holdout.frame))
        how = {"split": holdout_kind(train.frame[train.time], holdout.frame[holdout.time])}

        def champion_score(champion) -> float:
            return _primary(name, champion, holdout)

        if name == "uplift" and settings.uplift_gate_draws > 0:  # Qini on one holdout is noisy: paired, with an interval
            def paired(champion) -> dict[str, float]:
                return uplift.paired_qini(scorer, champion, holdout, draws=settings.uplift_gate_draws)
    extra: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if name == "uplift":
            files = [uplift_chart(folder, holdout.y, holdout.frame[holdout.treatment].to_numpy(), scorer.predict(holdout.frame))]
        else:
            files = charts(folder, holdout.y, p_eval, scorer.importance() if hasattr(scorer, "importance") else None)
        if name == "offer_net":
            extra = offer_net.compare_with_conversion(settings, holdout)
        step(f"{name}: register")
        tags = {"data_snapshot_id": str(manifest(settings.raw_dir).get("snapshot_id", "unknown")),
                "train_rows": str(len(train.frame)), "holdout_rows": str(len(holdout.frame)), **how,
                **shared.sampled.get(_ROWS[name][0] if name in _ROWS else "", {})}
        params = {**getattr(scorer, "params_", {}), **{k: v for k, v in vars(config).items()}}
        run_id, version = log_model(settings, name, scorer, {**metrics, **extra}, params,
                                    holdout.frame[scorer_inputs(scorer, holdout)].head(5), files, tags)
    step(f"{name}: gate")
    # Cross-validated: the challenger's chosen recipe against the champion's recipe on the same folds (recipe against
    # recipe: an identical challenger ties); the model's reported AUC is the nested choice's (`validate`).
    decision = gate(settings, name, version, run_id, metrics.get("chosen_auc", metrics[primary_metric(name)]),
                    champion_score, defer=defer,
                    refuse=quality_refusal(name, metrics) or _monitoring_block(settings), paired_fn=paired)
    decision["holdout_from"] = str(holdout.frame[holdout.time].min())
    decision["holdout_split"] = how["split"]  # "time": no row from holdout_from on was trained on
    return TrainResult(name, version, run_id, metrics, decision, len(data.frame), time.perf_counter() - started, extra,
                       tuple(warnings), train_rows=len(train.frame), learner=how.get("learner", "lightgbm"),
                       embargo_days=embargo if folds is not None else 0)


def scorer_inputs(scorer, data: TrainingSet) -> list[str]:
    """The columns a caller passes: the FeatureService features plus the model's request columns."""
    return data.inputs


def train_models(settings: Settings, names: list[str], config: TrainConfig = TrainConfig(), progress=None,
                 labels: pd.DataFrame | None = None, defer: tuple[str, ...] = (),
                 skip: Callable[[str, str], None] | None = None) -> list[TrainResult]:
    """Train several models over one read of the raw tables, one Feast store and one join per row set;
    the promotion of the models named in `defer` waits for the policy gate.

    `skip(name, reason)`: called for a model this data cannot train (NotTrainable), and the others go on;
    without it, that model's error stops the run.
    """
    from nextbest.features.store import training_store

    raw = read_raw_tables(settings, ON_DISK)
    store = training_store(settings)
    shared = shared_joins(store, names, Sampling(config.sample_rows, config.seed))
    results = []
    for n in names:
        try:
            results.append(train_model(settings, n, config, raw, store, progress, labels, shared, defer=n in defer))
        except NotTrainable as err:
            if skip is None:
                raise
            skip(n, str(err).removeprefix(f"{n}: "))
    return results
