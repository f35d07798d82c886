"""Feast data sources: the feature tables on disk (Parquet) and the push source for real-time events."""

from __future__ import annotations

from pathlib import Path

from feast import FileSource, PushSource

__all__ = ["table_source", "realtime_push_source", "REALTIME_PUSH"]

REALTIME_PUSH = "realtime_push"


def table_source(name: str, path: Path) -> FileSource:
    """The offline source of one feature table (Parquet, `event_timestamp` column)."""
    return FileSource(name=f"{name}_source", path=str(Path(path).resolve()), timestamp_field="event_timestamp")


def realtime_push_source(path: Path) -> PushSource:
    """Behaviour events pushed by the service land online at once; `path` backs them offline."""
    return PushSource(name=REALTIME_PUSH, batch_source=table_source("realtime", path))
