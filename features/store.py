"""The Feast store wired from Settings: write feature tables, apply definitions, materialise online."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import pandas as pd
import pyarrow as pa
from feast import FeatureStore
from feast.repo_config import RepoConfig

from nextbest.features.entities import user
from nextbest.features.feature_services import feature_services, label_service
from nextbest.features.feature_views import VIEWS, feature_views, table_path
from nextbest.features.online_sqlite import write_view
from nextbest.features.settings import Settings

__all__ = ["repo_config", "feature_store", "training_store", "foreign_sources", "follow_home", "write_repo_yaml",
           "write_tables", "apply", "apply_label_service",
           "materialize", "build_and_materialize",
           "read_table", "publish_tables", "newest_rows", "newest_batches", "materialized_tables", "SQLITE_ADVISED_USERS",
           "LOAD_BATCH"]


def repo_config(settings: Settings, cache_ttl_seconds: int = 60) -> RepoConfig:
    """Feast configuration: DuckDB (default), file or Spark offline, SQLite (default) or Redis online, file registry.

    `cache_ttl_seconds` is how long Feast trusts its cached registry; 0 means until `refresh_registry()`
    (the decision service refreshes it off the request path when the registry file changes).
    """
    feast_dir = settings.feast_dir.resolve()
    if settings.online_store == "redis":
        online = {"type": "redis", "connection_string": settings.redis_url}
    else:
        online = {"type": "sqlite", "path": str(feast_dir / "online.db")}
    return RepoConfig(
        project=settings.project,
        provider="local",
        registry={"registry_type": "file", "path": str(feast_dir / "registry.db"), "cache_ttl_seconds": cache_ttl_seconds},
        online_store=online,
        offline_store=_offline_config(settings),
        entity_key_serialization_version=3,
        repo_path=str(feast_dir),
    )


def _offline_config(settings: Settings) -> dict:
    """Feast's offline store section. Spark's carries the session settings of our own Spark work (master, UTC, ...):
    whoever starts the session first, Feast or nextbest, starts the same one."""
    if settings.offline_engine == "spark":
        import importlib.util

        from nextbest.features.engines import spark_conf

        try:
            installed = importlib.util.find_spec("pyspark") is not None
        except ValueError:
            installed = False
        if not installed:
            # Feast imports the Spark store's module (and PySpark) to read this section at all: without the extra (a
            # decision service's image) the store could not even serve online. Such a process reads online only;
            # `apply` and `training_store` ask for the extra before any offline work.
            return {"type": "duckdb"}
        return {"type": "spark", "spark_conf": spark_conf(settings.spark_master)}
    return {"type": settings.offline_engine}


def feature_store(settings: Settings, cache_ttl_seconds: int = 60) -> FeatureStore:
    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    return FeatureStore(config=repo_config(settings, cache_ttl_seconds), repo_path=str(settings.feast_dir.resolve()))


def write_repo_yaml(settings: Settings) -> Path:
    """`<home>/feast/feature_store.yaml`: the same store config as a file, so Feast's own tools (`feast -c <home>/feast
    feature-views list`, `feast ui`, `feast serve`, `feast materialize`) work on the repository as on any other."""
    import yaml

    config = repo_config(settings).model_dump(mode="json", by_alias=True, exclude_unset=True)
    # Paths relative to the repository (Feast resolves them against the folder of this file): a moved home still works.
    config.pop("repo_path", None)
    config["registry"]["path"] = "registry.db"
    if config["online_store"].get("type") == "sqlite":
        config["online_store"]["path"] = "online.db"
    path = settings.feast_dir / "feature_store.yaml"
    tmp = path.with_name(".feature_store.yaml.tmp")
    tmp.write_text("# written by `nextbest features apply` from the NEXTBEST_* settings; edits are overwritten\n"
                   + yaml.safe_dump(config, sort_keys=False))
    tmp.replace(path)
    return path


def write_tables(tables: dict[str, pd.DataFrame], feature_dir: Path) -> dict[str, int]:
    """Write feature tables to a staging folder and swap it in whole (a failed build keeps the last good one)."""
    unknown = set(tables) - set(VIEWS)
    if unknown:
        raise ValueError(f"unknown feature table(s) {sorted(unknown)}")

    def write(staging: Path) -> dict[str, int]:
        for name, df in tables.items():
            df.to_parquet(table_path(staging, name), index=False)
        return {name: len(df) for name, df in tables.items()}

    return publish_tables(write, feature_dir)


def publish_tables(write: Callable[[Path], dict[str, int]], feature_dir: Path) -> dict[str, int]:
    """Let `write` fill a staging folder with feature tables, then swap it in whole (a failed build keeps the last
    good one); returns what `write` returned (rows per table)."""
    feature_dir = Path(feature_dir)
    feature_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = feature_dir.parent / f".{feature_dir.name}-staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        rows = write(staging)
        old = feature_dir.parent / f".{feature_dir.name}-old-{uuid.uuid4().hex[:8]}"
        if feature_dir.exists():
            feature_dir.rename(old)
        staging.rename(feature_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return rows


def read_table(settings: Settings, name: str) -> pd.DataFrame:
    path = table_path(settings.feature_dir, name)
    if not path.exists():
        raise FileNotFoundError(f"feature table {name!r} not built: run `nextbest features build` first")
    return pd.read_parquet(path)


def apply(settings: Settings) -> FeatureStore:
    """Register the entity, views and FeatureServices for the current feature tables."""
    if not settings.feature_dir.exists():
        raise FileNotFoundError(f"no feature tables in {settings.feature_dir}: run `nextbest features build` first")
    if settings.offline_engine == "spark":
        from nextbest.features.engines import require_spark

        require_spark()  # before anything is registered: the sources would name a store this machine cannot run
    store = feature_store(settings)
    views = feature_views(settings.feature_dir, settings.offline_engine)
    store.apply([user, *views, *feature_services(views)])
    write_repo_yaml(settings)
    return store


def training_store(settings: Settings) -> FeatureStore:
    """The Feast store point-in-time training sets are read through (`get_historical_features`), its offline store
    ready: on Spark the session is started here (EngineUnavailable with the fix when PySpark or Java is missing),
    and the registered views must have been applied for the offline store in force (ValueError with the fix)."""
    store = feature_store(settings)
    offline = settings.offline_engine
    if offline == "spark":
        from nextbest.features.engines import require_spark, spark_session

        require_spark()
        spark_session(settings.spark_master)  # Feast's store then finds it (the same settings: `_offline_config`)
    kinds = {v.name: "spark" if type(v.batch_source).__name__ == "SparkSource" else "file"
             for v in store.list_feature_views()}
    wrong = sorted(name for name, kind in kinds.items() if (kind == "spark") != (offline == "spark"))
    if wrong:
        raise ValueError(f"the feature views {', '.join(wrong)} were registered for another Feast offline store than "
                         f"the one in force ({offline}, from NEXTBEST_OFFLINE_STORE / NEXTBEST_ENGINE): run `nextbest "
                         "features apply` with the same settings as training")
    return follow_home(settings, store)


def foreign_sources(settings: Settings, store: FeatureStore) -> list[str]:
    """The registered views whose tables lie outside this home's feature folder: a copied or moved home's registry
    still names the original home's files (Feast keeps a source's path as written, and ours are absolute)."""
    own = settings.feature_dir.resolve()
    return sorted(v.name for v in store.list_feature_views()
                  if getattr(v.batch_source, "path", None) and Path(v.batch_source.path).resolve().parent != own)


def follow_home(settings: Settings, store: FeatureStore) -> FeatureStore:
    """`store`, its views re-registered on this home's own tables where the registry names another home's files
    (`foreign_sources`): training on a copied home must read the copy's tables, not the original's."""
    if settings.feature_dir.exists() and foreign_sources(settings, store):
        return apply(settings)
    return store


def apply_label_service(store: FeatureStore, name: str) -> str:
    """Register (or refresh) the FeatureService of the label model NAME over the registered views; its name."""
    service = label_service(name, store.list_feature_views())
    store.apply([service])
    return service.name


Method = Literal["auto", "bulk", "feast-write", "feast-materialize"]

# Past this many users the SQLite online store (one row per user and feature, ~190 bytes each) grows by
# ~25 GB and ~15 min of inserts per million users: materialising warns and points at Redis.
SQLITE_ADVISED_USERS = 200_000


# Users per batch of newest rows an online load holds (pandas frame and encoded commands): ~10 MB per batch for the
# widest view (54 columns), where a whole table at 1M users held ~1 GB.
LOAD_BATCH = 20_000
_NEWEST_MEMORY = "1GB"  # DuckDB's limit while reading newest rows: one entry per user in its grouped scan, then a stream

# In the Feast folder: per view, the (size, mtime) of the feature table file materialise read its online rows from.
MATERIALIZED = "materialized.json"


def _file_stamp(path: Path) -> list[int] | None:
    """Size and modification time of a file (both survive a copy of the home), None when it does not exist."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _record_materialized(settings: Settings, view: str, stamp: list[int] | None) -> None:
    path = settings.feast_dir / MATERIALIZED
    try:
        seen = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        seen = {}
    seen[view] = stamp
    tmp = path.with_name(f".{MATERIALIZED}.tmp")
    tmp.write_text(json.dumps(seen, indent=1, sort_keys=True))
    tmp.replace(path)


def materialized_tables(settings: Settings) -> dict[str, Path]:
    """The feature table file of each view whose online rows were materialised from that very file (unchanged since):
    batch reads may take those rows from the file (`OnlineReader.read_batch`, which still checks each user's online
    timestamp). A view built again but not materialised since is left out: its file no longer holds what is online."""
    try:
        seen = json.loads((settings.feast_dir / MATERIALIZED).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    out = {}
    for view, stamp in seen.items():
        path = table_path(settings.feature_dir, view)
        if stamp is not None and _file_stamp(path) == stamp:
            out[view] = path
    return out


def newest_rows(settings: Settings, name: str, end: datetime) -> pd.DataFrame:
    """The newest row per user of feature table `name` at or before `end`, as one frame (small homes, tests: the
    online loads stream `newest_batches` instead)."""
    batches = list(_newest_arrow(_table_file(settings, name), end))
    if not batches:
        return _newest_schema(_table_file(settings, name)).empty_table().to_pandas()
    return pa.Table.from_batches(batches).to_pandas()  # the same conversion as pd.read_parquet


def newest_batches(settings: Settings, name: str, end: datetime, users: int | None = None) -> Iterator[pd.DataFrame]:
    """The newest row per user of feature table `name` at or before `end`, in frames of at most `users` users
    (`LOAD_BATCH`), streamed from the Parquet file by DuckDB: an online load holds one batch, not a whole table."""
    for batch in _newest_arrow(_table_file(settings, name), end, users or LOAD_BATCH):
        yield batch.to_pandas()


def _table_file(settings: Settings, name: str) -> Path:
    path = table_path(settings.feature_dir, name)
    if not path.exists():
        raise FileNotFoundError(f"feature table {name!r} not built: run `nextbest features build` first")
    return path


def _newest_schema(path: Path) -> pa.Schema:
    import pyarrow.parquet as pq

    return pq.read_schema(path)


def _newest_arrow(path: Path, end: datetime, users: int = 0) -> Iterator[pa.RecordBatch]:
    """The newest row per user of the Parquet file at or before `end`, as Arrow batches of about `users` rows.

    Each user's newest snapshot time comes from a grouped scan of two columns (one entry per user), then the file
    is scanned again and joined to it: both scans stream, where a window over the whole file (`row_number()`) would
    hold every row of every column (at 1M users ~16M rows x 54 columns). A (user, time) pair is unique per table."""
    import duckdb

    users = users or LOAD_BATCH
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET enable_progress_bar = false")
        con.execute("SET preserve_insertion_order = false")  # stream the join's output in any order
        con.execute(f"SET memory_limit = '{_NEWEST_MEMORY}'")
        file, until = str(path), pd.Timestamp(end)
        reader = con.execute("SELECT t.* FROM read_parquet(?) t JOIN (SELECT user_id, max(event_timestamp) AS newest "
                             "FROM read_parquet(?) WHERE event_timestamp <= ? GROUP BY user_id) n "
                             "ON n.user_id = t.user_id AND n.newest = t.event_timestamp",
                             [file, file, until]).fetch_record_batch(users)
        yield from reader
    finally:
        con.close()


def _ahead(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """`batches` in order, the next one read on a thread while the caller writes this one (DuckDB's scans and
    Arrow's conversion release the GIL)."""
    with ThreadPoolExecutor(max_workers=1) as reader:
        coming = reader.submit(next, batches, None)
        while (batch := coming.result()) is not None:
            coming = reader.submit(next, batches, None)
            yield batch


def materialize(settings: Settings, end: datetime | None = None, progress: Callable[[str, int], None] | None = None,
                method: Method = "auto") -> dict[str, int]:
    """Load each view's newest row per user (as of `end`) into the online store; return users per view.

    Methods: `bulk` (features/online_sqlite.py for SQLite, features/online_redis.py for Redis: Feast's
    layout, encoded in bulk), `feast-write` (Feast's write_to_online_store with the newest rows),
    `feast-materialize` (Feast's own materialize over the whole history). `auto` is `bulk`.
    """

    store = feature_store(settings)
    if method == "feast-materialize":
        store = follow_home(settings, store)  # Feast's materialize reads the registered sources' files
    end = end or datetime.now(UTC)
    if method == "auto":
        method = "bulk"
    written: dict[str, int] = {}
    for view in store.list_feature_views():
        stamp = _file_stamp(table_path(settings.feature_dir, view.name))  # before reading: a file replaced meanwhile mismatches
        if method == "feast-materialize":
            written[view.name] = _feast_materialize(settings, store, view, end)
        else:
            written[view.name] = 0
            for latest in _ahead(newest_batches(settings, view.name, end)):
                written[view.name] += _load_batch(settings, store, view, latest, method)
        if progress:
            progress(view.name, written[view.name])
        _record_materialized(settings, view.name, stamp)
    return written


def build_and_materialize(settings: Settings, build: Callable[[Callable[[str, Path], None] | None], dict[str, int]],
                          end: datetime | None = None, progress: Callable[[str, int], None] | None = None
                          ) -> tuple[dict[str, int], dict[str, int]]:
    """Run the feature build `build(written)` (`features.build.build_features` with its `written` hook), apply, and
    load the online store; returns (rows per table, users per view), the same tables and online values as `build`,
    `apply` and `materialize` in turn.

    On the Redis online store the load overlaps the build: the newest rows of each file the build writes (a whole
    table, or a slice of users of a per-user table) go online from a thread while DuckDB builds the next slice. Redis'
    own thread (~120 CPU-s for 1M users) then uses the core DuckDB leaves idle, instead of adding ~145 s after it.
    The SQLite store needs `apply` before a write (it creates the tables), so there the three run in turn. A build
    that fails loads the last good tables online again (`materialize`), so the online store does not mix two builds.
    """
    from nextbest.features.feature_views import feature_view

    end = end or datetime.now(UTC)
    if settings.online_store != "redis":
        rows = build(None)
        apply(settings)
        return rows, materialize(settings, end, progress)
    store = feature_store(settings)
    loader = ThreadPoolExecutor(max_workers=1)
    pending: list = []
    users: dict[str, int] = {}

    def written(name: str, path: Path) -> None:
        if name not in VIEWS:
            return
        # Read now, as Arrow (~4x smaller than pandas): a slice's file is deleted once the slices are merged. The
        # loader turns one batch at a time into pandas and Redis commands.
        latest = list(_newest_arrow(path, end))
        count = sum(batch.num_rows for batch in latest)
        if progress:
            progress(name, count)
        while pending and (len(pending) >= 2 or pending[0].done()):
            pending.pop(0).result()  # at most two files' rows wait in memory; a failed load stops the build here
        pending.append(loader.submit(_load_arrow, store, feature_view(name, path), latest))
        users[name] = users.get(name, 0) + count

    try:
        rows = build(written)
        for load in pending:
            load.result()
    except BaseException:
        loader.shutdown(wait=True, cancel_futures=True)
        if users and settings.feature_dir.exists() and feature_store(settings).list_feature_views():
            materialize(settings, end)  # the last good tables online again (users only the new build had stay)
        raise
    loader.shutdown(wait=True)
    apply(settings)
    for name in users:
        _record_materialized(settings, name, _file_stamp(table_path(settings.feature_dir, name)))
    return rows, users


def _load_arrow(store, view, batches: list[pa.RecordBatch]) -> int:
    """Newest rows (Arrow batches) into the Redis online store, one batch in pandas at a time; returns users."""
    from nextbest.features import online_redis

    return sum(online_redis.write_view(store, view, batch.to_pandas()) for batch in batches)


def _load_batch(settings: Settings, store, view, latest: pd.DataFrame, method: Method) -> int:
    """A batch of one view's newest rows into the online store by `method` (`bulk` or `feast-write`, see
    `materialize`); returns users written."""
    from nextbest.features import online_redis

    if method == "bulk" and settings.online_store == "redis":
        online_redis.write_view(store, view, latest)
    elif method == "bulk":
        write_view(store, view, latest)
    else:
        store.write_to_online_store(view.name, latest)
    return len(latest)


def _feast_materialize(settings: Settings, store, view, end: datetime) -> int:
    """Feast's own materialize of one view over its whole history; returns the users it holds at `end`."""
    import duckdb

    path = str(table_path(settings.feature_dir, view.name))
    start, users = duckdb.sql("SELECT min(event_timestamp), count(DISTINCT user_id) FILTER (WHERE event_timestamp <= $end) "
                              "FROM read_parquet($path)", params={"path": path, "end": pd.Timestamp(end)}).fetchone()
    store.materialize(start_date=pd.Timestamp(start).to_pydatetime() - timedelta(seconds=1),
                      end_date=pd.Timestamp(end).to_pydatetime(), feature_views=[view.name], disable_event_timestamp=False)
    return int(users)
