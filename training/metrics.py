"""Model quality: classification metrics, uplift (Qini/AUUC), and the charts logged with each run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

__all__ = ["classification_metrics", "auc_interval", "calibration_error", "capture_at", "uplift_curve", "uplift_metrics",
           "charts", "uplift_chart"]


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


def uplift_curve(y: np.ndarray, treated: np.ndarray, score: np.ndarray, points: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Qini curve: incremental positives among the top fraction x, scaled to the treated count."""
    order = np.argsort(-score, kind="stable")
    y, t = np.asarray(y, float)[order], np.asarray(treated, bool)[order]
    ct, cc = np.cumsum(t), np.cumsum(~t)
    yt, yc = np.cumsum(y * t), np.cumsum(y * ~t)
    qini = yt - yc * np.divide(ct, cc, out=np.zeros_like(yt), where=cc > 0)
    idx = np.linspace(0, len(y) - 1, points).astype(int)
    return np.concatenate([[0.0], (idx + 1) / len(y)]), np.concatenate([[0.0], qini[idx]])


def uplift_metrics(y: np.ndarray, treated: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """Qini coefficient (area between model and random Qini curves, per row) and AUUC, plus top-20 % uplift."""
    x, q = uplift_curve(y, treated, score, points=100)
    random = x * q[-1]
    n = len(y)
    order = np.argsort(-score, kind="stable")[: max(int(0.2 * n), 1)]
    y_, t_ = np.asarray(y, float)[order], np.asarray(treated, bool)[order]
    top = (y_[t_].mean() if t_.any() else 0.0) - (y_[~t_].mean() if (~t_).any() else 0.0)
    return {
        "qini": float(np.trapezoid(q - random, x) / max(n, 1)),
        "auuc": float(np.trapezoid(q, x) / max(n, 1)),
        "uplift_top20": float(top),
        "rows": float(n),
        "treated_share": float(np.mean(treated)),
    }


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

    x, q = uplift_curve(y, treated, score)
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
