"""Send time: P(open | user, channel, local hour), PyTorch (user features + channel and hour embeddings)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from nextbest.features.build import SEND_HOUR_BINS
from nextbest.features.feature_services import service_name
from nextbest.training.datasets import (
    REQUEST_COLUMNS,
    SharedJoins,
    TrainingSet,
    contact_frame,
    service_features,
)
from nextbest.training.encoding import fit_encoder
from nextbest.training.metrics import classification_metrics
from nextbest.training.nets import train_net
from nextbest.training.scorers import (
    RHYTHM_INPUTS,
    SendTimeNet,
    SendTimeScorer,
    cluster_posterior,
    hour_share,
    rhythm_columns,
    send_names,
)

__all__ = ["SendTimeConfig", "SendTimeNet", "SendTimeScorer", "build_frame", "fit", "evaluate", "hour_share",
           "rhythm_prior", "rhythm_clusters", "rhythm_open_curves", "hour_choice_metrics", "RAW_RHYTHM"]

_SHARES = [f"open_share_h{h:02d}" for h in range(24)]
SEND_BINS = len(SEND_HOUR_BINS)  # bins of local send hours of the time profile's past sends and opens
# time-profile columns the net reads only through the rhythm inputs
RAW_RHYTHM = frozenset([*_SHARES, "peak_open_hour", *(c for names in send_names(SEND_BINS) for c in names)])


@dataclass(frozen=True)
class SendTimeConfig:
    """Open window and network size."""

    window_days: int = 7  # an open counts within this many days of the send
    hidden: int = 64
    epochs: int = 6
    batch: int = 2048
    lr: float = 1e-2
    seed: int = 7
    # A user's activity shares count as much as the population's shares would with this many events (the
    # shrinkage of `scorers.rhythm_inputs`): on the demo world 4-8 picked the best hours from the shares alone.
    rhythm_strength: float = 6.0
    # Each user's prior is a mixture of this many daily profiles of the population, weighted by how well each
    # explains the user's own events (`scorers.cluster_prior`; 0: one population profile, the models before the
    # ninth session). Fitted on the users with at least `rhythm_cluster_events` events, whose profile is their own.
    rhythm_clusters: int = 4
    rhythm_cluster_events: float = 30.0
    # The user's past sends and opens per bin of local send hours (the time profile's `sends_hXX_365d`,
    # `opens_hXX_365d`) also weigh the clusters, by each cluster's open rate per bin fitted on the rows of users
    # whose profile is their own (`rhythm_open_curves`; False: events alone, the models of the ninth session). On
    # features without those columns, or a log without opens, the prior reads the events alone either way.
    rhythm_opens: bool = True
    rhythm_open_prior: float = 20.0  # each cluster's open rate per bin shrinks to the bin's with this many sends
    hour_choice_rows: int = 30_000  # holdout rows the hour-choice metrics score (each at every logged hour)


def build_frame(store, raw: dict, config: SendTimeConfig = SendTimeConfig(), shared: SharedJoins | None = None) -> TrainingSet:
    """Every sent contact with its local send hour, features as of the send, label = opened."""
    service = service_name("send_time")
    frame = contact_frame(store, raw, config.window_days, service, shared).assign(label=lambda f: f["opened"])
    return TrainingSet(frame, service, service_features(store, service), REQUEST_COLUMNS["send_time"])


def rhythm_prior(frame) -> np.ndarray:
    """The population's activity share per local hour: the users' shares weighted by the events they rest on
    (uniform when no row has any)."""
    shares, events = rhythm_columns(frame)
    w = np.where(np.isnan(shares).any(axis=1), 0.0, np.nan_to_num(events, nan=0.0).clip(0.0, None))
    if w.sum() <= 0:
        return np.full(24, 1 / 24)
    prior = (np.nan_to_num(shares, nan=0.0) * w[:, None]).sum(axis=0) / w.sum()
    return prior / prior.sum()


def rhythm_clusters(frame, k: int, min_events: float = 30.0, seed: int = 7, rows: int = 20_000,
                    iterations: int = 50) -> tuple[np.ndarray, np.ndarray] | None:
    """The population's daily rhythms: a mixture of `k` multinomial profiles over the 24 local hours (K, 24) and
    their weights (K), fitted by EM on the activity shares of the rows whose profile rests on at least `min_events`
    events (at most `rows` of them, a seeded sample). Each row counts as at most `min_events` events in the
    responsibilities, so a few very active users do not make the clusters' boundaries. None when there are fewer
    than 10 x k such rows or k < 2: the one population profile (`rhythm_prior`) is then the prior."""
    shares, events = rhythm_columns(frame)
    ok = ~np.isnan(shares).any(axis=1) & (np.nan_to_num(events, nan=0.0) >= min_events)
    x, n = shares[ok], np.minimum(events[ok], min_events)
    if k < 2 or len(x) < 10 * k:
        return None
    rng = np.random.default_rng(seed)
    if len(x) > rows:
        pick = np.sort(rng.choice(len(x), rows, replace=False))
        x, n = x[pick], n[pick]
    x = x / x.sum(axis=1, keepdims=True)
    centres = [x[rng.integers(len(x))]]  # k-means++ start: spread over the profiles seen
    for _ in range(1, k):
        d = np.min([((x - m) ** 2).sum(axis=1) for m in centres], axis=0)
        centres.append(x[rng.choice(len(x), p=d / d.sum())] if d.sum() > 0 else x[rng.integers(len(x))])
    q, weights = np.array(centres), np.full(k, 1 / k)
    for _ in range(iterations):
        r = cluster_posterior(x, n, q, weights)
        mass = r.sum(axis=0)
        keep = mass > 1e-9  # a cluster nobody belongs to is dropped
        q, r, mass = q[keep], r[:, keep], mass[keep]
        weights = mass / mass.sum()
        q = (r.T @ x) / mass[:, None]
        q /= q.sum(axis=1, keepdims=True)
    order = np.argsort(q.argmax(axis=1), kind="stable")  # by peak hour: a stable, readable order in the model's meta
    return q[order], weights[order]


def rhythm_open_curves(frame, opened: np.ndarray, clusters: np.ndarray, weights: np.ndarray | None,
                       min_events: float = 30.0, prior_sends: float = 20.0, bins: int = SEND_BINS) -> np.ndarray | None:
    """(K, bins): each rhythm cluster's P(open) of a send in each bin of local send hours, from the training rows
    (each a send, its `local_hour`, and `opened`, whether it was opened) of users whose profile rests on at least
    `min_events` events, each row weighted by its user's posterior of the cluster given those events; shrunk to the
    bin's open rate over those rows (the rate of all of them in a bin without rows) with the weight of
    `prior_sends` sends. The open rate per hour of the users the clusters were fitted on: a send near their active
    hours is opened more often, which makes a sparse user's past opens evidence of their cluster
    (`scorers.cluster_posterior`).

    None when the frame lacks the time profile's past sends (features built before them: the prior then reads the
    events alone), or no row was opened (a log without `opened_at`), or fewer than 100 such rows."""
    names = send_names(bins)
    if any(c not in frame for c in [*names[0], *names[1]]) or "local_hour" not in frame:
        return None
    shares, events = rhythm_columns(frame)
    n = np.nan_to_num(events, nan=0.0)
    hour = pd.to_numeric(frame["local_hour"], errors="coerce").to_numpy()
    y = np.asarray(opened, dtype="float64")
    ok = ~np.isnan(shares).any(axis=1) & (n >= min_events) & np.isfinite(hour) & np.isfinite(y)
    if ok.sum() < 100 or np.nansum(y[ok]) <= 0:
        return None
    shares, n, hour, y = shares[ok], np.minimum(n[ok], min_events), hour[ok].astype(int) % 24, y[ok]
    r = cluster_posterior(shares / shares.sum(axis=1, keepdims=True), n, clusters, weights)  # (rows, K)
    b = hour // (24 // bins)
    onehot = np.zeros((len(b), bins))
    onehot[np.arange(len(b)), b] = 1.0
    sent, opened = r.T @ onehot, r.T @ (onehot * y[:, None])  # (K, bins)
    rows, hits = onehot.sum(axis=0), onehot.T @ y
    base = np.where(rows > 0, hits / np.maximum(rows, 1), y.mean())
    return (opened + prior_sends * base[None, :]) / (sent + prior_sends)


def fit(train: TrainingSet, config: SendTimeConfig = SendTimeConfig(), progress=None) -> SendTimeScorer:
    torch.manual_seed(config.seed)  # weight initialisation
    # The rhythm reaches the net once, as `rhythm_inputs`: the raw shares and the peak hour (and the matched
    # share and gap derived from them) also in the tower let it fit noise of sparse profiles and the peak's -1
    # ("no rhythm known"), which it read as an hour near midnight (benchmarks/RESULTS.md, issue 16).
    columns = [c for c in train.features if c not in RAW_RHYTHM]
    encoder = fit_encoder(train.frame, columns, request=train.request)  # + matched features (channel rates)
    channels = tuple(sorted(train.frame["channel"].dropna().astype(str).unique()))
    net = SendTimeNet(encoder.dense_width, len(channels), config.hidden, RHYTHM_INPUTS)
    mixture = rhythm_clusters(train.frame, config.rhythm_clusters, config.rhythm_cluster_events, config.seed)
    curves = None if mixture is None or not config.rhythm_opens else rhythm_open_curves(
        train.frame, train.y, *mixture, config.rhythm_cluster_events, config.rhythm_open_prior)
    scorer = SendTimeScorer(net, encoder, channels, train.feature_service, config.hidden,
                            rhythm_prior(train.frame), config.rhythm_strength, *(mixture or (None, None)), curves)
    train_net(net, scorer.inputs(train.frame), train.y, epochs=config.epochs, batch=config.batch, lr=config.lr, seed=config.seed)
    return scorer


def hour_choice_metrics(scorer, holdout: TrainingSet, rows: int = 30_000, seed: int = 7) -> dict[str, float]:
    """How well a rule's best hour opens, from logged sends: per rule, the open rate of the holdout sends that went
    out at the hour the rule picks for that user and channel (among the hours the log used on the channel), over
    the open rate of all of them. Unbiased for the rule's open rate when the log drew its send hours at random,
    as the simulated history does; with a log that timed its sends, read it as a comparison on the same rows.

    Rules: the model; `share`, the hour of the user's largest activity share (`open_share_hXX`, the plain
    per-user baseline); `population`, the channel's best hour in these same rows (in-sample: favours it).
    """
    f = holdout.frame
    if len(f) > rows:
        f = f.iloc[np.sort(np.random.default_rng(seed).choice(len(f), rows, replace=False))]
    y = f[holdout.label].to_numpy(dtype="float64")
    hour = pd.to_numeric(f["local_hour"], errors="coerce").to_numpy()
    channel = f["channel"].astype(str).to_numpy()
    used = sorted(int(h) for h in np.unique(hour[np.isfinite(hour)]))
    if not used or not len(f):
        return {}
    logged = np.zeros((len(f), 24), dtype=bool)  # the hours the log used on each row's channel
    for c in np.unique(channel):
        logged[np.ix_(channel == c, np.unique(hour[(channel == c) & np.isfinite(hour)]).astype(int))] = True
    model = np.full((len(f), 24), -np.inf)
    for h in used:
        model[:, h] = scorer.predict(f.assign(local_hour=h))
    shares, _ = rhythm_columns(f)
    rates = pd.DataFrame({"c": channel, "h": hour, "y": y}).groupby(["c", "h"])["y"].mean()
    population = np.full((len(f), 24), -np.inf)
    for (c, h), r in rates.items():
        population[channel == c, int(h)] = r
    base = y.mean()
    out = {"hour_choice_rows": float(len(f))}
    for name, score in (("model", model), ("share", np.nan_to_num(shares, nan=1 / 24)), ("population", population)):
        pick = np.where(logged, score, -np.inf).argmax(axis=1)
        hit = pick == hour
        out[f"hour_choice_{name}_matched"] = float(hit.sum())
        out[f"hour_choice_{name}_open_lift"] = float(y[hit].mean() / base) if hit.any() and base > 0 else float("nan")
    return out


def evaluate(scorer, holdout: TrainingSet, hour_choice_rows: int = SendTimeConfig.hour_choice_rows) -> dict[str, float]:
    metrics = classification_metrics(holdout.y, np.asarray(scorer.predict(holdout.frame)))
    return {**metrics, **(hour_choice_metrics(scorer, holdout, hour_choice_rows) if hour_choice_rows else {})}
