"""Baseline policies for replays: no contact, random, blast, and an oracle that knows the truth."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from nextbest.simulation import response
from nextbest.simulation.catalog import CHANNELS
from nextbest.simulation.clock import HOUR_NS, utc_offset_ns
from nextbest.simulation.replay import Choice, Period, Situation, keep_capacity
from nextbest.simulation.truth import Truth

__all__ = ["NoContact", "RandomPolicy", "Blast", "OraclePolicy", "best_selling_order"]


def _none(n: int) -> Choice:
    z = np.zeros(n, dtype=np.int64)
    return Choice(np.full(n, -1), z, z, np.zeros(n), np.ones(n))


def _first_true(mask: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Per row, the first column in `order` where mask is True (-1 if none)."""
    ranked = mask[:, order]
    hit = ranked.any(axis=1)
    return np.where(hit, order[np.argmax(ranked, axis=1)], -1)


@dataclass(frozen=True)
class NoContact:
    name: str = "no contact"

    def choose(self, s: Situation, rng: np.random.Generator) -> Choice:
        return _none(len(s.recent))


@dataclass(frozen=True)
class RandomPolicy:
    """Contacts a share of reachable users with a uniformly random eligible offer, channel and allowed hour."""

    share: float = 0.3
    name: str = "random"

    def choose(self, s: Situation, rng: np.random.Generator) -> Choice:
        n = len(s.recent)
        ok = s.allowed.any(axis=1) & s.eligible.any(axis=1) & (rng.random(n) < self.share)
        offer = _uniform(s.eligible, rng)
        channel = _uniform(s.allowed, rng)
        hour = _uniform(s.hour_ok[channel], rng)
        prob = self.share / (s.eligible.sum(1).clip(1) * s.allowed.sum(1).clip(1) * s.hour_ok[channel].sum(1))
        choice = Choice(np.where(ok, offer, -1), channel, hour, rng.random(n), prob)
        return keep_capacity(choice, s.capacity_left)


def _uniform(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    r = np.floor(rng.random(len(mask)) * mask.sum(axis=1).clip(1))
    return np.argmax(np.cumsum(mask, axis=1) > r[:, None], axis=1)


def best_selling_order(tables: dict[str, pd.DataFrame], offers: pd.DataFrame) -> np.ndarray:
    """Offer indices by conversions in the campaign log, best first."""
    contacts = tables["contacts"]
    conv = contacts[contacts["converted_at"].notna() & contacts["offer_id"].notna()]["offer_id"].astype(str).value_counts()
    counts = offers["offer_id"].map(conv).fillna(0).to_numpy()
    return np.argsort(-counts, kind="stable")


@dataclass(frozen=True)
class Blast:
    """Everyone reachable, every day: the best-selling eligible offer, the cheapest channel, 10:00 local."""

    offer_order: tuple[int, ...]
    channel_cost: tuple[float, ...]
    hour: int = 10
    name: str = "blast"

    def choose(self, s: Situation, rng: np.random.Generator) -> Choice:
        n = len(s.recent)
        offer = _first_true(s.eligible, np.asarray(self.offer_order))
        usable = s.allowed & s.hour_ok[:, self.hour][None, :]
        channel = _first_true(usable, np.argsort(np.asarray(self.channel_cost), kind="stable"))
        ok = (offer >= 0) & (channel >= 0)
        choice = Choice(np.where(ok, offer, -1), channel.clip(0), np.full(n, self.hour), rng.random(n), np.ones(n))
        return keep_capacity(choice, s.capacity_left)


@dataclass(frozen=True)
class OraclePolicy:
    """Knows each user's true response; per user the action of highest expected net value, if positive.

    `beliefs`: decide on these traits instead of the period's truth (the outcomes still follow the truth), e.g.
    simulation.beliefs.history_beliefs: the history oracle.
    """

    period: Period
    name: str = "oracle"
    beliefs: Truth | None = None

    def choose(self, s: Situation, rng: np.random.Generator) -> Choice:
        truth = self.beliefs if self.beliefs is not None else self.period.truth
        offers = self.period.offers
        n = len(s.recent)
        u = np.arange(n)
        value = offers["value"].to_numpy(dtype=float)
        cost = self.period.channels["cost"].to_numpy(dtype=float)
        offset = utc_offset_ns(truth.tz, np.full(n, s.at.value))
        # Factorised: the best allowed hour per channel (p_open depends on the hour, the offer does not) ...
        best_hour = np.zeros((n, len(CHANNELS)), dtype=np.int64)
        for c in range(len(CHANNELS)):
            hours = np.flatnonzero(s.hour_ok[c])
            p = np.stack([response.p_open(truth, u, np.full(n, c), np.full(n, float(h)), s.recent,
                                          np.full(n, s.at.value + h * HOUR_NS - offset)) for h in hours], axis=1)
            best_hour[:, c] = hours[p.argmax(axis=1)]
        # ... then the value of each offer x channel at that hour.
        ev = np.full((n, len(offers), len(CHANNELS)), -np.inf)
        for c in range(len(CHANNELS)):
            send = s.at.value + best_hour[:, c] * HOUR_NS - offset
            send = np.where(send < s.at.value, send + 24 * HOUR_NS, send)
            for o in range(len(offers)):
                p = response.p_caused(truth, offers, u, np.full(n, o), np.full(n, c), send, s.recent)
                ev[:, o, c] = p * value[o] - cost[c]
        ev[~s.eligible[:, :, None].repeat(len(CHANNELS), 2)] = -np.inf
        ev[~s.allowed[:, None, :].repeat(len(offers), 1)] = -np.inf
        flat = ev.reshape(n, -1).argmax(axis=1)
        o, c = np.divmod(flat, len(CHANNELS))
        best = ev[u, o, c]
        choice = Choice(np.where(best > 0, o, -1), c, best_hour[u, c], best, np.ones(n))
        return keep_capacity(choice, s.capacity_left)
