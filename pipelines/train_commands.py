"""`nextbest train | models | promote | rollback`: retrain, compare and promote models from the command line."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from nextbest.features.contract import ContractError
from nextbest.features.settings import Settings
from nextbest.pipelines.console import console

__all__ = ["register", "CLI_MODELS", "LearnerOption", "ShrinkOption", "FitsOption", "learner_problem", "arm_fits_of"]

# CLI spelling -> the model's short name in training/ and the registry.
CLI_MODELS: dict[str, str] = {"propensity": "conversion", "uplift": "uplift", "purchase": "purchase", "churn": "churn",
                              "channel": "channel", "sendtime": "send_time", "offer-net": "offer_net"}
_STEPS_PER_MODEL = 5  # training set, fit, evaluate, register, gate


class _UserError(Exception):
    """A mistake the user can fix; printed without a traceback."""


def _guarded(fn, *args):
    from nextbest.features.engines import EngineUnavailable
    from nextbest.training.registry import ChecksumError, RegistryUnavailable

    try:
        return fn(*args)
    except (_UserError, ContractError, FileNotFoundError, LookupError, ValueError, RegistryUnavailable, ChecksumError,
            EngineUnavailable) as err:  # EngineUnavailable: the Spark offline store without PySpark or Java
        console.print(f"[bold red]error:[/] {escape(str(err))}")
        raise typer.Exit(code=2) from None


def _short(model: str) -> str:
    if model.startswith("label-") and len(model) > len("label-"):  # a label model, as `models` lists it
        return model
    if model not in CLI_MODELS:
        raise _UserError(f"unknown model {model!r}: choose one of all, label NAME, {', '.join(CLI_MODELS)}")
    return CLI_MODELS[model]


def _labels(path: Path | None):
    if path is None:
        return None
    from nextbest.features.contract import conform
    from nextbest.features.ingest import Source, read_source

    if not path.exists():
        raise _UserError(f"--labels {path}: no such file")
    # ids as text (zero padding survives); a date without an offset is the UTC day, as snapshots are UTC midnights
    return conform("labels", read_source("labels", Source(path=path)), str(path), timezone="UTC")


# One definition of each uplift option, for `train uplift` and `retrain` alike.
LearnerOption = Annotated[str, typer.Option(help="uplift learner: auto (funnel where opens are tracked, else s, unless "
                                                 "another's cross-fitted per-offer Qini is surely above s's, paired), s, t, x, dr, "
                                                 "or funnel (needs open tracking)")]
ShrinkOption = Annotated[bool | None, typer.Option(
    "--shrink/--no-shrink", show_default=False,
    help="uplift: fit how far the policy may leave the best fixed action (cross-fitted; decisions use it) "
         "[default: automatic, on for a log of at most 8 actions, a randomised experiment's shape]")]

FitsOption = Annotated[str | None, typer.Option(
    "--fits", show_default=False,
    help="uplift (funnel learner): each arm as the mean of K seeded fits, steadier from one retrain to the next at K "
         "times the arm's fit and K predicts per scored row: K for every arm, or ARM=K,... for some (engage, click, "
         "convert, control; the others keep the default), e.g. 3 or click=3,convert=3 [default: control 3, the "
         "others 1; click=3,convert=3 steadies the offer ranking too]")]


def arm_fits_of(fits: str | None, learner: str) -> dict[str, int] | None:
    """The uplift's `UpliftConfig.arm_fits` from a `--fits` value (None: the default); ValueError naming what is
    wrong (a bad value; a learner without the funnel's arms)."""
    if fits is None:
        return None
    from nextbest.training.uplift import parse_arm_fits

    if learner not in ("auto", "funnel"):
        raise ValueError(f"--fits sets the funnel learner's arms; --learner {learner} has none (use --learner funnel "
                         "or auto, or leave --fits out)")
    return parse_arm_fits(fits)


def learner_problem(learner: str) -> str | None:
    """What is wrong with a `--learner` value, or None."""
    from nextbest.training.uplift import LEARNERS

    if learner in ("auto", *LEARNERS):
        return None
    return (f"--learner {learner!r}: choose auto (funnel where opens are tracked, else s, unless another learner's "
            f"paired Qini is surely better) or one of {', '.join(LEARNERS)}")


def _train(settings: Settings, model: str, trials: int, as_of: str | None, horizon: int, window: int,
           labels: Path | None, outcome: str | None = None, sample_rows: int | None = None,
           learner: str = "auto", dates: int = 4, split: str = "user",
           shrink: bool | None = None, fits: str | None = None) -> tuple[list, dict[str, str]]:
    import pandas as pd

    from nextbest.features.ingest import manifest
    from nextbest.training.jobs import (
        DEFAULT_MODELS,
        ON_DISK,
        TIME_SPLIT_MODELS,
        TrainConfig,
        read_raw_tables,
        skipped_models,
        train_models,
    )
    from nextbest.training.label import check_name

    if model == "label":
        if outcome is None or labels is None:
            raise _UserError("a label model needs a name and a labels file: `nextbest train label NAME --labels FILE` "
                             "(user_id, as_of, label)")
        names = [f"label-{check_name(outcome)}"]
    elif outcome is not None:
        raise _UserError(f"`train {model}` takes no NAME (only `train label NAME --labels FILE` does)")
    else:
        names = list(DEFAULT_MODELS) if model == "all" else [_short(model)]
    if labels is not None and names not in (["churn"], [f"label-{outcome}"]):
        raise _UserError(f"--labels is read by churn and label models only, not by `train {model}`: use `nextbest train "
                         "churn --labels FILE` or `nextbest train label NAME --labels FILE`")
    if learner_problem(learner):
        raise _UserError(learner_problem(learner))
    if learner != "auto" and "uplift" not in names:
        raise _UserError(f"--learner is read by the uplift model only, not by `train {model}`")
    if fits is not None and "uplift" not in names:
        raise _UserError(f"--fits is read by the uplift model only, not by `train {model}`")
    try:
        arm_fits = arm_fits_of(fits, learner)
    except ValueError as err:
        raise _UserError(str(err)) from None
    if split not in ("user", "time"):
        raise _UserError(f"--split {split!r}: choose user (folds grouped by user) or time (folds of snapshot dates)")
    if split == "time" and (labels is not None or not set(names) <= set(TIME_SPLIT_MODELS)):
        raise _UserError(f"--split time is for models whose label lies in a horizon after the snapshot "
                         f"({', '.join(TIME_SPLIT_MODELS)}, without --labels), not `train {model}`")
    try:
        when = pd.Timestamp(as_of) if as_of else None
    except ValueError:
        raise _UserError(f"--as-of {as_of!r} is not a date (use YYYY-MM-DD)") from None
    manifest(settings.raw_dir)  # a clear message when nothing was ingested
    if not settings.feature_dir.exists():
        raise _UserError(f"no feature tables in {settings.feature_dir}: run `nextbest features build` first")
    from nextbest.features.store import apply, feature_store

    if not feature_store(settings).list_feature_views():  # built but never applied: the one thing left to do
        apply(settings)
        console.print("[yellow]note:[/] no feature views were registered: ran `nextbest features apply` first")
    skipped = skipped_models(read_raw_tables(settings, ON_DISK), names)
    if model != "all" and skipped:
        raise _UserError(f"cannot train {model}: {skipped[names[0]]}")
    names = [n for n in names if n not in skipped]
    config = TrainConfig(trials=trials, as_of=when, horizon_days=horizon, window_days=window, seed=settings.seed,
                         sample_rows=sample_rows or settings.train_sample_rows, uplift_learner=learner, dates=dates, split=split,
                         uplift_shrinkage=shrink, uplift_arm_fits=arm_fits)
    columns = [SpinnerColumn(), TextColumn("{task.description:<30}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn()]
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("starting", total=len(names) * _STEPS_PER_MODEL)
        first = [True]

        def advance(text: str) -> None:
            if not first[0]:
                bar.advance(task)
            first[0] = False
            bar.update(task, description=text)

        results = train_models(settings, names, config, progress=advance, labels=_labels(labels),
                               skip=skipped.__setitem__ if model == "all" else None)
        bar.update(task, completed=len(names) * _STEPS_PER_MODEL, description="done")
    return results, skipped


def _fmt(value) -> str:
    return "-" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))


def _auc_cell(metrics: dict, prefix: str) -> str:
    auc = metrics.get(f"{prefix}auc")
    if auc is None:
        return "-"
    low, high = metrics.get(f"{prefix}auc_folds_low", float("nan")), metrics.get(f"{prefix}auc_folds_high", float("nan"))
    return f"{auc:.4f} ({low:.3f}-{high:.3f})"


def _print_cross_validated(results) -> None:
    """The cross-validated models beside the baselines measured on the same folds, so a user sees at once whether
    the model adds anything."""
    validated = [r for r in results if "lightgbm_auc" in r.metrics]
    if not validated:
        return
    days = {r.embargo_days for r in validated}
    how = "folds grouped by user" if days == {0} else \
        f"folds of snapshot dates, {'/'.join(str(d) for d in sorted(days))}-day embargo"
    table = Table(title=f"cross-validated, {how}: AUC (95 % interval over folds)")
    # "model AUC" is the nested choice's figure (docs/training.md); beside it the rivals a user compares with (the
    # blend's and customer_base's figures are in MLflow: `blend_auc`, `customer_base_auc`)
    for col in ("model", "learner", "folds", "model AUC", "LightGBM", "logistic regression", "BG/NBD", "brier",
                "calib. err"):
        table.add_column(col, justify="left" if col in ("model", "learner") else "right")
    for r in validated:
        m = r.metrics
        table.add_row(r.name, r.learner, f"{int(m['folds'])}", _auc_cell(m, ""), _auc_cell(m, "lightgbm_"),
                      _auc_cell(m, "logistic_"), _auc_cell(m, "bgnbd_"), _fmt(m.get("brier")),
                      _fmt(m.get("calibration_error")))
    console.print(table)


def _interval_cell(row: dict, key: str, signed: bool = False) -> str:
    value, low, high = (row.get(k, float("nan")) for k in (key, f"{key}_low", f"{key}_high"))
    form = "+.3f" if signed else ".3f"
    return "-" if not np.isfinite(value) else f"{value:{form}} [{low:{form}}, {high:{form}}]"


def _print_learner_choice(results) -> None:
    """`auto`'s choice of uplift learner: each candidate's cross-fitted Qini AUC and paired gap to the S-learner,
    and the reason (`training.uplift.pick_learner`, the rule `fit` applied)."""
    from nextbest.training.uplift import pick_learner, selection_table

    for r in results:
        table = selection_table(r.metrics) if r.name == "uplift" else {}
        if not table or not all("qini_auc" in row for row in table.values()):
            continue
        chosen, reason = pick_learner(table)
        out = Table(title="uplift learner (auto): per-offer Qini AUC cross-fitted on the choice's sample, "
                          "95 % intervals (the gap: paired bootstrap over each fold's users, simultaneous over the candidates)")
        for col in ("learner", "folds", "Qini AUC", "gap to s", "chosen"):
            out.add_column(col, justify="left" if col in ("learner", "chosen") else "right")
        for name, row in table.items():
            out.add_row(name, f"{int(row.get('folds', 0))}", _interval_cell(row, "qini_auc"),
                        _interval_cell(row, "gap_to_s", signed=True), "yes" if name == chosen else "")
        console.print(out)
        console.print(f"uplift learner: {escape(reason)}")


def register(app: typer.Typer) -> None:
    """Add the training commands to the `nextbest` app."""

    @app.command()
    def train(
        model: Annotated[str, typer.Argument(help=f"all (every model but channel and offer-net, which no decision reads), label (any labelled outcome), or one of: {', '.join(CLI_MODELS)}")] = "all",
        outcome: Annotated[str | None, typer.Argument(metavar="[NAME]", help="label models: the outcome's name, "
                                                      "registered as nextbest-label-NAME")] = None,
        trials: Annotated[int, typer.Option(min=1, help="Optuna trials per LightGBM model")] = 10,
        as_of: Annotated[str | None, typer.Option("--as-of", help="newest snapshot date for purchase/churn (YYYY-MM-DD)")] = None,
        horizon: Annotated[int, typer.Option(min=1, help="purchase/churn horizon in days")] = 30,
        window: Annotated[int, typer.Option(min=1, help="days after a send in which a conversion or open counts")] = 7,
        labels: Annotated[Path | None, typer.Option(help="labels file (user_id, as_of, label) for `label NAME`, or for churn "
                                                          "instead of inactivity; an as_of without an offset is that day, "
                                                          "midnight UTC")] = None,
        sample_rows: Annotated[int | None, typer.Option("--sample-rows", min=1000, help="rows joined per row set "
                                                        "(contact log, user snapshots); a larger one is sampled, the "
                                                        "same share of each label stratum, and the run records it "
                                                        "[default: NEXTBEST_TRAIN_SAMPLE_ROWS, 500,000]")] = None,
        learner: LearnerOption = "auto",
        dates: Annotated[int, typer.Option(min=1, max=520, help="purchase/churn: weekly snapshot dates, the newest at "
                                                                "--as-of")] = 4,
        split: Annotated[str, typer.Option(help="purchase/churn cross-validation: user (folds grouped by user) or time "
                                                "(folds of snapshot dates, each trained only on rows whose horizon "
                                                "closed before its first date; needs dates spanning several horizons)")] = "user",
        shrink: ShrinkOption = None,
        fits: FitsOption = None,
    ) -> None:
        """Train, validate (user-grouped CV for purchase, churn and label models; one holdout for the contact models),
        register in MLflow, and promote only a challenger that beats the champion on the same rows."""
        settings = Settings()
        started = time.perf_counter()
        results, skipped = _guarded(_train, settings, model, trials, as_of, horizon, window, labels, outcome,
                                     sample_rows, learner, dates, split, shrink, fits)
        table = Table(title=f"trained in {time.perf_counter() - started:.0f} s (holdout metrics)")
        for col in ("model", "version", "rows", "auc / qini", "pr_auc", "logloss", "calib. err", "top 20 %", "champion", "s"):
            table.add_column(col, justify="left" if col in ("model", "champion") else "right")
        for r in results:
            primary = r.metrics.get("auc", r.metrics.get("qini_auc"))
            verdict = ("[green]promoted[/]" if r.decision["promoted"] else "[bold red]not promoted[/]"
                       if r.decision.get("refused") else "kept v" + str(r.decision["champion_version"]))
            table.add_row(r.name, r.version, f"{r.rows:,}", _fmt(primary), _fmt(r.metrics.get("pr_auc")), _fmt(r.metrics.get("logloss")),
                          _fmt(r.metrics.get("calibration_error")), _fmt(r.metrics.get("capture_top20", r.metrics.get("uplift_at_20"))),
                          verdict, f"{r.seconds:.1f}")
        console.print(table)
        _print_cross_validated(results)
        _print_learner_choice(results)
        for r in results:
            for text in r.warnings:
                console.print(f"[bold yellow]warning:[/] {r.name}: {escape(text)}")
            if r.decision.get("refused"):
                console.print(f"[bold red]not promoted:[/] {r.name} v{r.version}: {escape(str(r.decision['reason']))}")
        for name, reason in skipped.items():
            console.print(f"[bold yellow]skipped {name}:[/] {escape(reason)}")

    @app.command()
    def models() -> None:
        """Registered model versions with their aliases and holdout metric."""
        from nextbest.training.registry import list_versions

        rows = _guarded(list_versions, Settings())
        if not rows:
            console.print("no models registered yet: run `nextbest train`")
            return
        table = Table(title="model registry")
        for col in ("model", "version", "aliases", "metric", "value", "created"):
            table.add_column(col)
        for r in rows:
            table.add_row(r["model"], r["version"], r["aliases"], r["metric"], _fmt(r["value"]), r["created"])
        console.print(table)

    @app.command()
    def promote(
        model: Annotated[str, typer.Argument(help=", ".join(CLI_MODELS))],
        version: Annotated[str | None, typer.Option(help="version to promote (default: the challenger)")] = None,
        ignore_alerts: Annotated[bool, typer.Option(help="promote despite open monitoring alerts")] = False,
    ) -> None:
        """Make a version (default: the challenger) the champion, by hand (not while `nextbest monitor` has open
        alerts, unless --ignore-alerts)."""
        from nextbest.monitoring.monitor import promotion_block
        from nextbest.training.registry import promote as run_promote

        blocked = promotion_block(Settings())
        if blocked and not ignore_alerts:
            console.print(f"[bold red]error:[/] {escape(blocked)}; or promote anyway with --ignore-alerts")
            raise typer.Exit(2)
        old, new = _guarded(lambda: run_promote(Settings(), _short(model), version))
        console.print(f"{model}: champion is now version {new} (was {old or 'none'})")

    @app.command()
    def rollback(model: Annotated[str, typer.Argument(help=", ".join(CLI_MODELS))]) -> None:
        """Give the champion alias back to the version that held it before."""
        from nextbest.training.registry import rollback as run_rollback

        old, restored = _guarded(lambda: run_rollback(Settings(), _short(model)))
        console.print(f"{model}: champion rolled back from version {old} to {restored}")
