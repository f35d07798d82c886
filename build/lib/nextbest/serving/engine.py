"""The decision engine: score offer x channel once, send hour per channel in one pass, pick by expected value.

Everything here is a pure function of arrays, frames and a `np.random.Generator`; the contact rules live
in serving/policy.py and I/O in serving/runtime.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd
from nextbest.serving.config import Exploration, OperatorConfig

__all__ = [
    "Scorer",
    "Model",
    "ModelSet",
    "REQUEST_COLUMNS",
    "Users",
    "n_users",
    "send_time_scores",
    "conversion_scores",
    "funnel_factors",
    "churn_scores",
    "best_slots",
    "expected_values",
    "Pick",
    "choose",
    "best_slots_many",
    "expected_values_many",
    "Greedy",
    "greedy_many",
    "choose_one",
]

HOURS = 24
# Columns the caller adds to the FeatureService columns, per model (see training/registry.py).
REQUEST_COLUMNS: dict[str, tuple[str, ...]] = {
    "conversion": ("offer_id", "offer_category", "offer_kind", "offer_value", "channel", "local_hour"),
    "uplift": ("offer_id", "offer_category", "offer_kind", "offer_value", "channel", "local_hour"),
    "send_time": ("channel", "local_hour"),
    "churn": (),
}
# Rule-based fallbacks when a feature is missing too: a plain population rate.
_BASE_CONVERT = 0.02
_BASE_OPEN = 0.2


class Scorer(Protocol):
    """What a champion model offers serving: its FeatureService and a batch predict."""

    feature_service: str

    def predict(self, frame: pd.DataFrame) -> np.ndarray: ...


class Model(Protocol):
    name: str
    version: str
    model: Scorer


@dataclass(frozen=True)
class ModelSet:
    """The champions in force, and the feature columns each one reads (from its FeatureService)."""

    models: dict[str, Model] = field(default_factory=dict)
    columns: dict[str, list[str]] = field(default_factory=dict)

    def versions(self) -> dict[str, str]:
        return {kind: f"{m.name}/{m.version}" for kind, m in sorted(self.models.items())}

    def frame(self, kind: str, users: Users, rows: np.ndarray, request: dict[str, np.ndarray]) -> pd.DataFrame:
        """The model's input: its feature columns for user `rows` (NaN where missing), then the request columns."""
        missing = np.full(len(rows), np.nan)
        data = {c: users[c][rows] if c in users else missing for c in self.columns[kind]}
        data.update({name: request[name] for name in REQUEST_COLUMNS[kind]})
        return pd.DataFrame(data)


Users = dict[str, np.ndarray]  # feature name -> one value per user (float64 for numbers, object otherwise)


def n_users(users: Users) -> int:
    return len(users["user_id"])


def _feature(users: Users, name: str, default: float) -> np.ndarray:
    v = users.get(name)
    if v is None or v.dtype == object:
        return np.full(n_users(users), default)
    return np.where(np.isnan(v), default, v)


def send_time_scores(models: ModelSet, users: Users, channels: list[str]) -> np.ndarray:
    """P(open) per (user, channel, local hour): (U, C, 24), one predict over U x C x 24 rows."""
    n_u, n_c = n_users(users), len(channels)
    if "send_time" in models.models:
        rows = np.repeat(np.arange(n_u), n_c * HOURS)
        request = {"channel": np.tile(np.repeat(np.array(channels, dtype=object), HOURS), n_u),
                   "local_hour": np.tile(np.arange(HOURS), n_u * n_c)}
        p = models.models["send_time"].model.predict(models.frame("send_time", users, rows, request))
        return np.asarray(p, dtype=float).reshape(n_u, n_c, HOURS)
    # Rule-based: the channel's open rate spread over the user's app-open rhythm (uniform if unknown).
    shares = np.stack([_feature(users, f"open_share_h{h:02d}", 1 / HOURS) for h in range(HOURS)], axis=1)
    rates = np.stack([_feature(users, f"open_rate_{c}", _BASE_OPEN) for c in channels], axis=1)
    return np.clip(rates[:, :, None] * shares[:, None, :] * HOURS, 0.0, 1.0)


def conversion_scores(models: ModelSet, users: Users, config: OperatorConfig,
                      hours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """P(convert) and uplift per (user, offer, channel), channel at its send hour `hours` (U, C)."""
    n_u, n_o, n_c = n_users(users), len(config.offers), len(config.channels)
    offers, channels = config.offers, config.channel_names()
    uplift = np.full((n_u, n_o, n_c), np.nan)
    if "conversion" in models.models or "uplift" in models.models:
        rows = np.repeat(np.arange(n_u), n_o * n_c)
        request = {k: np.tile(v, n_u) for k, v in _offer_channel_request(config).items()}
        request["local_hour"] = np.repeat(hours[:, None, :], n_o, axis=1).ravel()
        for kind in ("conversion", "uplift"):
            if kind == "uplift" and kind in models.models and hasattr(models.models[kind].model, "lift"):
                p_open, lift = funnel_factors(models, users, config, hours)
                uplift = p_open[:, None, :] * lift[:, :, None]
                continue
            if kind in models.models:
                p = models.models[kind].model.predict(models.frame(kind, users, rows, request))
                out = np.asarray(p, dtype=float).reshape(n_u, n_o, n_c)
                if kind == "uplift":
                    uplift = out
                else:
                    p_convert = out
        if "conversion" not in models.models:
            p_convert = _rule_convert(users, offers, channels)
        return p_convert, uplift
    return _rule_convert(users, offers, channels), uplift


def _offer_channel_request(config: OperatorConfig) -> dict[str, np.ndarray]:
    """The request columns of one user's offer x channel rows (offer-major), without the hour."""
    offers, channels, n_c = config.offers, config.channel_names(), len(config.channels)
    return {
        "offer_id": np.repeat([o.offer_id for o in offers], n_c).astype(object),
        "offer_category": np.repeat([o.category for o in offers], n_c).astype(object),
        "offer_kind": np.repeat([o.kind for o in offers], n_c).astype(object),
        "offer_value": np.repeat([o.value for o in offers], n_c).astype(float),
        "channel": np.tile(np.array(channels, dtype=object), len(offers)),
    }


def funnel_factors(models: ModelSet, users: Users, config: OperatorConfig,
                   hours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A funnel uplift champion's two factors: P(open) per (user, channel) at its hour `hours` (U, C), and the
    lift of an opened offer, P(convert | opened, offer) - P(convert | control), per (user, offer) (U, O).

    Their product is the model's `predict` over the full user x offer x channel frame, from a fraction of the
    rows: the open arm reads channel and hour, the offer arms the offer, the control arm the user only.
    """
    model = models.models["uplift"].model
    per_user = _offer_channel_request(config)
    n_u, n_c = hours.shape
    n_o = len(config.offers)
    users_rows = np.arange(n_u)

    def frame(rows: np.ndarray, pick: np.ndarray, hour: np.ndarray) -> pd.DataFrame:
        request = {k: np.tile(v[pick], len(rows) // len(pick)) for k, v in per_user.items()}
        request["local_hour"] = hour
        return models.frame("uplift", users, rows, request)

    # Arm inputs: channel + hour for opening, offer for converting; the other request columns are not read.
    first_offer = np.arange(n_c)  # offer 0 x every channel
    first_channel = np.arange(n_o) * n_c  # every offer x channel 0
    p_open = model.arm("engage", frame(np.repeat(users_rows, n_c), first_offer, hours.ravel()))
    p_ctrl = model.arm("control", frame(users_rows, first_offer[:1], hours[:, 0]))
    lift = model.lift(frame(np.repeat(users_rows, n_o), first_channel, np.repeat(hours[:, 0], n_o)), np.repeat(p_ctrl, n_o))
    return p_open.reshape(n_u, n_c), lift.reshape(n_u, n_o)


def _rule_convert(users: Users, offers, channels: list[str]) -> np.ndarray:
    """Rule-based P(convert): the channel's smoothed convert rate, raised by the user's affinity to the category."""
    rates = np.stack([_feature(users, f"convert_rate_{c}", _BASE_CONVERT) for c in channels], axis=1)  # (U, C)
    # Affinity shares sum to 1 over categories; 0.5 + 2 x share keeps a factor in [0.5, 2.5] ("any" = 1).
    factor = np.stack([np.ones(n_users(users)) if o.category == "any" else 0.5 + 2 * _feature(users, f"aff_{o.category}", 0.25)
                       for o in offers], axis=1)  # (U, O)
    return np.clip(factor[:, :, None] * rates[:, None, :], 0.0, 1.0)


def churn_scores(models: ModelSet, users: Users) -> np.ndarray:
    """P(churn) per user; zero (no retention boost) without a churn model."""
    if "churn" not in models.models:
        return np.zeros(n_users(users))
    frame = models.frame("churn", users, np.arange(n_users(users)), {})
    return np.asarray(models.models["churn"].model.predict(frame), dtype=float)


def best_slots(p_open: np.ndarray, local_hour: np.ndarray, slot_ok: np.ndarray) -> np.ndarray:
    """Per channel, the allowed slot with the highest P(open) (earliest on ties); -1 where none is allowed."""
    scores = np.where(slot_ok, p_open[:, local_hour], -np.inf)  # (C, S)
    best = scores.argmax(axis=1)
    return np.where(slot_ok.any(axis=1), best, -1)


def expected_values(p_convert: np.ndarray, uplift: np.ndarray, config: OperatorConfig, p_churn: float) -> np.ndarray:
    """EV per (offer, channel) = effect x value x lever x churn boost - cost; effect is uplift where known."""
    value = np.array([o.value * o.lever for o in config.offers])
    retention = np.array([o.kind == "retention" for o in config.offers])
    boost = 1.0 + config.churn_boost * p_churn * retention
    cost = np.array([c.cost for c in config.channels])
    # Uplift, not P(convert): a sure thing or a lost cause gains nothing from a contact.
    effect = np.where(np.isfinite(uplift), uplift, p_convert)
    return effect * (value * boost)[:, None] - cost[None, :]


@dataclass(frozen=True)
class Pick:
    """One choice: an (offer, channel) index pair, or None for "no action", and the probability it was picked."""

    action: tuple[int, int] | None
    propensity: float
    explored: bool


def choose(ev: np.ndarray, feasible: np.ndarray, priority: np.ndarray, exploration: Exploration,
           rng: np.random.Generator, min_ev: float = 0.0, p_convert: np.ndarray | None = None,
           unit_value: np.ndarray | None = None, draws: int = 256) -> Pick:
    """Best feasible (offer, channel) by EV, or "no action" when none beats `min_ev`; explores as configured."""
    arms = [tuple(int(i) for i in a) for a in np.argwhere(feasible)]
    # Priority only breaks EV ties; it never outweighs a real difference in value.
    score = np.array([ev[a] + 1e-9 * priority[a[0]] for a in arms]) if arms else np.zeros(0)
    greedy = int(score.argmax()) if arms and score.max() > min_ev else len(arms)  # len(arms) = "no action"
    k = len(arms) + 1
    if exploration.method == "epsilon" and exploration.rate > 0 and arms:
        explore = rng.random() < exploration.rate
        pick = int(rng.integers(k)) if explore else greedy
        propensity = (1 - exploration.rate) * (pick == greedy) + exploration.rate / k
        return Pick(arms[pick] if pick < len(arms) else None, float(propensity), explore and pick != greedy)
    if exploration.method == "thompson" and arms and p_convert is not None and unit_value is not None:
        # Each arm's P(convert) is uncertain: sample it from a Beta with `prior_strength` pseudo-contacts and
        # shift the EV by the sampled error; the propensity is the share of `draws` samples the pick wins.
        p = np.array([p_convert[a] for a in arms]).clip(1e-4, 1 - 1e-4)
        s = exploration.prior_strength
        samples = rng.beta(p[:, None] * s, (1 - p[:, None]) * s, size=(len(arms), draws + 1))
        gain = np.array([unit_value[a[0]] for a in arms])[:, None]
        sampled = np.vstack([score[:, None] + (samples - p[:, None]) * gain, np.full((1, draws + 1), min_ev)])
        winners = sampled.argmax(axis=0)
        pick = int(winners[0])
        propensity = max(float((winners[1:] == pick).mean()), 1.0 / draws)
        return Pick(arms[pick] if pick < len(arms) else None, propensity, pick != greedy)
    return Pick(arms[greedy] if greedy < len(arms) else None, 1.0, False)


# --- the same over a batch of users ------------------------------------------------------------------


def best_slots_many(p_open: np.ndarray, local_hour: np.ndarray, slot_ok: np.ndarray) -> np.ndarray:
    """`best_slots` for every user: p_open (U, C, 24), local_hour (U, S), slot_ok (U, C, S) -> (U, C)."""
    hours = np.broadcast_to(local_hour[:, None, :], slot_ok.shape)
    scores = np.where(slot_ok, np.take_along_axis(p_open, hours, axis=2), -np.inf)
    return np.where(slot_ok.any(axis=2), scores.argmax(axis=2), -1)


def expected_values_many(p_convert: np.ndarray, uplift: np.ndarray, config: OperatorConfig,
                         p_churn: np.ndarray) -> np.ndarray:
    """`expected_values` for every user: (U, O, C) from (U, O, C) scores and P(churn) (U,)."""
    value = np.array([o.value * o.lever for o in config.offers])
    retention = np.array([o.kind == "retention" for o in config.offers])
    boost = 1.0 + config.churn_boost * p_churn[:, None] * retention[None, :]
    cost = np.array([c.cost for c in config.channels])
    effect = np.where(np.isfinite(uplift), uplift, p_convert)
    return effect * (value[None, :] * boost)[:, :, None] - cost[None, None, :]


@dataclass(frozen=True)
class Greedy:
    """`choose`'s deterministic part for many users: feasible arms and the best one, per user."""

    feasible: np.ndarray  # bool (U, O * C), arms in `choose`'s order (row-major offer x channel)
    n_arms: np.ndarray  # (U,)
    best: np.ndarray  # (U,) flat index of the greedy arm, -1 for "no action"
    shape: tuple[int, int]


def greedy_many(ev: np.ndarray, feasible: np.ndarray, priority: np.ndarray, min_ev: float = 0.0) -> Greedy:
    """Per user, the feasible (offer, channel) with the best EV (priority breaks ties), as `choose` finds it."""
    n_u, n_o, n_c = ev.shape
    score = np.where(feasible, ev + 1e-9 * priority[None, :, None], -np.inf).reshape(n_u, n_o * n_c)
    flat = feasible.reshape(n_u, n_o * n_c)
    n_arms = flat.sum(axis=1)
    arg = score.argmax(axis=1)
    has = (n_arms > 0) & (score[np.arange(n_u), arg] > min_ev)
    return Greedy(flat, n_arms, np.where(has, arg, -1), (n_o, n_c))


def choose_one(g: Greedy, u: int, exploration: Exploration, rng: np.random.Generator) -> Pick:
    """`choose` for user u from its precomputed greedy arm; draws from `rng` exactly as `choose` does.

    Thompson sampling needs the per-arm samples: the caller uses `choose` for it.
    """
    k_arms = int(g.n_arms[u])
    best = int(g.best[u])
    if exploration.method == "epsilon" and exploration.rate > 0 and k_arms:
        arms = np.flatnonzero(g.feasible[u])
        greedy = int(np.searchsorted(arms, best)) if best >= 0 else k_arms
        k = k_arms + 1
        explore = rng.random() < exploration.rate
        pick = int(rng.integers(k)) if explore else greedy
        propensity = (1 - exploration.rate) * (pick == greedy) + exploration.rate / k
        action = tuple(int(i) for i in np.unravel_index(arms[pick], g.shape)) if pick < k_arms else None
        return Pick(action, float(propensity), explore and pick != greedy)
    if best < 0:
        return Pick(None, 1.0, False)
    return Pick(tuple(int(i) for i in np.unravel_index(best, g.shape)), 1.0, False)
