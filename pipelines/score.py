"""`nextbest score`: decisions for the whole user base (or a segment) to Parquet, as a dry run of the contact rules.

The same engine, models and rules as `/decide` (serving/runtime.py `Runtime.score`), in chunks with a progress
bar; nothing is charged to the ledger or written to the decision log. One row per chosen action, and one row
with no offer for a user who gets no contact.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import pyarrow as pa
import pyarrow.parquet as pq
import typer

from nextbest.features.settings import Settings

__all__ = ["ScoreConfig", "score", "score_on_spark", "score_model", "register", "SCHEMA"]

SCHEMA = pa.schema([
    ("user_id", pa.string()), ("decision_id", pa.string()), ("rank", pa.int16()), ("offer_id", pa.string()),
    ("channel", pa.string()), ("send_at", pa.timestamp("us", tz="UTC")), ("expected_value", pa.float64()),
    ("p_convert", pa.float64()), ("uplift", pa.float64()), ("propensity", pa.float64()), ("explored", pa.bool_()),
    ("filtered", pa.int32()), ("degraded_reasons", pa.string()),
])


@dataclass(frozen=True)
class ScoreConfig:
    """What to score and where to write it."""

    out: Path | None = None  # default: <home>/scores/decisions-<UTC time>.parquet
    where: str | None = None  # a segment rule in the eligibility language, e.g. `lifecycle_stage in [customer]`
    user_ids: tuple[str, ...] | None = None  # only these users (default: everyone the online store knows)
    campaign_id: str = "batch"
    offers: tuple[str, ...] | None = None
    channels: tuple[str, ...] | None = None
    n_actions: int = 1
    now: datetime | None = None  # decision time; default: the clock when scoring starts
    chunk: int = 1_000  # users per planner call (the send-time net scores 120 rows per user)


def _job(settings, config):
    """What one scoring run covers, for either engine: the users (all profiles unless named), the campaign context,
    the decision time and the output file (its folder created)."""
    from nextbest.features.store import read_table
    from nextbest.serving.schemas import CampaignContext

    ids = list(config.user_ids) if config.user_ids is not None else \
        read_table(settings, "profile")["user_id"].astype(str).drop_duplicates().tolist()
    context = CampaignContext(campaign_id=config.campaign_id, offers=list(config.offers) if config.offers else None,
                              channels=list(config.channels) if config.channels else None)
    now = (config.now or datetime.now(UTC)).astimezone(UTC)
    out = config.out or settings.home / "scores" / f"decisions-{now.strftime('%Y%m%dT%H%M%SZ')}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    return ids, context, now, out


def _rows(decisions: list[dict]) -> dict[str, list]:
    cols: dict[str, list] = {f.name: [] for f in SCHEMA}
    for d in decisions:
        actions = d["actions"] or [None]
        for rank, a in enumerate(actions):
            cols["user_id"].append(d["user_id"])
            cols["decision_id"].append(d["decision_id"])
            cols["rank"].append(rank if a else -1)
            for key in ("offer_id", "channel", "expected_value", "p_convert", "uplift", "explored"):
                cols[key].append(a[key] if a else None)
            # As a UTC instant: Arrow would store an offset-carrying local time's wall clock as if it were UTC.
            cols["send_at"].append(datetime.fromisoformat(a["send_at"]).astimezone(UTC) if a else None)
            cols["propensity"].append(a["propensity"] if a else d["no_action_propensity"])
            cols["filtered"].append(len(d["filtered"]))
            cols["degraded_reasons"].append(",".join(d["degraded_reasons"]))
    return cols


def score(settings: Settings, config: ScoreConfig = ScoreConfig(), runtime=None,
          progress: Callable[[int, int], None] | None = None) -> dict[str, object]:
    """Score every user (or the chosen ones) and write the decisions; returns a summary."""
    from nextbest.serving.runtime import Runtime

    rt = runtime or Runtime(settings)
    ids, context, now, out = _job(settings, config)
    tmp = out.with_name(f".{out.name}.partial")
    counts: Counter = Counter()
    scored = with_action = degraded = 0
    started = time.perf_counter()
    metadata = {"now": now.isoformat(), "where": config.where or "", "campaign_id": config.campaign_id,
                "model_versions": json.dumps(rt.models.current.versions())}
    try:
        with pq.ParquetWriter(tmp, SCHEMA.with_metadata({f"nextbest.{k}": v for k, v in metadata.items()})) as writer:
            done = 0
            for decisions in rt.score_chunks(ids, context, now, config.n_actions, config.where, config.chunk):
                writer.write_table(pa.table(_rows(decisions), schema=SCHEMA))
                scored += len(decisions)
                with_action += sum(bool(d["actions"]) for d in decisions)
                degraded += sum(bool(d["degraded_reasons"]) for d in decisions)
                counts.update(a["channel"] for d in decisions for a in d["actions"])
                done = min(done + config.chunk, len(ids))
                if progress:
                    progress(done, len(ids))
        tmp.replace(out)  # a complete file or none: readers never see a half-written one
    finally:
        tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    return {"users": len(ids), "scored": scored, "with an action": with_action, "no contact": scored - with_action,
            "degraded": degraded, **{f"channel {c}": n for c, n in sorted(counts.items())},
            "seconds": round(seconds, 1), "users per second": round(scored / seconds) if seconds else scored,
            "models": metadata["model_versions"], "written to": str(out)}


def _spark_type(t: pa.DataType) -> str:
    """The Spark SQL type of one SCHEMA column (the decisions file has the same schema on either engine)."""
    return {pa.string(): "string", pa.int16(): "smallint", pa.int32(): "int", pa.float64(): "double",
            pa.bool_(): "boolean"}.get(t, "timestamp")


def score_on_spark(settings: Settings, config: ScoreConfig = ScoreConfig(), spark=None, runtime=None) -> dict[str, object]:
    """`score` on Apache Spark: users partitioned by id, each partition decided by its own Runtime with the same
    engine code and rules (`mapInPandas`), written as one Parquet file of the same schema; returns a summary."""
    import shutil

    import pandas as pd
    import pyarrow.compute as pc

    from nextbest.features.engines import merge_parts, require_spark, spark_session
    from nextbest.serving.runtime import Runtime

    if spark is None:
        require_spark()
        spark = spark_session(settings.spark_master)
    ids, context, now, out = _job(settings, config)
    # One Runtime in the driver too: the caller's mistakes (an unknown offer) fail here, before any task starts,
    # and the file records the champions' versions.
    rt = runtime or Runtime(settings)
    rt.score(ids[:1], context, now, config.n_actions, config.where)
    metadata = {"now": now.isoformat(), "where": config.where or "", "campaign_id": config.campaign_id,
                "model_versions": json.dumps(rt.models.current.versions()), "engine": "spark"}
    home, chunk, n_actions, where = settings.model_dump(), config.chunk, config.n_actions, config.where

    def decide(batches):
        local = Runtime(Settings(**home))  # one per partition: models load once per task, not per batch
        for batch in batches:
            users = batch["user_id"].astype(str).tolist()
            for start in range(0, len(users), chunk):
                decisions = local.score(users[start:start + chunk], context, now, n_actions, where)
                yield pd.DataFrame(_rows(decisions)).astype({"send_at": "datetime64[us, UTC]"})

    ddl = ", ".join(f"{f.name} {_spark_type(f.type)}" for f in SCHEMA)
    parts = max(1, min(spark.sparkContext.defaultParallelism, -(-len(ids) // chunk)))
    started = time.perf_counter()
    folder = out.with_name(f".{out.name}.parts")
    tmp = out.with_name(f".{out.name}.partial")
    try:
        users = spark.createDataFrame(pd.DataFrame({"user_id": ids}), "user_id string").repartition(parts, "user_id")
        users.mapInPandas(decide, ddl).write.mode("overwrite").parquet(str(folder))
        merge_parts(folder, tmp, SCHEMA.with_metadata({f"nextbest.{k}": v for k, v in metadata.items()}))
        tmp.replace(out)  # a complete file or none: readers never see a half-written one
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
    seconds = time.perf_counter() - started
    table = pq.read_table(out, columns=["user_id", "rank", "channel", "degraded_reasons"])
    first = table.filter(pc.less_equal(table["rank"], 0))
    scored, with_action = first.num_rows, int(pc.sum(pc.equal(first["rank"], 0)).as_py() or 0)
    degraded = int(pc.sum(pc.not_equal(first["degraded_reasons"], "")).as_py() or 0)
    counts = Counter(c for c in table["channel"].to_pylist() if c is not None)
    return {"users": len(ids), "scored": scored, "with an action": with_action, "no contact": scored - with_action,
            "degraded": degraded, **{f"channel {c}": n for c, n in sorted(counts.items())},
            "seconds": round(seconds, 1), "users per second": round(scored / seconds) if seconds else scored,
            "models": metadata["model_versions"], "engine": f"spark ({spark.sparkContext.master})", "partitions": parts,
            "written to": str(out)}


def scoring_date(snapshots, when, explicit: bool):
    """The date a per-user model is scored at: `when`, unless its features would be stale there.

    A feature view's rows serve for its TTL (features/feature_views.py: 30 days) after their snapshot; past it the
    point-in-time join finds nothing and every user would get the score of missing features. So without an
    explicit date, an export whose newest snapshot is older than that (any export of last quarter) is scored at
    that snapshot; an explicit date with no snapshot within the TTL before it is refused with the dates there are.
    """
    import pandas as pd

    from nextbest.features.feature_views import VIEWS
    from nextbest.serving.runtime import UserError

    if snapshots is None or not len(snapshots):
        return when
    ttl = min(t for _, t in VIEWS.values() if t)
    before = snapshots[snapshots <= when]
    if len(before) and when - before[-1] <= ttl:
        return when
    newest = pd.Timestamp(snapshots[-1])
    if not explicit and newest < when:
        return newest
    raise UserError(f"no feature snapshot within {ttl.days} d before {when.date()} (snapshots from {snapshots[0].date()} to "
                    f"{newest.date()}): the features there would all be missing; pass --as-of {newest.date()} or build "
                    f"features for that date (`nextbest features build --as-of {when.date()}`)")


def score_model(settings: Settings, name: str, as_of: datetime | None = None, user_ids: tuple[str, ...] | None = None,
                out: Path | None = None) -> dict[str, object]:
    """One per-user model's champion (churn, purchase, ...) scored for users at a date, on their features as of
    then (a point-in-time join through the model's FeatureService), to Parquet or CSV (by the file's suffix)."""
    import pandas as pd

    from nextbest.features.store import read_table, training_store
    from nextbest.serving.runtime import UserError
    from nextbest.training.datasets import feature_snapshots, historical
    from nextbest.training.registry import LABEL_PREFIX, MODEL_NAMES, load_champions, registered_name
    from nextbest.training.scorers import REQUEST_COLUMNS

    if name not in MODEL_NAMES and not name.startswith(LABEL_PREFIX):
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)} or label-NAME")
    if REQUEST_COLUMNS.get(name):
        raise UserError(f"the {name} model scores an action (it reads {', '.join(REQUEST_COLUMNS[name])}), not a user: "
                         "score decisions with `nextbest score` without --model")
    champion = load_champions(settings, kinds=(name,)).get(name)
    if champion is None:
        raise LookupError(f"{registered_name(name)} has no champion: train it first (nextbest train)")
    when = pd.Timestamp(as_of or datetime.now(UTC))
    when = when.tz_localize("UTC") if when.tzinfo is None else when.tz_convert("UTC")
    users = read_table(settings, "profile")
    ids = list(user_ids) if user_ids is not None else users["user_id"].astype(str).drop_duplicates().tolist()
    started = time.perf_counter()
    store = training_store(settings)
    asked, when = when, scoring_date(feature_snapshots(store), when, explicit=as_of is not None)
    frame = historical(store, pd.DataFrame({"user_id": ids, "event_timestamp": when}), champion.model.feature_service)
    scores = pd.DataFrame({"user_id": frame["user_id"].astype(str), "as_of": when, "model": registered_name(name),
                           "version": champion.version, "score": champion.model.predict(frame)})
    out = out or settings.home / "scores" / f"{name}-{when.strftime('%Y%m%dT%H%M%SZ')}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    try:
        scores.to_csv(tmp, index=False) if out.suffix.lower() == ".csv" else scores.to_parquet(tmp, index=False)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"model": f"{registered_name(name)} version {champion.version}", "as of": when.isoformat(), "users": len(scores),
            "mean score": round(float(scores["score"].mean()), 4), "seconds": round(time.perf_counter() - started, 1),
            "written to": str(out),
            **({"note": f"scored at the newest feature snapshot: now is {(asked - when).days} d past it, beyond the "
                        "features' TTL (--as-of picks another date)"} if when != asked else {})}


def register(app: typer.Typer) -> None:
    """Add `nextbest score` to the CLI."""

    @app.command("score")
    def score_command(
        out: Annotated[Path | None, typer.Option(help="Parquet file to write (default: <home>/scores/...)")] = None,
        where: Annotated[str | None, typer.Option(help="segment rule, e.g. 'lifecycle_stage in [customer]'")] = None,
        users: Annotated[Path | None, typer.Option(help="a text file of user ids, one per line (default: everyone)")] = None,
        campaign: Annotated[str, typer.Option(help="campaign id the decisions are for")] = "batch",
        offer: Annotated[list[str] | None, typer.Option(help="allowed offer (repeatable; default: all)")] = None,
        channel: Annotated[list[str] | None, typer.Option(help="allowed channel (repeatable; default: all)")] = None,
        n_actions: Annotated[int, typer.Option(min=1, max=5, help="actions per user at most")] = 1,
        now: Annotated[datetime | None, typer.Option(help="decision time, ISO-8601 (UTC if no offset); default: now")] = None,
        chunk: Annotated[int, typer.Option(min=1, help="users per planner call")] = 1_000,
        model: Annotated[str | None, typer.Option(help="score one per-user model (e.g. churn, purchase) instead of deciding")] = None,
        as_of: Annotated[datetime | None, typer.Option("--as-of", help="with --model: the date whose features are scored")] = None,
    ) -> None:
        """Decide for every user (or a segment) as a dry run of the contact rules, or score one model with --model;
        written to Parquet (or CSV with --out FILE.csv for --model)."""
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        from nextbest.features.contract import parse_eligibility
        from nextbest.pipelines.cli import run_guarded, summary
        from nextbest.pipelines.console import console

        def body() -> dict:
            settings = Settings()
            ids = None if users is None else \
                tuple(line.strip() for line in users.read_text().splitlines() if line.strip())
            if model is not None:
                return score_model(settings, model, as_of, ids, out)
            if as_of is not None:
                raise typer.BadParameter("--as-of goes with --model (decisions are made now, or at --now)")
            if where:
                try:
                    parse_eligibility(where)
                except ValueError as err:
                    raise typer.BadParameter(f"--where: {err}") from None
            moment = now.replace(tzinfo=UTC) if now is not None and now.tzinfo is None else now
            config = ScoreConfig(out, where, ids, campaign, tuple(offer) if offer else None,
                                 tuple(channel) if channel else None, n_actions, moment, chunk)
            if settings.engine == "spark":  # partitioned by user on Spark (NEXTBEST_ENGINE=spark)
                return score_on_spark(settings, config)
            with Progress(*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          TimeRemainingColumn(), console=console) as bar:
                task = bar.add_task("scoring users", total=None)
                return score(settings, config, progress=lambda done, total: bar.update(task, completed=done, total=total))

        summary("nextbest score", run_guarded(_checked, body), columns=("", "value"))


def _checked(body: Callable[[], dict]) -> dict:
    """Caller mistakes (an unknown offer, channel or model, no champion, no feature tables yet) as clear messages."""
    from nextbest.features.engines import EngineUnavailable
    from nextbest.pipelines.cli import UserError
    from nextbest.serving.runtime import UserError as RequestError

    try:
        return body()
    except (RequestError, LookupError, EngineUnavailable) as err:  # LookupError: a model without a champion
        raise UserError(str(err)) from None
    except FileNotFoundError as err:
        raise UserError(f"{err}; build the features first (nextbest features build, apply, materialize)") from None
