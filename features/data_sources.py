"""Feast data sources: the feature tables on disk (Parquet) and the push source for real-time events."""

from __future__ import annotations

import warnings
from pathlib import Path

from feast import FileSource, PushSource

__all__ = ["table_source", "realtime_push_source", "REALTIME_PUSH"]

REALTIME_PUSH = "realtime_push"


def table_source(name: str, path: Path, offline: str = "duckdb"):
    """The offline source of one feature table (Parquet, `event_timestamp` column): a FileSource for the DuckDB and
    file offline stores, a SparkSource over the same file for Feast's Spark offline store."""
    path = str(Path(path).resolve())
    if offline == "spark":
        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

        with warnings.catch_warnings():  # "experimental, in alpha" on every construction, also when read back
            warnings.simplefilter("ignore", RuntimeWarning)
            return SparkSource(name=f"{name}_source", path=path, file_format="parquet", timestamp_field="event_timestamp")
    return FileSource(name=f"{name}_source", path=path, timestamp_field="event_timestamp")


def realtime_push_source(path: Path, offline: str = "duckdb") -> PushSource:
    """Behaviour events pushed by the service land online at once; `path` backs them offline."""
    return PushSource(name=REALTIME_PUSH, batch_source=table_source("realtime", path, offline))
