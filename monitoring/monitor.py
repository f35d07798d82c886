"""`nextbest monitor`: data and score drift from what is on disk, alerts from the thresholds in Settings, written
to `<home>/monitoring/` (latest.json for the dashboard and the promotion check, metrics.prom for Prometheus).

Feature drift compares the latest snapshot of each feature table with the snapshot `monitor_reference_days`
earlier; score drift compares the expected value of the actions the service decided in the last 7 days with the
7 days before (from the decision log); calibration compares each logged action's predicted conversion probability
with the conversions reported for it (`/feedback`), once its 7-day window has closed.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from nextbest.monitoring.drift import (
    alerts,
    auc_alert,
    calibration,
    calibration_alert,
    feature_drift,
    prometheus_text,
    psi,
)

__all__ = ["TABLES", "snapshots", "score_drift", "logged_calibration", "run_monitor", "open_alerts", "monitor_dir",
           "auc_by_week", "promotion_block"]

log = logging.getLogger("nextbest.monitor")
TABLES = ("behaviour", "tags")  # the decision features most exposed to a change upstream
_SKIP = {"user_id", "event_timestamp", "created"}


def monitor_dir(home: Path) -> Path:
    return Path(home) / "monitoring"


def snapshots(table: pd.DataFrame, reference_days: int) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(reference rows, current rows, their times): the latest snapshot, and the latest one at least
    `reference_days` before it (else the earliest)."""
    times = np.sort(pd.to_datetime(table["event_timestamp"], utc=True).unique())
    ts = pd.to_datetime(table["event_timestamp"], utc=True)
    current = times[-1]
    before = times[times <= current - np.timedelta64(reference_days, "D")]
    reference = before[-1] if len(before) else times[0]
    cols = [c for c in table.columns if c not in _SKIP]
    return (table.loc[ts == reference, cols], table.loc[ts == current, cols],
            {"reference": pd.Timestamp(reference).isoformat(), "current": pd.Timestamp(current).isoformat()})


def score_drift(decisions: list[dict], threshold: float, days: int = 7) -> pd.DataFrame:
    """PSI of the decided actions' expected value: the last `days` of the log against the `days` before."""
    rows = [(d["at"], a["expected_value"]) for d in decisions for a in d.get("actions", [])
            if a.get("expected_value") is not None]
    if not rows:
        return pd.DataFrame(columns=["feature", "psi", "drifted"])
    df = pd.DataFrame(rows, columns=["at", "ev"])
    at = pd.to_datetime(df["at"], utc=True, format="ISO8601")
    end = at.max()
    cur = df["ev"][at > end - pd.Timedelta(days=days)].to_numpy(float)
    ref = df["ev"][(at <= end - pd.Timedelta(days=days)) & (at > end - pd.Timedelta(days=2 * days))].to_numpy(float)
    if len(ref) < 50 or len(cur) < 50:  # too few decisions for a stable PSI: no figure, no false alarm
        return pd.DataFrame(columns=["feature", "psi", "drifted"])
    value = psi(ref, cur)
    return pd.DataFrame([{"feature": "expected_value", "psi": value, "drifted": bool(value > threshold)}])


def logged_calibration(decisions: list[dict], outcomes: list[dict], window_days: int = 7,
                       min_actions: int = 100) -> dict | None:
    """Calibration of the conversion model in production: each logged action's predicted p_convert against whether
    a conversion was reported for it, over actions whose `window_days` label window has closed (by the log's
    last time). None below `min_actions` such actions (too few for a stable figure)."""
    times = [d["at"] for d in decisions] + [o["at"] for o in outcomes]
    if not times:
        return None
    end = pd.to_datetime(pd.Series(times), utc=True, format="ISO8601").max()
    rows = [(d["decision_id"], a["offer_id"], a["channel"], a["send_at"], a["p_convert"])
            for d in decisions for a in d.get("actions", []) if a.get("p_convert") is not None]
    if not rows:
        return None
    df = pd.DataFrame(rows, columns=["decision_id", "offer_id", "channel", "send_at", "p"]).drop_duplicates(
        ["decision_id", "offer_id", "channel"])
    df["sent"] = pd.to_datetime(df["send_at"], utc=True, format="ISO8601")
    df = df[df["sent"] <= end - pd.Timedelta(days=window_days)]
    if len(df) < min_actions:
        return None
    converted = {(o["decision_id"], o["offer_id"], o["channel"]) for o in outcomes if o.get("outcome") == "converted"}
    y = np.array([k in converted for k in zip(df["decision_id"], df["offer_id"], df["channel"], strict=True)], float)
    out = calibration(df["p"].to_numpy(float), y)
    out["actions"] = len(df)
    out["auc_by_week"] = auc_by_week(df["sent"].reset_index(drop=True), df["p"].to_numpy(float), y)
    return out


def auc_by_week(sent: pd.Series, predicted: np.ndarray, outcome: np.ndarray, min_each: int = 10) -> list[dict]:
    """The model's ranking quality over time: AUC of the predicted probability against the realised outcome, per
    week of sending (weeks start Monday, UTC). A week with fewer than `min_each` converted or unconverted actions
    has no figure: an AUC from a handful of positives is noise, not a trend."""
    from sklearn.metrics import roc_auc_score

    week = sent.dt.tz_convert("UTC").dt.tz_localize(None).dt.to_period("W-SUN").dt.start_time
    rows = []
    for start, idx in pd.Series(np.arange(len(week))).groupby(week.to_numpy()).groups.items():
        y, p = outcome[idx], predicted[idx]
        if min(y.sum(), len(y) - y.sum()) >= min_each:
            rows.append({"week": pd.Timestamp(start).date().isoformat(), "auc": float(roc_auc_score(y, p)),
                         "actions": int(len(y))})
    return rows


def _write(path: Path, text: str) -> None:
    """Write whole or not at all: a reader (the dashboard, Prometheus) never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def run_monitor(settings) -> dict:
    """Check every feature table and the decision scores; write latest.json and metrics.prom; log each alert."""
    from nextbest.pipelines.logs_to_contacts import read_log

    threshold = settings.monitor_psi_alert
    drift: dict[str, pd.DataFrame] = {}
    windows: dict[str, dict] = {}
    for name in TABLES:
        path = Path(settings.feature_dir) / f"{name}.parquet"
        if path.exists():
            ref, cur, windows[name] = snapshots(pd.read_parquet(path), settings.monitor_reference_days)
            drift[name] = feature_drift(ref, cur, threshold)
    decisions = read_log(Path(settings.log_dir) / "decisions.jsonl")
    drift["decision_scores"] = score_drift(decisions, threshold)
    found = [a for subject, df in drift.items() for a in alerts(df, subject, threshold)]
    calibrations = {}
    conversion = logged_calibration(decisions, read_log(Path(settings.log_dir) / "outcomes.jsonl"))
    if conversion is not None:
        calibrations["conversion"] = conversion
        found += calibration_alert("conversion", conversion["ece"], settings.monitor_ece_alert)
        found += auc_alert("conversion", conversion["auc_by_week"], settings.monitor_auc_alert)
    for a in found:
        log.warning("monitoring alert: %s %s %s = %.3f (threshold %.3f)", a["subject"], a["name"], a["metric"], a["value"],
                    a["threshold"])
    result = {"at": pd.Timestamp.now(tz="UTC").isoformat(), "psi_threshold": threshold, "windows": windows,
              "alerts": found, "ece_threshold": settings.monitor_ece_alert, "auc_threshold": settings.monitor_auc_alert,
              "calibration": {k: {"ece": v["ece"], "brier": v["brier"], "actions": v["actions"],
                                  "auc_by_week": v["auc_by_week"],
                                  "reliability": v["reliability"].to_dict("records")} for k, v in calibrations.items()},
              "drift": {k: [{"feature": r.feature, "psi": None if not np.isfinite(r.psi) else float(r.psi),
                             "drifted": bool(r.drifted)} for r in df.itertuples()] for k, df in drift.items()}}
    out = monitor_dir(settings.home)
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "latest.json", json.dumps(result, indent=1))
    _write(out / "metrics.prom", prometheus_text(drift, found, calibrations))
    return result


def promotion_block(settings) -> str | None:
    """Why no model may be promoted now (open monitoring alerts: the data a model would serve on has shifted, or the
    champion stopped ranking), or None. The one rule for `nextbest promote`, training's gate and retrain's gate."""
    found = open_alerts(settings.home) if settings.monitor_blocks_promotion else []
    if not found:
        return None
    names = ", ".join(f"{a['subject']}.{a['name']} {a['metric']} {a['value']:.3f}" for a in found[:5])
    return (f"{len(found)} open monitoring alert(s) ({names}): not promoted while they are open; check `nextbest "
            "monitor` / the dashboard's model health (NEXTBEST_MONITOR_BLOCKS_PROMOTION=false turns the block off)")


def open_alerts(home: Path) -> list[dict]:
    """The alerts of the last monitor run ([] when it never ran)."""
    path = monitor_dir(home) / "latest.json"
    return json.loads(path.read_text())["alerts"] if path.exists() else []
