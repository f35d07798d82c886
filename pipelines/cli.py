"""The `nextbest` command line: simulate, ingest, build features, demo."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from nextbest.features.contract import ContractError
from nextbest.features.settings import Settings
from nextbest.pipelines.campaign_commands import register as register_campaigns
from nextbest.pipelines.config_docs import register as register_config
from nextbest.pipelines.console import console
from nextbest.pipelines.report_commands import register as register_reports
from nextbest.pipelines.score import register as register_score
from nextbest.pipelines.serve_commands import register as register_serve
from nextbest.pipelines.train_commands import (
    FitsOption,
    LearnerOption,
    ShrinkOption,
    arm_fits_of,
    learner_problem,
)
from nextbest.pipelines.train_commands import register as register_train

if TYPE_CHECKING:
    import pandas as pd

app = typer.Typer(help="nextbest: which offer, which channel, what time, or no contact at all.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
features_app = typer.Typer(help="Feature tables and the Feast store.", no_args_is_help=True)
app.add_typer(features_app, name="features")
register_train(app)
register_serve(app)
register_config(app)
register_score(app)
register_campaigns(app)
register_reports(app)


@app.callback()
def _quiet_libraries() -> None:
    """Keep library chatter (deprecations, MLflow INFO lines) out of the command's output."""
    import logging
    import os
    import warnings

    import sqlalchemy  # noqa: F401  (it installs its own "once" filter at import: ours must come after it)

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow re-configures its loggers when imported
    quiet = (DeprecationWarning, FutureWarning, UserWarning)
    for category in quiet:
        warnings.filterwarnings("ignore", category=category)
    # Feast prepends its own "once" filter for deprecations when a command first imports it: drop those
    # categories where they would be shown, whatever filters a library installs later.
    shown = warnings.showwarning
    if not getattr(shown, "_nextbest_quiet", False):
        def show(message, category, *args, **kwargs):
            if not issubclass(category, quiet):
                shown(message, category, *args, **kwargs)

        show._nextbest_quiet = True  # type: ignore[attr-defined]
        warnings.showwarning = show
    for name in ("mlflow", "alembic", "feast", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)

__all__ = ["app"]


class UserError(Exception):
    """A mistake the user can fix; printed without a traceback."""


@contextlib.contextmanager
def steps(total: int) -> Iterator[callable]:
    """A progress bar over named steps; yields `advance(description)`."""
    columns = [SpinnerColumn(), TextColumn("{task.description:<28}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("starting", total=total)
        first = [True]

        def advance(description: str) -> None:
            if not first[0]:
                bar.advance(task)
            first[0] = False
            bar.update(task, description=description)

        yield advance
        bar.update(task, completed=total, description="done")


def summary(title: str, rows: dict[str, object], columns: tuple[str, str] = ("table", "rows")) -> None:
    table = Table(title=title)
    table.add_column(columns[0])
    table.add_column(columns[1], justify="right")
    for key, value in rows.items():
        table.add_row(escape(str(key)), f"{value:,}" if isinstance(value, int) else escape(str(value)))
    console.print(table)


def run_guarded(fn, *args, **kwargs):
    """Run a command body; user mistakes become a clear message and exit code 2, never a traceback."""
    try:
        return fn(*args, **kwargs)
    except (ContractError, UserError, FileNotFoundError) as err:
        console.print(f"[bold red]error:[/] {escape(str(err))}")
        raise typer.Exit(code=2) from None


# --- simulate ----------------------------------------------------------------------------------------

def _simulate(settings: Settings, users: int, days: int, seed: int, chunk_users: int | None = None) -> dict[str, int]:
    import pandas as pd

    from nextbest.serving.config import add_tallies, catalog_config, contact_tally, write_config
    from nextbest.simulation import CHUNK_USERS, World, WorldConfig, write_world

    # Whatever its length, the history ends where the default one does, in the past: the online store loads the
    # newest feature rows as of now, so a history running past today would serve none.
    end = WorldConfig().end_ts
    start = (end - pd.Timedelta(days=days)).strftime("%Y-%m-%d")
    config = WorldConfig(n_users=users, days=days, seed=seed, start=start, chunk_users=chunk_users or CHUNK_USERS)
    catalog: dict[str, pd.DataFrame] = {}
    tallies: list[pd.DataFrame] = []

    def keep(chunk: World) -> None:  # what the operator config needs of each chunk (a world may be bigger than memory)
        catalog.update({t: chunk.tables[t] for t in ("offers", "channels") if t in chunk.tables})
        tallies.append(contact_tally(chunk.tables["contacts"]))

    with steps(3) as advance:
        advance("simulating the world and writing raw tables" + (f" in {config.n_chunks} chunks of users"
                                                                 if config.n_chunks > 1 else ""))
        rows = write_world(config, settings.raw_dir, settings.truth_dir, each=keep)
        advance("writing the operator config")
        # The decision service's catalog: the world's offers and channels (used unless NEXTBEST_OPERATOR_CONFIG is set).
        tally = tallies[0] if len(tallies) == 1 else add_tallies(tallies)
        write_config(catalog_config(catalog["offers"], catalog["channels"], tally=tally),
                     settings.home / "operator.yaml",
                     note="written by `nextbest simulate`: the simulated world's catalog; edit freely, the service re-reads it")
        advance("resetting the ledger, logs and campaigns")
        # A new world replaces the old one: the contacts the service made to the old world's users go too.
        if settings.ledger_backend == "sqlite":
            for suffix in ("", "-wal", "-shm"):
                settings.ledger_path.with_name(settings.ledger_path.name + suffix).unlink(missing_ok=True)
            settings.ledger_identity_path.unlink(missing_ok=True)  # a new, empty ledger is meant here, not a lost one
        for path in settings.log_dir.glob("*.jsonl*"):
            path.unlink()
        # ... and its segments and campaigns: an old campaign's audience, approvals and sends name the old world's
        # users (whose ids the new world reuses), so none of it may run on the new one.
        removed = _reset_campaigns(settings)
    if any(removed.values()):
        console.print(f"campaign store reset for the new world: {removed['campaigns']} campaign(s) and "
                      f"{removed['segments']} segment(s) of the old one removed")
    return rows


def _reset_campaigns(settings: Settings) -> dict[str, int]:
    """Empty the home's campaign store, if there is one (one transaction: a service reading it sees none of it)."""
    from nextbest.campaigns.store import CampaignStore, store_path

    path = store_path(settings.home)
    return CampaignStore(path).reset() if path.exists() else {"segments": 0, "campaigns": 0}


@app.command()
def simulate(
    users: Annotated[int, typer.Option(min=10, help="number of users")] = 20_000,
    days: Annotated[int, typer.Option(min=14, help="days of history")] = 120,
    seed: Annotated[int, typer.Option(help="random seed")] = 7,
    chunk_users: Annotated[int | None, typer.Option(min=100, help="users simulated together, each chunk from its own "
                                                    "random stream, so memory is bounded by a chunk (default: "
                                                    "simulation.CHUNK_USERS); a world of one chunk is the same as "
                                                    "before chunks existed")] = None,
) -> None:
    """Generate the simulated marketing world as raw tables (plus its hidden truth, for evaluation only)."""
    settings = Settings()
    started = time.perf_counter()
    rows = run_guarded(_simulate, settings, users, days, seed, chunk_users)
    summary(f"simulated world -> {settings.raw_dir} ({time.perf_counter() - started:.1f} s)", rows)


# --- ingest --------------------------------------------------------------------------------------------

@app.command()
def ingest(
    folder: Annotated[Path | None, typer.Argument(help="folder with <table>.csv / <table>.parquet files")] = None,
    mapping: Annotated[Path | None, typer.Option(help="YAML mapping: files, column renames, formats per table")] = None,
    force: Annotated[bool, typer.Option("--force", help="allow empty users/events to replace the last good data")] = False,
    assume_utc: Annotated[bool, typer.Option("--assume-utc", help="timestamps without an offset are UTC (unless the "
                                             "mapping gives the table a timezone)")] = False,
    allow_dir: Annotated[list[Path] | None, typer.Option("--allow-dir", help="a folder the mapping may read besides its "
                                                         "own (repeatable; also NEXTBEST_DATA_DIR)")] = None,
) -> None:
    """Validate a company's exports against the contract and replace the raw data atomically."""
    from nextbest.features.ingest import ingest as run_ingest
    from nextbest.features.ingest import ingest_window, load_plan, plan_from_dir

    settings = Settings()

    def body() -> dict[str, int]:
        if (folder is None) == (mapping is None):
            raise UserError("give either a FOLDER of <table>.csv/.parquet files or --mapping FILE")
        allowed = [*(allow_dir or []), *([settings.data_dir] if settings.data_dir else [])]
        plan = load_plan(mapping, allowed) if mapping else plan_from_dir(folder)
        window = ingest_window(settings.ingest_past_years, settings.ingest_future_days)
        with steps(len(plan.tables) + 1) as advance:
            rows = run_ingest(plan, settings.raw_dir, progress=lambda t: advance(f"checking {t}"), force=force,
                              assume_utc=assume_utc, window=window)
            advance("swapped in")
        return rows

    rows = run_guarded(body)
    summary(f"ingested -> {settings.raw_dir}", rows)
    _adopt_catalog(settings)


def _adopt_catalog(settings: Settings) -> None:
    """The ingested offers and channels become the decision service's catalog (`<home>/operator.yaml`) when the home
    has no operator config yet, as `simulate` writes its world's; an operator config already in force stays (it may
    carry the operator's edits), with a note when its offers are not the ingested ones."""
    from nextbest.serving.config import ConfigError, ingested_catalog, load_config, write_config

    path = settings.operator_config or settings.home / "operator.yaml"
    adopt = not path.exists() and settings.operator_config is None and not settings.ledger_identity_path.exists()
    try:  # the contact log's channel rules only for a config written here: a config in force is compared by offer
        catalog = ingested_catalog(settings.raw_dir, learn=adopt)
    except ValueError as err:  # the data is in (validated); only the service's catalog could not be made of it
        console.print(f"[bold yellow]note:[/] the ingested offers and channels make no operator config "
                      f"({escape(str(err).splitlines()[0])}): write <home>/operator.yaml by hand (docs/serving.md)")
        return
    if catalog is None:
        return
    if adopt:
        write_config(catalog, path, note="written by `nextbest ingest`: the ingested offers and channels tables; edit "
                     "freely, the service re-reads it")
        console.print(f"decision catalog: the ingested {len(catalog.offers)} offers on {len(catalog.channels)} channels "
                      f"-> {path}")
        return
    try:
        in_force = set(load_config(path).offer_ids()) if path.exists() else set()
    except ConfigError:  # a broken file is the service's to report (/status); ingest only adds a note
        in_force = set()
    if in_force != set(catalog.offer_ids()):
        console.print(f"[bold yellow]note:[/] the decision service's catalog is {escape(str(path))}, not the ingested "
                      "offers table: edit that file (docs/serving.md, Operator config) to decide over the ingested offers")


# --- features --------------------------------------------------------------------------------------------

def _build(settings: Settings, every_days: int, snapshots: int | None, history_days: int | None = 120,
           as_of: str | None = None, online: bool = False) -> dict[str, int]:
    import duckdb
    import pandas as pd
    import pyarrow.parquet as pq

    from nextbest.features.build import BuildConfig, build_features
    from nextbest.features.engines import EngineUnavailable
    from nextbest.features.ingest import manifest, raw_path

    manifest(settings.raw_dir)  # a clear error if nothing was ingested
    paths = {t: raw_path(settings.raw_dir, t) for t in ("users", "events")}
    if any(p is None or pq.ParquetFile(p).metadata.num_rows == 0 for p in paths.values()):
        raise UserError("the ingested data has no users or no events (ingested with --force?): nothing to build "
                        "features from; ingest data with both")
    first = pd.Timestamp(duckdb.sql(f"SELECT min(ts) FROM read_parquet('{str(paths['events']).replace(chr(39), chr(39) * 2)}')")
                         .fetchone()[0])
    when = snapshot_date(as_of, first) if as_of else None
    config = BuildConfig(snapshot_every_days=every_days, snapshots=snapshots, history_days=history_days or None,
                         seed=settings.seed)
    try:
        with steps(7) as advance:
            progress = lambda name: advance(f"building {name}")  # noqa: E731
            if not online:
                rows = build_features(settings, config, as_of=when, progress=progress)
            else:  # on Redis each slice of users goes online while the next is built (`build_and_materialize`)
                from nextbest.features.store import build_and_materialize

                rows, users = build_and_materialize(
                    settings, lambda written: build_features(settings, config, as_of=when, progress=progress, written=written))
                rows = {**rows, **{f"online {view} (users)": n for view, n in users.items()}}
            advance(f"feature tables written ({settings.engine}){', applied and online' if online else ''}")
            return rows
    except EngineUnavailable as err:
        raise UserError(str(err)) from None


def snapshot_date(text: str, first: pd.Timestamp | None) -> pd.Timestamp:
    """`--as-of` as a midnight-UTC snapshot time after the first event (`first`), or a UserError saying what is wrong."""
    import pandas as pd

    try:
        when = pd.Timestamp(text)
    except ValueError:
        raise UserError(f"--as-of {text!r} is not a date (use YYYY-MM-DD)") from None
    when = when.tz_localize("UTC") if when.tzinfo is None else when.tz_convert("UTC")
    if when != when.floor("D"):
        raise UserError(f"--as-of {text!r}: snapshots are taken at midnight UTC; give a date (YYYY-MM-DD)")
    first = None if first is None or pd.isna(first) else pd.Timestamp(first)
    first = None if first is None else (first.tz_localize("UTC") if first.tzinfo is None else first.tz_convert("UTC"))
    if first is None or when <= first:
        raise UserError(f"--as-of {when.date()} is not after the first event"
                        f"{f' ({first.date()})' if first is not None else ' (there are no events)'}: pick a later date")
    return when


@features_app.command("build")
def features_build(
    every_days: Annotated[int, typer.Option(min=1, help="days between training snapshots")] = 7,
    snapshots: Annotated[int | None, typer.Option(min=1, help="keep only the newest N snapshots")] = None,
    history_days: Annotated[int, typer.Option(min=0, help="days of snapshots before the newest, or before --as-of "
                                               "(0 = all history)")] = 120,
    as_of: Annotated[str | None, typer.Option("--as-of", help="a training date (YYYY-MM-DD): the snapshot grid runs "
                                              "through it, so `train --as-of` joins a snapshot taken exactly then")] = None,
    online: Annotated[bool, typer.Option("--online", help="also apply and materialize; on Redis each slice of users "
                                         "is loaded while the next is built")] = False,
) -> None:
    """Raw tables -> point-in-time feature tables (Parquet)."""
    settings = Settings()
    started = time.perf_counter()
    rows = run_guarded(_build, settings, every_days, snapshots, history_days, as_of, online)
    summary(f"feature tables -> {settings.feature_dir} ({time.perf_counter() - started:.1f} s)", rows, ("feature table", "rows"))


def _apply(settings: Settings) -> dict[str, object]:
    from nextbest.features.engines import EngineUnavailable
    from nextbest.features.store import apply

    try:
        store = apply(settings)
    except EngineUnavailable as err:  # the Spark offline store without PySpark or Java
        raise UserError(str(err)) from None
    rows: dict[str, object] = {f"view {v.name}": f"{len(v.features)} features" for v in store.list_feature_views()}
    rows.update({f"service {s.name}": f"{sum(len(p.features) for p in s.feature_view_projections)} features"
                 for s in store.list_feature_services()})
    return rows


@features_app.command("apply")
def features_apply() -> None:
    """Register the entity, feature views and FeatureServices with Feast."""
    settings = Settings()
    summary(f"feast apply ({settings.offline_engine} offline, {settings.online_store} online store)",
            run_guarded(_apply, settings), ("object", "size"))


def _materialize(settings: Settings) -> dict[str, int]:
    from nextbest.features.store import feature_store, materialize

    views = feature_store(settings).list_feature_views()
    if not views:
        raise UserError("no feature views registered: run `nextbest features apply` first")
    with steps(len(views) + 1) as advance:
        rows = materialize(settings, progress=lambda view, n: advance(f"online <- {view} ({n:,})"))
        advance("done")
    return rows


@features_app.command("materialize")
def features_materialize() -> None:
    """Load each user's newest feature values into the online store."""
    settings = Settings()
    started = time.perf_counter()
    rows = run_guarded(_materialize, settings)
    summary(f"online store ({settings.online_store}) ({time.perf_counter() - started:.1f} s)", rows, ("feature view", "users"))
    from nextbest.features.store import SQLITE_ADVISED_USERS

    if settings.online_store == "sqlite" and max(rows.values(), default=0) > SQLITE_ADVISED_USERS:
        console.print(f"[yellow]note:[/] {max(rows.values()):,} users in the SQLite online store; past "
                      f"{SQLITE_ADVISED_USERS:,} use Redis (NEXTBEST_ONLINE_STORE=redis, see README: Online store)")


# --- evaluate ------------------------------------------------------------------------------------------

_SHOWN = {"contacts": "contacts", "incremental_conversions": "incr. conv.", "incremental_revenue": "incr. revenue",
          "cost": "cost", "roi": "ROI", "unsubscribes": "unsubs", "complaints": "complaints",
          "unsubscribes_per_1k": "unsubs /1k", "complaints_per_1k": "compl. /1k", "violations": "violations",
          "share_of_oracle": "of oracle", "share_of_history_oracle": "of history oracle"}
_SHARES = ("share_of_oracle", "share_of_history_oracle")


def _evaluate(settings: Settings, users: int | None, days: int) -> tuple:
    from nextbest.pipelines.evaluate import evaluate_policies, operator_rules, write_report
    from nextbest.simulation.replay import ReplayConfig

    with steps(10) as advance:
        table, ope = evaluate_policies(settings, ReplayConfig(days=days, rules=operator_rules(settings)), users=users, progress=advance)
    png, html = write_report(table, settings.home / "reports")
    return table, ope, png, html


def print_evaluation(table, ope, png, html) -> None:
    out = Table(title="policies replayed over the same fresh simulated period (incremental = over no contact)")
    out.add_column("policy")
    for label in _SHOWN.values():
        out.add_column(label, justify="right")
    for policy, row in table.iterrows():
        out.add_row(policy, *[_fmt(row[c]) if c not in _SHARES else f"{row[c]:.0%}" for c in _SHOWN])
    console.print(out)
    console.print("history oracle: the oracle deciding on each user's interests and channel responses as the logged "
                  "history tells them (every other trait exact): what no policy scored on this history can beat")
    est = Table(title="off-policy estimates of the NBA policy from the logged history (reward: conversion in 7 d)")
    for col in ("method", "estimate", "95% CI", "simulated truth", "error"):
        est.add_column(col, justify="right")
    for _, r in ope.iterrows():
        est.add_row(r["method"], f"{r['value']:.4f}", f"[{r['ci_low']:.4f}, {r['ci_high']:.4f}]", f"{r['simulated_truth']:.4f}",
                    f"{r['error']:+.1%}")
    console.print(est)
    console.print(f"report: {html} (chart {png})")


def sample_users(contacts, users: int | None, seed: int):
    """The logged decisions of a seeded sample of `users` users (all their decisions), or all when `users` is None
    or the log has no more users than that: `evaluate --logs --users`."""
    import numpy as np

    ids = contacts["user_id"].astype(str)
    if users is None or ids.nunique() <= users:
        return contacts
    keep = np.random.default_rng(seed).choice(np.sort(ids.unique()), size=users, replace=False)
    return contacts[ids.isin(set(keep)).to_numpy()]


def judged_contacts(contacts, users: int | None, seed: int):
    """The logged decisions `evaluate --logs` judges: those of a seeded sample of users (`sample_users`), read as the
    off-policy judge reads them (`offpolicy.judged_log`: the service's own rows at their probability among sends and
    hold-outs)."""
    import pandas as pd

    from nextbest.pipelines.offpolicy import judged_log

    contacts = sample_users(contacts, users, seed)
    return judged_log(contacts) if isinstance(contacts, pd.DataFrame) else contacts


def _evaluate_logs(settings: Settings, window: int, folds: int, learners: str, users: int | None):
    from nextbest.features.engines import EngineUnavailable
    from nextbest.features.store import training_store
    from nextbest.pipelines.offpolicy import LogsConfig, frame_feasibility, policy_values
    from nextbest.training.jobs import read_raw_tables
    from nextbest.training.uplift import LEARNERS, UpliftConfig, build_frame

    names = tuple(n.strip() for n in learners.split(",") if n.strip())
    if not names or set(names) - set(LEARNERS):
        raise UserError(f"--learners {learners!r}: name some of {', '.join(LEARNERS)}, comma-separated")
    if not settings.feature_dir.exists():
        raise UserError(f"no feature tables in {settings.feature_dir}: run `nextbest features build` and "
                        "`features apply` first")
    raw = read_raw_tables(settings)
    if raw.get("contacts") is None:
        raise UserError("no contacts table: off-policy evaluation reads the contact log (`nextbest ingest`)")
    raw = {**raw, "contacts": judged_contacts(raw["contacts"], users, settings.seed)}
    try:
        data = build_frame(training_store(settings), raw, UpliftConfig(window_days=window))
        # Each policy takes only the actions open at the logged decision (the logging policy's support), as the
        # retrain gate's do: consent, suppressions, validity, eligibility, the service's refused pairs.
        return policy_values(data, LogsConfig(folds=folds, learners=names, seed=settings.seed),
                             feasible=frame_feasibility(raw, data.frame)), window
    except (ValueError, EngineUnavailable) as err:  # what the log lacks: a control group, complete outcome windows, ...
        raise UserError(str(err)) from None


def print_logs_evaluation(table, window: int) -> None:
    out = Table(title=f"policies judged on the contact log, cross-fitted over users (reward: conversion within "
                      f"{window} d; {table.attrs['logged']:,} logged decisions)")
    for col in ("policy", "SNIPS", "95% CI", "DR", "95% CI", f"DR vs {table.attrs['best_fixed']}", "matched", "contacted"):
        out.add_column(escape(col), justify="left" if col == "policy" else "right")
    for policy, r in table.iterrows():
        out.add_row(escape(str(policy)), f"{r['snips']:.4f}", escape(f"[{r['snips_low']:.4f}, {r['snips_high']:.4f}]"),
                    f"{r['dr']:.4f}", escape(f"[{r['dr_low']:.4f}, {r['dr_high']:.4f}]"),
                    escape(f"{r['vs_best_fixed']:+.4f} [{r['vs_best_fixed_low']:+.4f}, {r['vs_best_fixed_high']:+.4f}]"),
                    f"{int(r['matched']):,}", f"{r['contacted_share']:.0%}")
    console.print(out)
    console.print(escape(f"each row is its own noisy estimate: the highest of many fixed policies' rows is biased upward "
                         f"(on the demo world +36 % at 2,000 users, +14 % at 5,000); compare a policy with "
                         f"'DR vs {table.attrs['best_fixed']}', whose reference is chosen on the other folds"))
    for learner, shrink in table.attrs.get("shrinkage", {}).items():
        console.print(escape(f"{learner}: shrinkage strength {shrink['strength']:g} (per fold "
                             f"{', '.join(f'{s:g}' for s in shrink['by_fold'])}): each user's uplift moved toward the "
                             "action's average effect, 0 = the best fixed action for everyone; "
                             f"'{learner} (argmax)' is the same model's raw argmax"))


@app.command()
def evaluate(
    users: Annotated[int, typer.Option(min=0, help="users sampled from the world, or from the log with --logs "
                                                   "(0 = all)")] = 5_000,
    days: Annotated[int, typer.Option(min=1, help="days of the fresh period")] = 14,
    logs: Annotated[bool, typer.Option("--logs", help="judge policies on the ingested contact log instead of the "
                                                      "simulator: each uplift learner's policy and the fixed policies, "
                                                      "off-policy (SNIPS, DR), cross-fitted over users")] = False,
    window: Annotated[int, typer.Option(min=1, help="--logs: days after a send in which a conversion counts")] = 7,
    folds: Annotated[int, typer.Option(min=2, help="--logs: cross-fitting folds")] = 3,
    learners: Annotated[str, typer.Option(help="--logs: uplift learners whose policies are judged")] = "t,x,dr",
) -> None:
    """Replay the NBA policy and the baselines over a fresh simulated period, plus off-policy estimates; with
    --logs, judge policies on a company's own contact log (no simulator)."""
    settings = Settings()
    if logs:
        print_logs_evaluation(*run_guarded(_evaluate_logs, settings, window, folds, learners, users or None))
        return
    print_evaluation(*run_guarded(_evaluate, settings, users or None, days))


# --- retrain ---------------------------------------------------------------------------------------------

def print_gate_policies(policies: dict[str, dict]) -> None:
    """The policy gate's evidence: each model set's policy (champions, challengers, and a shrunk uplift model's raw
    argmax beside its set), DR with its interval and the paired difference to the champions."""
    from nextbest.pipelines.retrain import ARGMAX_SUFFIX

    simulated = any(isinstance(v := r.get("incremental_revenue"), float) and not math.isnan(v) for r in policies.values())
    out = Table(title="policy gate: the NBA policy of each model set on the same logged decisions")
    columns = ["models", "DR", "95% CI", "DR vs champions", "matched"] + (["sim. incr. revenue"] if simulated else [])
    for col in columns:
        out.add_column(escape(col), justify="left" if col == "models" else "right")
    for label, r in policies.items():
        cells = [escape(label), f"{r['dr']:.4f}", escape(f"[{r['dr_low']:.4f}, {r['dr_high']:.4f}]"),
                 escape(f"{r['dr_diff']:+.4f} [{r['dr_diff_low']:+.4f}, {r['dr_diff_high']:+.4f}]"), f"{int(r['matched']):,}"]
        out.add_row(*cells, *([_fmt(r.get("incremental_revenue"))] if simulated else []))
    console.print(out)
    if any(label.endswith(ARGMAX_SUFFIX) for label in policies):
        console.print(f"'<set>{ARGMAX_SUFFIX}': the same models with the uplift model's raw argmax (its shrinkage off), "
                      "judged beside it, not a candidate for promotion")



def model_result(name: str, trained: dict, gated: dict, decision: dict | None) -> str:
    """One line of retrain's models table: the version and what became of it, and by which gate."""
    if trained.get("deferred"):  # judged by the policy gate, or on its holdout where the gate fell back to it
        by = "on the holdout (the policy gate's fallback)" if (decision or {}).get("by") == "holdout" else "by the policy gate"
        return f"v{trained['version']} {'promoted' if name in gated else 'kept champion'} {by}"
    return f"v{trained['version']} {'promoted' if trained['promoted'] else 'kept champion'} on the holdout"


@app.command()
def retrain(
    source: Annotated[Path | None, typer.Argument(help="new data: a folder of table files or a mapping YAML (default: keep)")] = None,
    trials: Annotated[int, typer.Option(min=1, help="Optuna trials per LightGBM model")] = 5,
    fresh: Annotated[bool, typer.Option("--fresh", help="start a new run instead of resuming a failed one")] = False,
    learner: LearnerOption = "auto",
    shrink: ShrinkOption = None,
    fits: FitsOption = None,
    assume_utc: Annotated[bool, typer.Option("--assume-utc", help="timestamps without an offset in SOURCE are UTC "
                                             "(unless the mapping gives the table a timezone), as `ingest --assume-utc`")] = False,
) -> None:
    """Ingest -> features -> online -> train challengers -> evaluate; promotes only better models; resumable."""
    from nextbest.pipelines.retrain import STEPS, RetrainConfig
    from nextbest.pipelines.retrain import retrain as run_retrain

    settings = Settings()

    def body() -> dict:
        if learner_problem(learner):
            raise UserError(learner_problem(learner))
        try:
            arm_fits = arm_fits_of(fits, learner)
        except ValueError as err:
            raise UserError(str(err)) from None
        config = RetrainConfig(source=source, trials=trials, uplift_learner=learner, uplift_shrinkage=shrink,
                               uplift_arm_fits=arm_fits, assume_utc=assume_utc)
        with steps(len(STEPS)) as advance:
            try:
                return run_retrain(settings, config, resume=not fresh,
                                   progress=lambda step: advance(f"retrain: {step}"))
            except (ContractError, UserError, FileNotFoundError):
                raise
            except Exception as err:  # a step failed: the last good features and models keep serving
                raise UserError(f"retrain stopped ({err}); the last good features and models are still in place. "
                                "Fix the cause and run `nextbest retrain` again to resume from the failed step.") from None

    state = run_guarded(body)
    summary(f"retrain run {state['run_id']}: {state['status']}",
            {step: info.get("status", "-") for step, info in state["steps"].items()}, ("step", "status"))
    models = state["steps"].get("train", {}).get("models", {})
    gated = state["steps"].get("promote", {}).get("promoted", {})
    decision = state["steps"].get("evaluate", {}).get("decision")

    if models:
        summary("models", {name: model_result(name, m, gated, decision) for name, m in models.items()}, ("model", "result"))
    for name, why in state["steps"].get("train", {}).get("skipped", {}).items():
        console.print(f"[bold yellow]skipped {name}:[/] {escape(str(why))}")
    policies = state["steps"].get("evaluate", {}).get("policies")
    if policies:
        print_gate_policies(policies)
    if decision:
        console.print(f"policy gate: {escape(str(decision['reason']))}")
    if state["steps"].get("promote", {}).get("refused"):
        console.print(f"[bold yellow]promotion held:[/] {escape(state['steps']['promote']['refused'])}")


# --- closed loop -----------------------------------------------------------------------------------------

@app.command()
def loop(
    rounds: Annotated[int, typer.Option(min=1, help="rounds of events -> decide -> outcomes -> feedback -> retrain")] = 3,
    days: Annotated[int, typer.Option(min=1, help="simulated days per round")] = 3,
    trials: Annotated[int, typer.Option(min=1, help="Optuna trials per LightGBM model at each retraining")] = 2,
    service: Annotated[str | None, typer.Option(help="drive the decision service running at this URL, e.g. "
                                                "http://127.0.0.1:3000; without it the loop starts one on 127.0.0.1 "
                                                "for its rounds and stops it after")] = None,
    users: Annotated[int | None, typer.Option(min=1, help="users the campaign addresses (default all)")] = None,
) -> None:
    """Close the loop in simulation, through the decision service: the simulated world talks to it only over HTTP
    (/events, /decide_batch, /feedback, /reload), the service's exploration and hold-outs apply, and retraining
    learns from the service's own logs. Nothing but the service writes a contact.

    A service given with --service must believe simulated times: serve it with NEXTBEST_MAX_AGE_S,
    NEXTBEST_CLOCK_SKEW_S and NEXTBEST_MAX_OUTCOME_AGE_S wide enough for simulated days (see docs/serving.md); the
    one the loop starts itself is set up so.
    """
    settings = Settings()
    if service is not None:
        run_guarded(_service_loop, settings, service, rounds, days, trials, users)
        return
    from nextbest.pipelines.serve_commands import running_service
    from nextbest.pipelines.service_loop import simulated_clock

    # The loop's own service: loopback only, believing the simulated calendar, stopped when the rounds end.
    simulated = simulated_clock(settings)

    def body() -> None:
        if not (settings.truth_dir / "truth.json").exists():  # before a service is started for nothing
            raise UserError(f"no simulated world in {settings.home}: the loop runs one (`nextbest simulate`, "
                            "`nextbest features build`, `nextbest train all`, then `nextbest loop`)")
        with running_service(simulated) as url:
            _service_loop(settings, url, rounds, days, trials, users)

    run_guarded(body)


def _service_loop(settings: Settings, url: str, rounds: int, days: int, trials: int, users: int | None) -> None:
    import httpx

    from nextbest.pipelines.service_loop import ServiceError, ServiceLoopConfig, run_service_loop

    headers = {"Authorization": f"Bearer {settings.api_key.get_secret_value()}"} if settings.api_key else {}
    config = ServiceLoopConfig(rounds=rounds, days=days, trials=trials, users=users)
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=120) as client, steps(rounds * 6) as advance:
            table = run_service_loop(settings, client, config, progress=advance)
    except (httpx.HTTPError, ServiceError) as err:
        raise UserError(f"the decision service at {url} did not answer as expected ({err}); start it with "
                        "`nextbest serve` on this home and simulated-time settings (docs/serving.md)") from None
    print_service_loop(table)


def print_service_loop(table: pd.DataFrame) -> None:
    out = Table(title="closed loop through the service: per round (expected incremental revenue under the simulated truth)")
    for col in ("round", "start", "decisions", "controls", "contacts", "NBA revenue", "oracle revenue", "share of oracle",
                "unsubs /1k", "complaints /1k", "violations", "yardstick", "yardstick share"):
        out.add_column(col, justify="right")
    for k, r in table.iterrows():
        # Rounds recorded before the yardstick existed have none.
        yard = r.get("yardstick_revenue")
        yard = None if yard is None or yard != yard else yard  # absent, or NaN in a table mixing both kinds
        out.add_row(str(k), str(r["start"]), f"{r['decisions']:,}", f"{r['controls']:,}", f"{r['contacts']:,}",
                    f"{r['incremental_revenue']:,.0f}", f"{r['oracle_revenue']:,.0f}", f"{r['share_of_oracle']:.0%}",
                    f"{r['unsubscribes_per_1k']:.1f}", f"{r['complaints_per_1k']:.1f}", str(r["violations"]),
                    "" if yard is None else f"{yard:,.0f}", "" if yard is None else f"{r['yardstick_share']:.0%}")
    console.print(out)


# --- demo ------------------------------------------------------------------------------------------------

@app.command()
def demo(
    users: Annotated[int, typer.Option(min=100, help="users in the simulated world")] = 20_000,
    days: Annotated[int, typer.Option(min=30, help="days of simulated history")] = 120,
    seed: Annotated[int, typer.Option(help="random seed")] = 7,
    trials: Annotated[int, typer.Option(min=1, help="Optuna trials per LightGBM model")] = 5,
    campaign: Annotated[bool, typer.Option(help="step 9, a campaign with a copy experiment on the running service "
                                           "(--no-campaign leaves it out)")] = True,
) -> None:
    """The main job on embedded defaults: simulate -> features -> train -> evaluate policies -> serve decisions -> one
    round of the closed loop through the service -> a campaign with a copy experiment, approved and run."""
    settings = Settings()
    started = time.perf_counter()
    console.rule("1. simulate the marketing world")
    summary("raw tables", run_guarded(_simulate, settings, users, days, seed))
    console.rule("2. build point-in-time feature tables")
    summary("feature tables", run_guarded(_build, settings, 7, None), ("feature table", "rows"))
    console.rule("3. register with Feast and materialise online")
    summary("feast objects", run_guarded(_apply, settings), ("object", "size"))
    summary("online store", run_guarded(_materialize, settings), ("feature view", "users"))
    console.rule("4. online features for three users (FeatureService decision_v1)")
    _show_online(settings, n=3)
    console.rule("5. train, register and promote every model (MLflow)")
    app(args=["train", "all", "--trials", str(trials)], standalone_mode=False)
    console.rule("6. the NBA policy against the baselines, in a fresh simulated period")
    print_evaluation(*run_guarded(_evaluate, settings, 4_000, 14))
    console.rule("7. the decision service answering sample requests over HTTP")
    run_guarded(_serve_demo, settings, seed if campaign else None)
    console.rule(f"{10 if campaign else 9}. this week's report from the logs, and the dashboard")
    _show_report(settings)
    console.print(f"[green]demo finished in {time.perf_counter() - started:.0f} s[/]; state in {settings.home.resolve()}")


def _show_online(settings: Settings, n: int) -> None:
    from nextbest.features.ingest import read_raw
    from nextbest.features.store import feature_store

    store = feature_store(settings)
    ids = read_raw(settings.raw_dir, "users")["user_id"].astype(str).head(n).tolist()
    values = store.get_online_features(features=store.get_feature_service("decision_v1"),
                                       entity_rows=[{"user_id": u} for u in ids]).to_dict()
    shown = ["user_id", "lifecycle_stage", "rfm_segment", "value_tier", "purchases_90d", "revenue_90d",
             "open_rate_email", "contacts_7d", "peak_open_hour", "scorecard", "last_event_type"]
    table = Table(title="online features (one column per user)")
    table.add_column("feature")
    for uid in ids:
        table.add_column(uid, justify="right")
    for col in shown[1:]:
        if col in values:
            table.add_row(col, *[_fmt(v) for v in values[col]])
    console.print(table)


def _serve_demo(settings: Settings, campaign_seed: int | None) -> None:
    """Steps 7, 8 and 9 on one running service: sample requests, a campaign round of the closed loop, then (unless
    `campaign_seed` is None) a marketer's campaign with a copy experiment."""
    from nextbest.pipelines.service_loop import demo_round

    def show_requests(rows: list[dict]) -> None:
        _show_decisions(rows)
        console.rule("8. the closed loop through the service: a campaign round over HTTP (events, decide, feedback)")

    def then(client, table) -> None:
        print_service_loop(table)
        if campaign_seed is not None:
            console.rule("9. a campaign: segment, four copies, approval, batches, the copy test's winner")
            _show_campaign(settings, client, campaign_seed)

    demo_round(settings, before=show_requests, after=then)


def _show_decisions(rows: list[dict]) -> None:
    table = Table(title="decisions from the running service (127.0.0.1)")
    for col in rows[0] if rows else []:
        table.add_column(col)
    for row in rows:
        table.add_row(*[str(v) for v in row.values()])
    console.print(table)


def _show_campaign(settings: Settings, client, seed: int) -> None:
    from nextbest.pipelines.campaign_demo import campaign_demo

    started = time.perf_counter()
    result = campaign_demo(settings, client, seed)
    for k, run in enumerate(result["runs"]):
        summary(f"campaign {result['campaign_id']}, run {k + 1}",
                {key: run[key] for key in ("audience", "done", "sends", "held_out", "cost", "stopped", "state")},
                columns=("", "value"))
    table = Table(title=f"copy experiment (planted best copy: {result['planted_best']})")
    for col in ("offer", "copy", "sent", "clicked", "rate", "needed per copy", "winner"):
        table.add_column(col)
    for row in result["experiment"]:
        for k, v in enumerate(row["variants"]):
            table.add_row(row["offer_id"], v, str(row["n"][k]), str(row["successes"][k]), f"{row['rates'][k]:.3f}",
                          str(row["required_per_arm"]), "yes" if row["winner"] == v else "")
    console.print(table)
    winners = {row["winner"] for row in result["experiment"]}
    verdict = "no winner yet (the test needs more users)" if winners == {None} else \
        f"winner {', '.join(sorted(w for w in winners if w))} (planted best: {result['planted_best']})"
    console.print(f"campaign step: {verdict}; {time.perf_counter() - started:.0f} s")


def _show_report(settings: Settings) -> None:
    from nextbest.monitoring.dashboard import address
    from nextbest.pipelines.report_commands import write_report

    out = run_guarded(write_report, settings, "week", None, None)
    console.print(f"report (HTML with charts, one CSV per table): {out / 'report.html'}")
    console.print(f"dashboard: run `nextbest dashboard`, then open {address(settings.host, settings.dashboard_port)}")


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return str(value)


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
