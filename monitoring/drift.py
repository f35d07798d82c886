"""Model and data health: feature and score drift (PSI), calibration against realised outcomes (ECE, Brier, the
reliability curve), and the alerts that thresholds from config raise. Pure NumPy/pandas.

PSI (population stability index) rather than Evidently or NannyML (tried 2026-11-30 with our pins): NannyML 0.13.1
needs lightgbm < 4.6 (we pin 4.7.0); Evidently 0.7.23 resolves, but adds 24 packages to the runtime (a second web
framework, litestar; nltk, plotly, statsmodels, Faker, iterative-telemetry) for what is one statistic per column
here. PSI over the reference's quantile bins is twenty lines, tested against hand-computed values.
Rule of thumb (and the default threshold): PSI < 0.1 stable, 0.1-0.2 moving, > 0.2 shifted.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["auc_alert", "psi", "feature_drift", "calibration", "alerts", "calibration_alert", "prometheus_text"]

_EPS = 1e-4  # floor of a bin's share: an empty bin must not make PSI infinite


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index of `current` against `reference`, over the reference's quantile bins.

    Missing values are their own bin (a feature that starts to go missing is a shift too)."""
    ref = np.asarray(reference, dtype=float)
    cur = np.asarray(current, dtype=float)
    ref_ok, cur_ok = ref[~np.isnan(ref)], cur[~np.isnan(cur)]
    if len(ref) == 0 or len(cur) == 0:
        return float("nan")
    edges = np.unique(np.quantile(ref_ok, np.linspace(0, 1, bins + 1)[1:-1])) if len(ref_ok) else np.array([])
    # counts per bin: (-inf, e1], (e1, e2], ..., (ek, inf), then the missing ones
    ref_counts = np.append(np.bincount(np.searchsorted(edges, ref_ok, side="left"), minlength=len(edges) + 1),
                           len(ref) - len(ref_ok))
    cur_counts = np.append(np.bincount(np.searchsorted(edges, cur_ok, side="left"), minlength=len(edges) + 1),
                           len(cur) - len(cur_ok))
    p = np.maximum(ref_counts / len(ref), _EPS)
    q = np.maximum(cur_counts / len(cur), _EPS)
    return float(np.sum((q - p) * np.log(q / p)))


def feature_drift(reference: pd.DataFrame, current: pd.DataFrame, threshold: float, bins: int = 10) -> pd.DataFrame:
    """PSI of every numeric column the two frames share (categories by their codes), flagged above `threshold`."""
    rows = []
    for col in reference.columns.intersection(current.columns):
        r, c = reference[col], current[col]
        if pd.api.types.is_bool_dtype(r) or pd.api.types.is_numeric_dtype(r):
            value = psi(r.astype(float).to_numpy(), pd.to_numeric(c, errors="coerce").astype(float).to_numpy(), bins)
        elif pd.api.types.is_object_dtype(r) or isinstance(r.dtype, pd.CategoricalDtype):
            cats = pd.Index(pd.unique(r.dropna().astype(str)))
            code = {k: i for i, k in enumerate(cats)}  # unseen categories share one code past the known ones
            rc = r.astype(str).map(code).where(r.notna()).astype(float).to_numpy()
            cc = c.astype(str).map(code).fillna(len(cats)).where(c.notna()).astype(float).to_numpy()
            value = _categorical_psi(rc, cc, len(cats) + 1)
        else:
            continue
        rows.append({"feature": col, "psi": value, "drifted": bool(value > threshold)})
    return pd.DataFrame(rows, columns=["feature", "psi", "drifted"])


def _categorical_psi(ref: np.ndarray, cur: np.ndarray, k: int) -> float:
    def shares(x: np.ndarray) -> np.ndarray:
        ok = ~np.isnan(x)
        counts = np.append(np.bincount(x[ok].astype(int), minlength=k), (~ok).sum())
        return np.maximum(counts / max(len(x), 1), _EPS)
    p, q = shares(ref), shares(cur)
    return float(np.sum((q - p) * np.log(q / p)))


def calibration(predicted: np.ndarray, outcome: np.ndarray, bins: int = 10) -> dict:
    """Expected calibration error, Brier score and the reliability curve (equal-width bins of the prediction)."""
    p = np.clip(np.asarray(predicted, dtype=float), 0.0, 1.0)
    y = np.asarray(outcome, dtype=float)
    which = np.minimum((p * bins).astype(int), bins - 1)
    n = np.bincount(which, minlength=bins)
    mean_p = np.bincount(which, weights=p, minlength=bins) / np.maximum(n, 1)
    rate = np.bincount(which, weights=y, minlength=bins) / np.maximum(n, 1)
    ece = float(np.sum(n / max(len(p), 1) * np.abs(rate - mean_p)))
    curve = pd.DataFrame({"bin": np.arange(bins), "count": n, "mean_predicted": mean_p, "observed_rate": rate})
    return {"ece": ece, "brier": float(np.mean((p - y) ** 2)) if len(p) else float("nan"),
            "reliability": curve[curve["count"] > 0].reset_index(drop=True)}


def alerts(drift: pd.DataFrame, subject: str, psi_threshold: float) -> list[dict]:
    """An alert per drifted feature of one check (PSI above the threshold)."""
    return [{"subject": subject, "metric": "psi", "name": r.feature, "value": float(r.psi), "threshold": psi_threshold}
            for r in drift.itertuples() if r.drifted]


def calibration_alert(subject: str, ece: float, ece_threshold: float) -> list[dict]:
    """An alert when a model's expected calibration error is above the threshold."""
    return [{"subject": subject, "metric": "ece", "name": subject, "value": float(ece), "threshold": ece_threshold}] \
        if ece > ece_threshold else []


def auc_alert(subject: str, weekly: list[dict], auc_threshold: float) -> list[dict]:
    """An alert when the latest week's AUC against realised outcomes fell below the threshold (the model no longer
    ranks who converts)."""
    return [{"subject": subject, "metric": "auc", "name": subject, "value": float(weekly[-1]["auc"]),
             "threshold": auc_threshold}] if weekly and weekly[-1]["auc"] < auc_threshold else []


def _label(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def prometheus_text(drift: dict[str, pd.DataFrame], found: list[dict], calibrations: dict[str, dict]) -> str:
    """The monitor's figures in Prometheus' text format (served by the dashboard at /metrics)."""
    lines = ["# HELP nextbest_feature_psi Population stability index of a feature, current vs reference",
             "# TYPE nextbest_feature_psi gauge"]
    for subject, df in drift.items():
        lines += [f'nextbest_feature_psi{{subject="{_label(subject)}",feature="{_label(r.feature)}"}} {r.psi:.6g}'
                  for r in df.itertuples() if np.isfinite(r.psi)]
    lines += ["# HELP nextbest_calibration_ece Expected calibration error against realised outcomes",
              "# TYPE nextbest_calibration_ece gauge"]
    lines += [f'nextbest_calibration_ece{{subject="{_label(s)}"}} {c["ece"]:.6g}' for s, c in calibrations.items()]
    lines += ["# HELP nextbest_calibration_brier Brier score against realised outcomes",
              "# TYPE nextbest_calibration_brier gauge"]
    lines += [f'nextbest_calibration_brier{{subject="{_label(s)}"}} {c["brier"]:.6g}' for s, c in calibrations.items()]
    lines += ["# HELP nextbest_model_auc AUC against realised outcomes in the latest week with enough of both",
              "# TYPE nextbest_model_auc gauge"]
    lines += [f'nextbest_model_auc{{subject="{_label(s)}"}} {c["auc_by_week"][-1]["auc"]:.6g}'
              for s, c in calibrations.items() if c.get("auc_by_week")]
    lines += ["# HELP nextbest_monitor_alerts Open monitoring alerts, by metric", "# TYPE nextbest_monitor_alerts gauge"]
    for metric in ("psi", "ece", "auc"):
        lines.append(f'nextbest_monitor_alerts{{metric="{metric}"}} {sum(a["metric"] == metric for a in found)}')
    return "\n".join(lines) + "\n"
