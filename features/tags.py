"""Fitted tags: tags whose definition is learnt from the data (the behaviour cluster), fitted point-in-time.

A tag at snapshot t is a feature at t, so its definition may only use what was known at t. The k-means centres
that define the behaviour clusters are refitted at every snapshot on the rows of that snapshot and the earlier
ones (each row's values come from events before its own snapshot), warm-started from the previous snapshot's
centres so cluster numbers stay stable over time. A later snapshot never changes an earlier one's tags
(tests/test_tags.py).
"""

from __future__ import annotations

import numpy as np

__all__ = ["cluster_centres", "behaviour_clusters"]

_SAMPLE = 20_000  # rows each fit reads: the centres of 6 clusters in 6 dimensions settle long before that
_CHUNK = 200_000  # rows per assignment: bounds the (rows x clusters x dimensions) distance array at 1M rows


def cluster_centres(x: np.ndarray, snapshots: np.ndarray, k: int, seed: int,
                    iterations: int = 20) -> list[tuple[object, np.ndarray, np.ndarray, np.ndarray]]:
    """Per snapshot, oldest first: (snapshot, mean, sd, centres in standard units), fitted on the rows of that
    snapshot and earlier ones only, warm-started from the previous snapshot's centres; centres ordered by their
    distance from the mean (stable cluster numbers)."""
    x = np.asarray(x, dtype="float64")
    if len(x) == 0:
        return []
    snapshots = np.asarray(snapshots)
    rng = np.random.default_rng(seed)
    centres = None  # in the units of x, carried from one snapshot to the next
    fits = []
    for snap in np.unique(snapshots):  # sorted: oldest first
        known = np.flatnonzero(snapshots <= snap)
        sample = x[rng.choice(known, size=min(len(known), _SAMPLE), replace=False)]
        mu, sd = sample.mean(axis=0), sample.std(axis=0) + 1e-9
        z = (sample - mu) / sd
        start = z[rng.choice(len(z), size=min(k, len(z)), replace=False)] if centres is None else (centres - mu) / sd
        fitted = _kmeans(z, start, iterations)
        fitted = fitted[np.argsort(np.linalg.norm(fitted, axis=1), kind="stable")]
        centres = fitted * sd + mu
        fits.append((snap, mu, sd, fitted))
    return fits


def behaviour_clusters(x: np.ndarray, snapshots: np.ndarray, k: int, seed: int, iterations: int = 20) -> np.ndarray:
    """A cluster number per row of `x` (rows x measures); the rows of each snapshot are assigned with centres fitted
    on the rows of that snapshot and earlier ones only (`cluster_centres`). Clusters are numbered by the size of
    their centre. The feature build runs the same fit on a sample and the assignment in SQL."""
    x = np.asarray(x, dtype="float64")
    out = np.zeros(len(x), dtype="int64")
    snapshots = np.asarray(snapshots)
    for snap, mu, sd, fitted in cluster_centres(x, snapshots, k, seed, iterations):
        rows = np.flatnonzero(snapshots == snap)
        for begin in range(0, len(rows), _CHUNK):
            part = rows[begin:begin + _CHUNK]
            out[part] = ((((x[part] - mu) / sd)[:, None, :] - fitted[None]) ** 2).sum(-1).argmin(1)
    return out


def _kmeans(z: np.ndarray, centres: np.ndarray, iterations: int) -> np.ndarray:
    """Lloyd's iterations from `centres`; an empty cluster keeps its centre."""
    for _ in range(iterations):
        labels = ((z[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
        centres = np.stack([z[labels == j].mean(0) if (labels == j).any() else centres[j] for j in range(len(centres))])
    return centres
