"""Matched features: the user's feature for *this row's* offer category, channel and hour, picked per row.

The FeatureService holds one column per category (`aff_books`, ...), per channel (`open_rate_email`, ...) and per
hour (`open_share_h07`, ...). A tree model cannot easily learn "the affinity to whichever category this row's
offer is" from eight separate columns; picking the matching column per row gives it that feature directly.
Scorers compute these inside `predict` (through `FrameEncoder.codes`), so fitting and serving see the same
values from the same inputs: the FeatureService columns plus the request columns.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["MATCHED", "matched_columns", "matched_values", "with_matched"]

# derived column -> (request column it is keyed by, prefix of the per-key feature columns)
_CATEGORY = {"offer_affinity": "aff_"}
_CHANNEL = {"channel_open_rate": "open_rate_", "channel_click_rate": "click_rate_",
            "channel_convert_rate": "convert_rate_", "channel_sent_7d": "sent_7d_", "channel_sent_90d": "sent_90d_",
            "channel_days_since_contact": "days_since_contact_"}
_HOUR_SHARE = "open_share_h"
MATCHED: tuple[str, ...] = (*_CATEGORY, "offer_affinity_rel", *_CHANNEL, "hour_share", "hour_gap")


def _keyed(columns, prefix: str) -> list[str]:
    return [c for c in columns if c.startswith(prefix) and len(c) > len(prefix)]


def matched_columns(columns) -> tuple[str, ...]:
    """The matched features that can be computed from `columns` (features + request columns), in MATCHED order."""
    cols = set(columns)
    out: list[str] = []
    if "offer_category" in cols and _keyed(cols, "aff_"):
        out += ["offer_affinity", "offer_affinity_rel"]
    if "channel" in cols:
        out += [name for name, prefix in _CHANNEL.items() if _keyed(cols, prefix)]
    if "local_hour" in cols and _keyed(cols, _HOUR_SHARE):
        out.append("hour_share")
    if "local_hour" in cols and "peak_open_hour" in cols:
        out.append("hour_gap")
    return tuple(out)


def _pick(frame: pd.DataFrame, prefix: str, keys: pd.Series, default: float) -> np.ndarray:
    """frame[prefix + key] per row (NumPy fancy indexing); `default` for a key without a column, NaN if key missing."""
    cols = _keyed(frame.columns, prefix)
    values = frame[cols].to_numpy(dtype="float64", na_value=np.nan)
    missing = keys.isna().to_numpy()
    idx = pd.Index([c[len(prefix):] for c in cols]).get_indexer(keys.astype(str).to_numpy())
    out = np.full(len(frame), default, dtype="float64")
    hit = idx >= 0
    out[hit] = values[np.flatnonzero(hit), idx[hit]]
    out[missing] = np.nan
    return out


def _hours(frame: pd.DataFrame) -> np.ndarray:
    return pd.to_numeric(frame["local_hour"], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


def with_matched(frame: pd.DataFrame, names) -> pd.DataFrame:
    """`frame` plus the matched columns `names`."""
    return frame.assign(**matched_values(frame, names)) if names else frame


def matched_values(frame: pd.DataFrame, names) -> dict[str, np.ndarray]:
    """The matched columns `names` as arrays, each row computed from that row's own values only."""
    unknown = [n for n in names if n not in MATCHED]
    if unknown:
        raise KeyError(f"unknown matched feature(s) {unknown}; known: {', '.join(MATCHED)}")
    new: dict[str, np.ndarray] = {}
    if "offer_affinity" in names or "offer_affinity_rel" in names:
        # "any"-category offers (coupons) match no category in particular: affinity 0.
        aff = _pick(frame, "aff_", frame["offer_category"], 0.0)
        new["offer_affinity"] = aff
        top = frame[_keyed(frame.columns, "aff_")].to_numpy(dtype="float64", na_value=np.nan).max(axis=1, initial=0.0)
        new["offer_affinity_rel"] = np.divide(aff, top, out=np.zeros_like(aff), where=top > 0)
        new["offer_affinity_rel"][np.isnan(aff)] = np.nan
    for name, prefix in _CHANNEL.items():
        if name in names:
            new[name] = _pick(frame, prefix, frame["channel"], np.nan)
    if "hour_share" in names or "hour_gap" in names:
        hours = _hours(frame)
        ok = np.isfinite(hours)
        hour_keys = pd.Series(np.array([f"{h:02d}" for h in range(24)], dtype=object)[
            np.where(ok, np.nan_to_num(hours), 0).astype("int64") % 24], index=frame.index).where(ok)
        if "hour_share" in names:
            new["hour_share"] = _pick(frame, _HOUR_SHARE, hour_keys, np.nan)
        if "hour_gap" in names:
            peak = pd.to_numeric(frame["peak_open_hour"], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
            gap = np.abs(hours - peak) % 24
            new["hour_gap"] = np.minimum(gap, 24 - gap)
    return {n: new[n] for n in names}
