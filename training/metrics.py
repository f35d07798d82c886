"""Model quality: classification metrics, uplift (Qini/AUUC), and the charts logged with each run."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

__all__ = ["classification_metrics", "auc_interval", "calibration_error", "capture_at", "qini_curve", "uplift_curve",
           "qini_auc_score", "uplift_auc_score", "uplift_at_k", "uplift_metrics", "per_offer_uplift_metrics",
           "summarise_offers", "fold_interval", "qini_auc_replicates", "charts", "uplift_chart"]


def calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over equal-count bins of the score."""
    order = np.argsort(p)
    parts = np.array_split(order, bins)
    return float(sum(len(b) * abs(y[b].mean() - p[b].mean()) for b in parts if len(b)) / max(len(y), 1))


def capture_at(y: np.ndarray, p: np.ndarray, top: float) -> float:
    """Share of all positives found in the top `top` fraction by score."""
    k = max(int(round(len(p) * top)), 1)
    best = np.argsort(-p, kind="stable")[:k]
    return float(y[best].sum() / max(y.sum(), 1))


def classification_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """AUC, PR-AUC, logloss, calibration error, capture at top 10/20 %, base rate."""
    y = np.asarray(y, dtype="int64")
    p = np.clip(np.asarray(p, dtype="float64"), 1e-6, 1 - 1e-6)
    two = len(np.unique(y)) == 2
    return {
        "auc": float(roc_auc_score(y, p)) if two else float("nan"),
        # the 95 % interval of the AUC: the gate promotes only a model whose lower bound is above chance
        **dict(zip(("auc_low", "auc_high"), auc_interval(y, p) if two else (float("nan"),) * 2, strict=True)),
        "pr_auc": float(average_precision_score(y, p)) if two else float("nan"),
        "logloss": float(log_loss(y, p, labels=[0, 1])),
        "calibration_error": calibration_error(y, p),
        "capture_top10": capture_at(y, p, 0.1),
        "capture_top20": capture_at(y, p, 0.2),
        "base_rate": float(y.mean()),
        "rows": float(len(y)),
    }


def auc_interval(y: np.ndarray, p: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The `level` confidence interval of the ROC AUC from DeLong's variance (exact, no resampling, O(n log n)).

    It treats rows as independent: repeated snapshots of one user make it somewhat narrower than the truth.
    """
    from scipy.stats import norm, rankdata

    y = np.asarray(y, dtype=bool)
    p = np.asarray(p, dtype="float64")
    pos, neg = p[y], p[~y]
    m, n = len(pos), len(neg)
    if m < 2 or n < 2:
        return float("nan"), float("nan")
    together = rankdata(np.concatenate([pos, neg]))
    auc = (together[:m].sum() - m * (m + 1) / 2) / (m * n)
    v_pos = (together[:m] - rankdata(pos)) / n  # share of negatives each positive outranks
    v_neg = 1 - (together[m:] - rankdata(neg)) / m  # share of positives outranking each negative
    se = np.sqrt(v_pos.var(ddof=1) / m + v_neg.var(ddof=1) / n)
    z = norm.ppf(0.5 + level / 2)
    return float(max(auc - z * se, 0.0)), float(min(auc + z * se, 1.0))


def qini_curve(y: np.ndarray, treated: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Qini curve as scikit-uplift draws it: at each distinct score threshold, rows targeted (x) and
    treated positives minus control positives scaled to the treated count (y); starts at (0, 0)."""
    n_all, y_t, y_c, n_t, n_c = _cumulative(y, treated, score)
    values = y_t - y_c * np.divide(n_t, n_c, out=np.zeros_like(n_t), where=n_c != 0)
    return np.r_[0.0, n_all], np.r_[0.0, values]


def uplift_curve(y: np.ndarray, treated: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Uplift curve as scikit-uplift draws it: (treated rate - control rate) among the top x rows, times x."""
    n_all, y_t, y_c, n_t, n_c = _cumulative(y, treated, score)
    rate_t = np.divide(y_t, n_t, out=np.zeros_like(y_t), where=n_t != 0)
    rate_c = np.divide(y_c, n_c, out=np.zeros_like(y_c), where=n_c != 0)
    return np.r_[0.0, n_all], np.r_[0.0, (rate_t - rate_c) * n_all]


def _cumulative(y, treated, score) -> tuple[np.ndarray, ...]:
    """Cumulative counts down the score order, at the last row of each run of equal scores (ties move together)."""
    y, t, s = np.asarray(y, dtype="float64"), np.asarray(treated, dtype="float64"), np.asarray(score, dtype="float64")
    order = np.argsort(s, kind="mergesort")[::-1]
    y, t, s = y[order], t[order], s[order]
    ends = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    n_t = np.cumsum(t)[ends]
    n_all = (ends + 1).astype("float64")
    return n_all, np.cumsum(y * t)[ends], np.cumsum(y * (1 - t))[ends], n_t, n_all - n_t


def _normalised(curve, y, treated, score, perfect_score) -> float:
    """(area of the model's curve - random's) / (area of the perfect curve - random's); random = the chord."""
    x, v = curve(y, treated, score)
    px, pv = curve(y, treated, perfect_score)
    chord = px[-1] * pv[-1] / 2  # the random curve: a straight line to the same end point
    best = np.trapezoid(pv, px) - chord
    return float((np.trapezoid(v, x) - chord) / best) if best != 0 else float("nan")


def qini_auc_score(y: np.ndarray, treated: np.ndarray, score: np.ndarray) -> float:
    """Normalised Qini AUC (scikit-uplift's `qini_auc_score`, negative effects allowed): 1 = a perfect ranking,
    0 = random, below 0 = worse than random."""
    y, t = np.asarray(y, dtype="float64"), np.asarray(treated, dtype="float64")
    # The perfect ranking: treated positives first, control positives last.
    return _normalised(qini_curve, y, t, score, y * t - y * (1 - t))


def qini_auc_replicates(y: np.ndarray, treated: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """`qini_auc_score` of each resample of the rows, given as a (resamples x rows) matrix of how often each row is
    drawn: equal to `qini_auc_score` on the rows repeated that often (ties move together), without a sort per
    resample (the bootstrap of `training.uplift.paired_gaps`)."""
    y, t, s = (np.asarray(a, dtype="float64") for a in (y, treated, score))
    w = np.atleast_2d(np.asarray(weights, dtype="float64"))

    def area(order_by: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        order = np.argsort(order_by, kind="mergesort")[::-1]
        ends = np.r_[np.flatnonzero(np.diff(order_by[order])), len(order) - 1]
        wo, yo, to = w[:, order], y[order], t[order]
        n_all = np.cumsum(wo, axis=1)[:, ends]
        n_t = np.cumsum(wo * to, axis=1)[:, ends]
        y_t = np.cumsum(wo * (yo * to), axis=1)[:, ends]
        y_c = np.cumsum(wo * (yo * (1 - to)), axis=1)[:, ends]
        n_c = n_all - n_t
        v = y_t - y_c * np.divide(n_t, n_c, out=np.zeros_like(n_t), where=n_c != 0)
        zero = np.zeros((len(w), 1))
        x, v = np.hstack([zero, n_all]), np.hstack([zero, v])
        return np.trapezoid(v, x, axis=1), x[:, -1], v[:, -1]

    model, _, _ = area(s)
    perfect, x_end, v_end = area(y * t - y * (1 - t))
    chord = x_end * v_end / 2
    best = perfect - chord
    return np.divide(model - chord, best, out=np.full(len(w), np.nan), where=best != 0)


def uplift_auc_score(y: np.ndarray, treated: np.ndarray, score: np.ndarray) -> float:
    """Normalised area under the uplift curve (scikit-uplift's `uplift_auc_score`, the AUUC)."""
    y, t = np.asarray(y, dtype="float64"), np.asarray(treated, dtype="float64")
    # scikit-uplift's perfect uplift ranking: responders when treated and non-responders in control first.
    control_responders = ((y == 1) & (t == 0)).sum()
    treated_non_responders = ((y == 0) & (t == 1)).sum()
    summand = y if control_responders > treated_non_responders else t
    return _normalised(uplift_curve, y, t, score, 2 * (y == t) + summand)


def uplift_at_k(y: np.ndarray, treated: np.ndarray, score: np.ndarray, k: float = 0.2) -> float:
    """Treated minus control conversion rate among the top `k` share of rows by score (scikit-uplift's
    `uplift_at_k`, average='first'); NaN when one arm is absent there."""
    y, t = np.asarray(y, dtype="float64"), np.asarray(treated, dtype=bool)
    top = np.argsort(np.asarray(score, dtype="float64"), kind="mergesort")[::-1][: int(np.ceil(len(y) * k))]
    y_, t_ = y[top], t[top]
    if not t_.any() or t_.all():
        return float("nan")
    return float(y_[t_].mean() - y_[~t_].mean())


def uplift_metrics(y: np.ndarray, treated: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """Normalised Qini AUC, normalised AUUC and uplift in the top 20 % of one ranking (one offer vs control)."""
    return {
        "qini_auc": qini_auc_score(y, treated, score),
        "auuc": uplift_auc_score(y, treated, score),
        "uplift_at_20": uplift_at_k(y, treated, score, 0.2),
        "rows": float(len(y)),
        "treated_share": float(np.mean(treated)),
    }


def per_offer_uplift_metrics(y: np.ndarray, treated: np.ndarray, offer: np.ndarray, scores: dict[str, np.ndarray],
                             min_rows: int = 20) -> dict[str, dict[str, float]]:
    """`uplift_metrics` per offer: that offer's treated rows against every control row, each row scored FOR that
    offer (`scores[offer]`, one score per row: controls were scored as if sent that offer).

    Pooling offers into one ranking would rank one offer's treated rows against controls scored for another,
    which measures the offers' base rates, not the model's targeting. Offers with fewer than `min_rows`
    treated rows are left out.
    """
    treated = np.asarray(treated, dtype=bool)
    offer = np.asarray(offer, dtype=object)
    out = {}
    for name, score in scores.items():
        rows = (treated & (offer == name)) | ~treated
        if (treated & (offer == name)).sum() >= min_rows and (~treated).sum() >= min_rows:
            out[name] = uplift_metrics(np.asarray(y)[rows], treated[rows], np.asarray(score)[rows])
    return out


def summarise_offers(per_offer: dict[str, dict[str, float]]) -> dict[str, float]:
    """One figure per metric over offers: weighted by each offer's treated rows (the offers a policy sends most
    count most), plus each offer's own figures as `<metric>/<offer>`."""
    if not per_offer:
        return {"qini_auc": float("nan"), "auuc": float("nan"), "uplift_at_20": float("nan"), "offers": 0.0}
    weights = np.array([m["rows"] * m["treated_share"] for m in per_offer.values()])
    out: dict[str, float] = {}
    for key in ("qini_auc", "auuc", "uplift_at_20"):
        values = np.array([m[key] for m in per_offer.values()])
        ok = np.isfinite(values)
        out[key] = float(np.average(values[ok], weights=weights[ok])) if ok.any() else float("nan")
        out.update({f"{key}/{_metric_name(name)}": float(m[key]) for name, m in per_offer.items()})
    out["offers"] = float(len(per_offer))
    out["rows"] = float(sum(m["rows"] for m in per_offer.values()))  # controls counted once per offer
    return out


def _metric_name(offer: str) -> str:
    """An offer id as MLflow accepts it in a metric name (letters, digits, _ - . space /)."""
    return re.sub(r"[^\w\-. /]", "_", str(offer))


def fold_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """Mean over folds and its `level` interval (t distribution: few folds)."""
    from scipy.stats import t as student

    v = np.asarray([x for x in values if np.isfinite(x)], dtype="float64")
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(v.mean())
    if len(v) < 2:
        return mean, float("nan"), float("nan")
    half = float(student.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return mean, mean - half, mean + half


def charts(folder: Path, y: np.ndarray, p: np.ndarray, importance: dict[str, float] | None = None) -> list[Path]:
    """Calibration, cumulative gain and feature importance charts as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    order = np.argsort(p)
    parts = [b for b in np.array_split(order, 10) if len(b)]
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, max(p.max(), 1e-3)], [0, max(p.max(), 1e-3)], "k:", lw=1)
    ax.plot([p[b].mean() for b in parts], [y[b].mean() for b in parts], "o-")
    ax.set(xlabel="predicted", ylabel="observed", title="calibration (deciles)")
    out.append(_save(fig, folder / "calibration.png"))
    fig, ax = plt.subplots(figsize=(4, 4))
    ranked = y[np.argsort(-p, kind="stable")]
    ax.plot(np.arange(1, len(y) + 1) / len(y), np.cumsum(ranked) / max(ranked.sum(), 1), label="model")
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="random")
    ax.set(xlabel="share contacted", ylabel="share of positives", title="cumulative gain")
    ax.legend()
    out.append(_save(fig, folder / "gain.png"))
    if importance:
        top = sorted(importance.items(), key=lambda kv: kv[1], reverse=True)[:20]
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.barh([k for k, _ in top][::-1], [v for _, v in top][::-1])
        ax.set(title="feature importance (gain)")
        out.append(_save(fig, folder / "importance.png"))
    return out


def uplift_chart(folder: Path, y: np.ndarray, treated: np.ndarray, score: np.ndarray) -> Path:
    """The Qini curve of the model against random targeting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, q = qini_curve(y, treated, score)
    x = x / max(x[-1], 1)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(x, q, label="model")
    ax.plot([0, 1], [0, q[-1]], "k:", lw=1, label="random")
    ax.set(xlabel="share targeted", ylabel="incremental positives", title="Qini curve")
    ax.legend()
    folder.mkdir(parents=True, exist_ok=True)
    return _save(fig, folder / "qini.png")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
