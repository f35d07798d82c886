"""`nextbest monitor`: data and score drift from what is on disk, alerts from the thresholds in Settings, written
to `<home>/monitoring/` (latest.json for the dashboard and the promotion check, metrics.prom for Prometheus).

Feature drift compares the latest snapshot of each feature table with the snapshot `monitor_reference_days`
earlier; score drift compares the expected value of the actions the service decided in the last 7 days with the
7 days before (from the decision log).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from nextbest.monitoring.drift import alerts, feature_drift, prometheus_text, psi

__all__ = ["TABLES", "snapshots", "score_drift", "run_monitor", "open_alerts", "monitor_dir"]

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
    drift["decision_scores"] = score_drift(read_log(Path(settings.log_dir) / "decisions.jsonl"), threshold)
    found = [a for subject, df in drift.items() for a in alerts(df, subject, threshold)]
    for a in found:
        log.warning("monitoring alert: %s %s %s = %.3f above %.3f", a["subject"], a["name"], a["metric"], a["value"],
                    a["threshold"])
    result = {"at": pd.Timestamp.now(tz="UTC").isoformat(), "psi_threshold": threshold, "windows": windows,
              "alerts": found,
              "drift": {k: [{"feature": r.feature, "psi": None if not np.isfinite(r.psi) else float(r.psi),
                             "drifted": bool(r.drifted)} for r in df.itertuples()] for k, df in drift.items()}}
    out = monitor_dir(settings.home)
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "latest.json", json.dumps(result, indent=1))
    _write(out / "metrics.prom", prometheus_text(drift, found, {}))
    return result


def open_alerts(home: Path) -> list[dict]:
    """The alerts of the last monitor run ([] when it never ran)."""
    path = monitor_dir(home) / "latest.json"
    return json.loads(path.read_text())["alerts"] if path.exists() else []
