"""Local time in the users' timezones: UTC offsets, local hours and local-to-UTC conversion, vectorised."""

from __future__ import annotations

from functools import cache

import numpy as np
import pandas as pd

__all__ = ["TIMEZONES", "DAY_NS", "HOUR_NS", "MINUTE_NS", "NAT", "utc_offset_ns", "local_hour", "to_utc_series"]

TIMEZONES: tuple[str, ...] = ("Asia/Shanghai", "Asia/Singapore", "Europe/London", "Europe/Berlin",
                              "America/New_York", "America/Los_Angeles")
MINUTE_NS = 60 * 10**9
HOUR_NS = 60 * MINUTE_NS
DAY_NS = 24 * HOUR_NS
NAT = np.iinfo(np.int64).min  # numpy's NaT as int64: the "no timestamp" sentinel of every *_ns array

# Offsets are tabulated per UTC day (at noon): exact except within a few hours of a DST switch.
_GRID_START = pd.Timestamp("2015-01-01", tz="UTC")
_GRID_DAYS = 365 * 25


@cache
def _offset_table() -> np.ndarray:
    """UTC offset in ns per (timezone, day since _GRID_START)."""
    noon = pd.date_range(_GRID_START, periods=_GRID_DAYS, freq="D") + pd.Timedelta(hours=12)
    rows = [(noon.tz_convert(tz).tz_localize(None) - noon.tz_localize(None)).asi8 for tz in TIMEZONES]
    return np.stack(rows).astype(np.int64)


def utc_offset_ns(tz_idx: np.ndarray, utc_ns: np.ndarray) -> np.ndarray:
    """Offset (local minus UTC, in ns) of each timezone index at each UTC instant."""
    day = (np.asarray(utc_ns, dtype=np.int64) - _GRID_START.value) // DAY_NS
    return _offset_table()[np.asarray(tz_idx, dtype=np.intp), np.clip(day, 0, _GRID_DAYS - 1)]


def local_hour(tz_idx: np.ndarray, utc_ns: np.ndarray) -> np.ndarray:
    """Local clock time in hours (0 <= h < 24, fractional) of each UTC instant."""
    local = np.asarray(utc_ns, dtype=np.int64) + utc_offset_ns(tz_idx, utc_ns)
    return (local % DAY_NS) / HOUR_NS


def to_utc_series(ns: np.ndarray) -> pd.Series:
    """int64 ns since the epoch (NAT for missing) -> a datetime64[ns, UTC] Series."""
    return pd.Series(np.asarray(ns, dtype=np.int64).view("M8[ns]")).dt.tz_localize("UTC")
