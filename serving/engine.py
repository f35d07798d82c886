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
from nextbest.training.compiled import RequestGrid, Rows, UserColumns
from nextbest.training.scorers import REQUEST_COLUMNS as _REQUEST

__all__ = [
    "Scorer",
    "Model",
    "ModelSet",
    "REQUEST_COLUMNS",
    "Users",
    "n_users",
    "user_columns",
    "request_grid",
    "send_time_scores",
    "conversion_scores",
    "funnel_factors",
    "open_factor",
    "shrunk_uplift",
    "churn_scores",
    "best_slots",
    "expected_values",
    "Pick",
    "choose",
    "best_slots_many",
    "expected_values_many",
    "opt_out_risk",
    "Greedy",
    "greedy_many",
    "choose_one",
    "no_action_probability",
    "epsilon_propensity",
    "explore_many",
]

HOURS = 24
# The models decisions use, and the columns the caller adds to their FeatureService columns (defined once, in
# training/scorers.py, for training and serving alike).
REQUEST_COLUMNS: dict[str, tuple[str, ...]] = {k: _REQUEST[k] for k in ("conversion", "uplift", "send_time", "churn")}
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
    """The champions in force, the feature columns each one is given (its FeatureService's), and each one compiled
    against them (`compile`): decisions score compiled models; a model without a compiled form (a test's fake)
    scores a DataFrame."""

    models: dict[str, Model] = field(default_factory=dict)
    columns: dict[str, list[str]] = field(default_factory=dict)
    compiled: dict[str, object] = field(default_factory=dict)

    def compile(self) -> ModelSet:
        """The same set with every model that can be compiled bound to its columns; ContractError if one does not fit."""
        compiled = {kind: m.model.compile(self.columns[kind], REQUEST_COLUMNS[kind]) for kind, m in self.models.items()
                    if kind in REQUEST_COLUMNS and hasattr(m.model, "compile")}  # others are not scored by decisions
        return ModelSet(self.models, self.columns, compiled)

    def pandas(self) -> ModelSet:
        """The same models scoring DataFrames, as training does (the reference the compiled path is tested against)."""
        return ModelSet(self.models, self.columns)

    def scorer(self, kind: str, x: Rows) -> tuple[object, object]:
        """The model of `kind` and its input for rows `x`: the compiled model and `x`, or the model and a frame."""
        compiled = self.compiled.get(kind)
        if compiled is not None:
            return compiled, x
        request = x.grid.request(x.cells, x.hours, REQUEST_COLUMNS[kind])
        return self.models[kind].model, self.frame(kind, x.users.users, x.rows, request)

    def versions(self) -> dict[str, str]:
        return {kind: f"{m.name}/{m.version}" for kind, m in sorted(self.models.items())}

    def frame(self, kind: str, users: Users, rows: np.ndarray, request: dict[str, np.ndarray]) -> pd.DataFrame:
        """The model's input: its feature columns for user `rows` (NaN where missing), then the request columns."""
        missing = np.full(len(rows), np.nan)
        data = {c: users[c][rows] if c in users else missing for c in self.columns[kind]}
        data.update({name: request[name] for name in REQUEST_COLUMNS[kind]})
        return pd.DataFrame(data)


Users = dict[str, np.ndarray]  # feature name -> one value per user (float64 for numbers, object otherwise)


def n_users(users: Users | UserColumns) -> int:
    return users.n if isinstance(users, UserColumns) else len(users["user_id"])


def user_columns(users: Users | UserColumns) -> UserColumns:
    """A request's features converted once for every model (pass the same object to each scoring call)."""
    return users if isinstance(users, UserColumns) else UserColumns(users)


_GRIDS: dict[int, tuple[OperatorConfig, RequestGrid]] = {}


def request_grid(config: OperatorConfig) -> RequestGrid:
    """The offer x channel grid of a config, built once per config object."""
    hit = _GRIDS.get(id(config))
    if hit is None or hit[0] is not config:
        _GRIDS.clear()  # one config is in force at a time; the entry keeps it alive so its id is not reused
        hit = _GRIDS[id(config)] = (config, RequestGrid(config.offers, config.channel_names()))
    return hit[1]


def _feature(users: Users | UserColumns, name: str, default: float) -> np.ndarray:
    v = (users.users if isinstance(users, UserColumns) else users).get(name)
    if v is None or v.dtype == object:
        return np.full(n_users(users), default)
    return np.where(np.isnan(v), default, v)


def send_time_scores(models: ModelSet, users: Users | UserColumns, config: OperatorConfig,
                     candidates: np.ndarray | None = None) -> np.ndarray:
    """P(open) per (user, channel, local hour): (U, C, 24), one predict over U x C x 24 rows; with `candidates`
    (bool (U, C)), over those (user, channel) pairs only, NaN elsewhere."""
    channels = config.channel_names()
    n_u, n_c = n_users(users), len(channels)
    if "send_time" in models.models:
        user, channel = np.nonzero(np.ones((n_u, n_c), dtype=bool) if candidates is None else candidates)
        x = Rows(user_columns(users), np.repeat(user, HOURS), np.repeat(channel, HOURS),  # cells of offer 0: channel c
                 np.tile(np.arange(HOURS, dtype="float64"), len(user)), request_grid(config))
        out = np.full((n_u, n_c, HOURS), np.nan)
        if len(user):
            model, inputs = models.scorer("send_time", x)
            out[user, channel] = np.asarray(model.predict(inputs), dtype=float).reshape(len(user), HOURS)
        return out
    # Rule-based: the channel's open rate spread over the user's app-open rhythm (uniform if unknown).
    shares = np.stack([_feature(users, f"open_share_h{h:02d}", 1 / HOURS) for h in range(HOURS)], axis=1)
    rates = np.stack([_feature(users, f"open_rate_{c}", _BASE_OPEN) for c in channels], axis=1)
    return np.clip(rates[:, :, None] * shares[:, None, :] * HOURS, 0.0, 1.0)


def conversion_scores(models: ModelSet, users: Users | UserColumns, config: OperatorConfig,
                      hours: np.ndarray, candidates: np.ndarray | None = None,
                      p_open: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """P(convert) and uplift per (user, offer, channel), channel at its send hour `hours` (U, C).

    With `candidates` (bool (U, O, C)), the models score only those (the actions the contact rules allow) and the
    other entries are NaN: a row's score depends on that row alone, so the scored ones are the same numbers.
    `p_open`: the send-time scores (U, C, 24) the hours were chosen by; a funnel uplift's open factor then also
    reads them (`open_factor`).
    """
    n_u, n_o, n_c = n_users(users), len(config.offers), len(config.channels)
    offers, channels = config.offers, config.channel_names()
    uplift = np.full((n_u, n_o, n_c), np.nan)
    if "conversion" in models.models or "uplift" in models.models:
        if candidates is None:
            rows = np.repeat(np.arange(n_u), n_o * n_c)
            cells = np.tile(np.arange(n_o * n_c), n_u)
        else:
            rows, cells = np.nonzero(candidates.reshape(n_u, n_o * n_c))
        x = Rows(user_columns(users), rows, cells, hours[rows, cells % n_c].astype("float64"), request_grid(config))
        for kind in ("conversion", "uplift"):
            if kind == "uplift" and kind in models.models and hasattr(models.models[kind].model, "lift"):
                engage, lift = funnel_factors(models, x.users, config, hours, candidates)
                uplift = open_factor(models, engage, p_open, hours)[:, None, :] * lift[:, :, None]
                continue
            if kind in models.models:
                model, inputs = models.scorer(kind, x)
                out = np.full(n_u * n_o * n_c, np.nan)
                out[rows * (n_o * n_c) + cells] = np.asarray(model.predict(inputs), dtype=float) if len(rows) else 0.0
                out = out.reshape(n_u, n_o, n_c)
                if kind == "uplift":
                    uplift = out
                else:
                    p_convert = out
        if "conversion" not in models.models:
            p_convert = _rule_convert(users, offers, channels)
        return p_convert, shrunk_uplift(models, uplift, config)
    return _rule_convert(users, offers, channels), uplift


def open_factor(models: ModelSet, engage: np.ndarray, p_open: np.ndarray | None, hours: np.ndarray) -> np.ndarray:
    """P(open) per (user, channel) at `hours` (U, C) in a funnel uplift's EV: the geometric mean of the funnel's
    engage arm and the send-time champion's score at that hour, where there is a send-time champion.

    Both models answer P(open | user, channel, hour) from the same sends, by different inputs (the engage arm: the
    user's features with channel and hour; the send-time net: a user tower with the rhythm shrunk to the population),
    and their errors are partly independent (correlation 0.64-0.77 per channel on the demo world): the mean ranks a
    user's channels better than either alone (benchmarks/RESULTS.md, issue 16, seventh session). The geometric mean
    keeps a product of probabilities a probability and moves the EV's scale least."""
    if p_open is None or "send_time" not in models.models:
        return engage
    at_hour = np.take_along_axis(p_open, hours.astype(np.int64)[:, :, None], axis=2)[:, :, 0]
    return np.sqrt(engage * at_hour)


def shrunk_uplift(models: ModelSet, uplift: np.ndarray, config: OperatorConfig) -> np.ndarray:
    """The uplift champion's scores (U, O, C) moved toward each action's average effect by the strength chosen when
    it was trained (training/shrinkage.py): the champion leaves the best fixed action only where its estimate of the
    gain survived cross-fitting. A champion without a shrinkage (trained before it) scores as it is."""
    model = models.models.get("uplift")
    shrinkage = getattr(model.model, "shrinkage_", None) if model is not None else None
    if shrinkage is None:
        return uplift
    n_u, n_o, n_c = uplift.shape
    hit = _SHRINK.get((id(config), id(shrinkage)))
    if hit is None or hit[0] is not config or hit[1] is not shrinkage:
        _SHRINK.clear()  # one config and one champion in force at a time; the entry keeps both alive
        actions = [f"{o.offer_id} @ {c}" for o in config.offers for c in config.channel_names()]
        hit = _SHRINK[(id(config), id(shrinkage))] = (config, shrinkage, shrinkage.arrays(actions))
    return shrinkage.apply_arrays(uplift.reshape(n_u, n_o * n_c), hit[2]).reshape(n_u, n_o, n_c)


_SHRINK: dict[tuple[int, int], tuple[OperatorConfig, object, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}


def funnel_factors(models: ModelSet, users: Users | UserColumns, config: OperatorConfig,
                   hours: np.ndarray, candidates: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A funnel uplift champion's two factors: P(open) per (user, channel) at its hour `hours` (U, C), and the
    lift of an opened offer, P(convert | opened, offer) - P(convert | control), per (user, offer) (U, O).

    Their product is the model's `predict` over the full user x offer x channel rows, from a fraction of the
    rows: the open arm reads channel and hour, the offer arms the offer, the control arm the user only. With
    `candidates` (U, O, C), only the (user, channel) and (user, offer) pairs of some candidate are scored (NaN
    elsewhere).
    """
    users = user_columns(users)
    grid = request_grid(config)
    n_u, n_c = hours.shape
    n_o = len(config.offers)
    hours = hours.astype("float64")
    if candidates is None:
        candidates = np.ones((n_u, n_o, n_c), dtype=bool)
    open_u, open_c = np.nonzero(candidates.any(axis=1))  # (user, channel) pairs
    offer_u, offer_o = np.nonzero(candidates.any(axis=2))  # (user, offer) pairs
    someone = np.flatnonzero(candidates.any(axis=(1, 2)))
    p_open, lift = np.full((n_u, n_c), np.nan), np.full((n_u, n_o), np.nan)
    if not len(someone):
        return p_open, lift

    def arm_input(rows: np.ndarray, cells: np.ndarray, hour: np.ndarray) -> tuple[object, object]:
        return models.scorer("uplift", Rows(users, rows, cells, hour, grid))

    # Arm inputs: channel + hour for opening, offer for converting; the other request columns are not read.
    model, x_open = arm_input(open_u, open_c, hours[open_u, open_c])  # offer 0 x channel
    p_open[open_u, open_c] = model.arm("engage", x_open)
    _, x_ctrl = arm_input(someone, np.zeros(len(someone), dtype="int64"), hours[someone, 0])
    p_ctrl = np.full(n_u, np.nan)
    p_ctrl[someone] = model.arm("control", x_ctrl)
    _, x_offer = arm_input(offer_u, offer_o * n_c, hours[offer_u, 0])
    lift[offer_u, offer_o] = model.lift(x_offer, p_ctrl[offer_u])  # every offer x channel 0
    return p_open, lift


def _rule_convert(users: Users, offers, channels: list[str]) -> np.ndarray:
    """Rule-based P(convert): the channel's smoothed convert rate, raised by the user's affinity to the category."""
    rates = np.stack([_feature(users, f"convert_rate_{c}", _BASE_CONVERT) for c in channels], axis=1)  # (U, C)
    # Affinity shares sum to 1 over categories; 0.5 + 2 x share keeps a factor in [0.5, 2.5] ("any" = 1).
    factor = np.stack([np.ones(n_users(users)) if o.category == "any" else 0.5 + 2 * _feature(users, f"aff_{o.category}", 0.25)
                       for o in offers], axis=1)  # (U, O)
    return np.clip(factor[:, :, None] * rates[:, None, :], 0.0, 1.0)


def churn_scores(models: ModelSet, users: Users | UserColumns, config: OperatorConfig) -> np.ndarray:
    """P(churn) per user; zero (no retention boost) without a churn model."""
    n_u = n_users(users)
    if "churn" not in models.models:
        return np.zeros(n_u)
    model, inputs = models.scorer("churn", Rows(user_columns(users), np.arange(n_u), np.zeros(n_u, dtype="int64"), None,
                                                request_grid(config)))
    return np.asarray(model.predict(inputs), dtype=float)


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
    no_action: float | None = None  # P(the choice is "no action") under the same randomisation, when known


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
        propensity = epsilon_propensity(exploration.rate, k, pick == greedy)
        return Pick(arms[pick] if pick < len(arms) else None, float(propensity), explore and pick != greedy,
                    float(epsilon_propensity(exploration.rate, k, greedy == len(arms))))
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
        none = propensity if pick == len(arms) else float((winners[1:] == len(arms)).mean())
        return Pick(arms[pick] if pick < len(arms) else None, propensity, pick != greedy, none)
    return Pick(arms[greedy] if greedy < len(arms) else None, 1.0, False, float(greedy == len(arms)))


# --- the same over a batch of users ------------------------------------------------------------------


def best_slots_many(p_open: np.ndarray, local_hour: np.ndarray, slot_ok: np.ndarray) -> np.ndarray:
    """`best_slots` for every user: p_open (U, C, 24), local_hour (U, S), slot_ok (U, C, S) -> (U, C)."""
    hours = np.broadcast_to(local_hour[:, None, :], slot_ok.shape)
    scores = np.where(slot_ok, np.take_along_axis(p_open, hours, axis=2), -np.inf)
    return np.where(slot_ok.any(axis=2), scores.argmax(axis=2), -1)


def expected_values_many(p_convert: np.ndarray, uplift: np.ndarray, config: OperatorConfig,
                         p_churn: np.ndarray, opt_out: np.ndarray | None = None) -> np.ndarray:
    """`expected_values` for every user: (U, O, C) from (U, O, C) scores and P(churn) (U,); with `opt_out`, each
    user's P(unsubscribe or complaint) per channel (U, C), minus the expected long-term loss it carries."""
    value = np.array([o.value * o.lever for o in config.offers])
    retention = np.array([o.kind == "retention" for o in config.offers])
    boost = 1.0 + config.churn_boost * p_churn[:, None] * retention[None, :]
    cost = np.array([c.cost for c in config.channels])
    effect = np.where(np.isfinite(uplift), uplift, p_convert)
    ev = effect * (value[None, :] * boost)[:, :, None] - cost[None, None, :]
    if opt_out is not None:
        loss = np.array([c.opt_out_cost for c in config.channels])
        ev = ev - (opt_out * loss[None, :])[:, None, :]
    return ev


_OPT_OUT_STRENGTH = 20.0  # pseudo-contacts behind a channel's prior opt-out rate


def opt_out_risk(users: Users | UserColumns, config: OperatorConfig) -> np.ndarray:
    """P(unsubscribe or complaint | one more contact) per (user, channel): the channel's prior rate, scaled by the
    user's own record (opt-outs and complaints over contacts in 90 days, smoothed towards the prior) and by the
    pressure of the last week (risk grows with each recent contact, as fatigue does)."""
    opt_outs = _feature(users, "unsubscribes_90d", 0.0) + _feature(users, "complaints_90d", 0.0)
    contacts = _feature(users, "contacts_90d", 0.0)
    recent = _feature(users, "contacts_7d", 0.0)
    prior = np.array([c.opt_out_rate for c in config.channels])
    # The user's own rate relative to the population's: 1 for a user without a record.
    mean_prior = max(float(prior.mean()), 1e-6)
    own = (opt_outs + _OPT_OUT_STRENGTH * mean_prior) / (contacts + _OPT_OUT_STRENGTH) / mean_prior
    return np.clip(prior[None, :] * (own * (1.0 + recent))[:, None], 0.0, 1.0)


@dataclass(frozen=True)
class Greedy:
    """`choose`'s deterministic part for many users: feasible arms and the best one, per user."""

    feasible: np.ndarray  # bool (U, O * C), arms in `choose`'s order (row-major offer x channel)
    n_arms: np.ndarray  # (U,)
    best: np.ndarray  # (U,) flat index of the greedy arm, -1 for "no action"
    shape: tuple[int, int]
    rank: np.ndarray | None = None  # (U,) the greedy arm's position among the user's feasible arms (-1: no action)


def greedy_many(ev: np.ndarray, feasible: np.ndarray, priority: np.ndarray, min_ev: float = 0.0) -> Greedy:
    """Per user, the feasible (offer, channel) with the best EV (priority breaks ties), as `choose` finds it."""
    n_u, n_o, n_c = ev.shape
    score = np.where(feasible, ev + 1e-9 * priority[None, :, None], -np.inf).reshape(n_u, n_o * n_c)
    flat = feasible.reshape(n_u, n_o * n_c)
    n_arms = flat.sum(axis=1)
    arg = score.argmax(axis=1)
    has = (n_arms > 0) & (score[np.arange(n_u), arg] > min_ev)
    rank = np.where(has, flat.cumsum(axis=1)[np.arange(n_u), arg] - 1, -1) if n_o * n_c else np.full(n_u, -1)
    return Greedy(flat, n_arms, np.where(has, arg, -1), (n_o, n_c), rank)


def epsilon_propensity(rate: float, k: np.ndarray | int, greedy: np.ndarray | bool) -> np.ndarray | float:
    """P(the picked arm) under epsilon exploration over k choices (the feasible arms and "no action"): the greedy
    arm keeps 1 - rate and every choice gets rate / k."""
    return (1 - rate) * greedy + rate / k


def explore_many(g: Greedy, rate: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`choose_one`'s epsilon rule for every user at once (the replay's policies): per user the flat arm index
    (-1 = no action), its propensity, and whether exploration picked it; draws from `rng` in bulk."""
    n = len(g.best)
    if rate <= 0:
        return g.best.copy(), np.ones(n), np.zeros(n, dtype=bool)
    k = g.n_arms + 1  # the arms and "no action"
    explore = (rng.random(n) < rate) & (g.n_arms > 0)
    r = np.floor(rng.random(n) * k).astype(np.int64)  # uniform over the k choices, k - 1 = "no action"
    arm = np.argmax(np.cumsum(g.feasible, axis=1) > r[:, None], axis=1)
    drawn = np.where(r < k - 1, arm, -1)
    pick = np.where(explore, drawn, g.best)
    propensity = np.where(g.n_arms > 0, epsilon_propensity(rate, k, pick == g.best), 1.0)
    return pick, propensity, explore & (pick != g.best)


def no_action_probability(g: Greedy, u: int, exploration: Exploration) -> float:
    """P(`choose_one` answers "no action" for user u), drawing nothing: with epsilon exploration over the k feasible
    arms and "no action", rate / (k + 1), plus 1 - rate when "no action" is the greedy choice; without exploration
    (or with no feasible arm), 1 or 0. The service logs it for a decision it did not let the policy make (a hold-out)."""
    k_arms, none = int(g.n_arms[u]), bool(g.best[u] < 0)
    if exploration.method == "epsilon" and exploration.rate > 0 and k_arms:
        return float(epsilon_propensity(exploration.rate, k_arms + 1, none))
    return float(none)


def choose_one(g: Greedy, u: int, exploration: Exploration, rng: np.random.Generator) -> Pick:
    """`choose` for user u from its precomputed greedy arm; draws from `rng` exactly as `choose` does.

    Thompson sampling needs the per-arm samples: the caller uses `choose` for it.
    """
    k_arms = int(g.n_arms[u])
    best = int(g.best[u])
    n_c = g.shape[1]
    if exploration.method == "epsilon" and exploration.rate > 0 and k_arms:
        if best < 0:
            greedy = k_arms
        elif g.rank is not None:
            greedy = int(g.rank[u])
        else:
            greedy = int(g.feasible[u, :best].sum())  # the feasible arms before the greedy one
        k = k_arms + 1
        explore = rng.random() < exploration.rate
        pick = int(rng.integers(k)) if explore else greedy
        propensity = epsilon_propensity(exploration.rate, k, pick == greedy)
        if pick == greedy:  # the arms are listed only when exploration picked another one (rare)
            arm = best
        else:
            arm = int(np.flatnonzero(g.feasible[u])[pick]) if pick < k_arms else -1
        action = divmod(arm, n_c) if arm >= 0 else None
        return Pick(action, float(propensity), explore and pick != greedy, float(epsilon_propensity(exploration.rate, k, best < 0)))
    if best < 0:
        return Pick(None, 1.0, False, 1.0)
    return Pick(divmod(best, n_c), 1.0, False, 0.0)
