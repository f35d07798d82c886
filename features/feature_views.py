"""Feast feature views, one per feature table; their schemas are read from the tables themselves.

Reading the schema (rather than restating columns) is what lets any extra users column become a
profile feature with no code change.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from feast import FeatureView, Field
from feast.types import Bool, Float64, Int64, String

from nextbest.features.data_sources import realtime_push_source, table_source
from nextbest.features.entities import user

__all__ = ["VIEWS", "feature_view", "feature_views", "table_path"]

# name -> (description, ttl); ttl 0 = never stale (Feast's convention)
VIEWS: dict[str, tuple[str, timedelta]] = {
    "profile": ("Who the user is: every users column, consent per channel, timezone.", timedelta(0)),
    "behaviour": ("Activity in 1/7/30/90-day windows, RFM, lifetime totals, category affinity.", timedelta(days=30)),
    "channel": ("Engagement per channel: sent, smoothed open/click/convert rates, recency, fatigue.", timedelta(days=30)),
    "time_profile": ("When the user is active: share of activity per local hour over a year (smoothed), peak hour.", timedelta(days=30)),
    "tags": ("Segments: RFM scores and segment, lifecycle stage, value tier, cluster, scorecard.", timedelta(days=30)),
    # No TTL: Feast's online store ignores TTLs (issue 6821), so a TTL here would make offline and
    # online disagree. Readers judge freshness from `last_event_at` instead.
    "realtime": ("Pushed live: last event, open cart, events in the last hour.", timedelta(0)),
}
_SKIP = {"user_id", "event_timestamp"}


def table_path(feature_dir: Path, name: str) -> Path:
    return Path(feature_dir) / f"{name}.parquet"


def _feast_type(t: pa.DataType):
    if pa.types.is_boolean(t):
        return Bool
    if pa.types.is_integer(t):
        return Int64
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return Float64
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
        return String
    return None  # timestamps and nested types are not served as features


def feature_view(name: str, path: Path, offline: str = "duckdb") -> FeatureView:
    """The FeatureView of feature table `name` (one of VIEWS), its schema read from the file at `path`, its source read
    by the Feast offline store `offline` (`Settings.offline_engine`)."""
    description, ttl = VIEWS[name]
    schema = pq.read_schema(path)
    fields = [Field(name=f.name, dtype=_feast_type(f.type)) for f in schema
              if f.name not in _SKIP and _feast_type(f.type) is not None]
    source = realtime_push_source(path, offline) if name == "realtime" else table_source(name, path, offline)
    return FeatureView(name=name, entities=[user], ttl=ttl, schema=fields, source=source, online=True,
                       description=description)


def feature_views(feature_dir: Path, offline: str = "duckdb") -> list[FeatureView]:
    """One FeatureView per feature table present in `feature_dir`, its source read by the Feast offline store
    `offline` (`Settings.offline_engine`)."""
    return [feature_view(name, table_path(feature_dir, name), offline) for name in VIEWS
            if table_path(feature_dir, name).exists()]
