"""The hidden truth of the simulated world (per-user traits) and the Oracle that reads it, for evaluation only."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nextbest.simulation import response
from nextbest.simulation.catalog import CATEGORIES, CHANNELS
from nextbest.simulation.clock import DAY_NS, TIMEZONES, local_hour

__all__ = ["Truth", "Oracle", "draw_truth", "concat_truths", "INTEREST_CONCENTRATION", "CHANNEL_RESPONSE_SD"]

NEVER = np.iinfo(np.int64).max  # a churn / upgrade time that never comes
INTEREST_CONCENTRATION = 0.35  # Dirichlet prior of the category interests: most users care about two or three
CHANNEL_RESPONSE_SD = 0.9  # spread of each user's open-logit shift per channel


@dataclass(frozen=True, eq=False)
class Truth:
    """Hidden per-user traits that drive behaviour and responses; never a feature."""

    start_ns: int  # first instant of the history (UTC, ns since epoch)
    end_ns: int  # first instant after the history
    tz: np.ndarray  # int8 index into TIMEZONES
    signup_ns: np.ndarray  # int64 ns
    interest: np.ndarray  # float32 (n, 8): share of attention per category, rows sum to 1
    price_sensitivity: np.ndarray  # float32 0..1: how much coupons move the user
    channel_response: np.ndarray  # float32 (n, 5): logit shift of opening, per channel
    preferred_hour: np.ndarray  # float32 local hour 0..24 of peak activity
    hour_width: np.ndarray  # float32 hours: spread of activity around the preferred hour
    activity: np.ndarray  # float32 browsing events per active day
    churn_ns: np.ndarray  # int64 ns when the user goes dormant (NEVER if not)
    fatigue: np.ndarray  # float32 >= 0: how much each recent contact hurts (per contact in 7 d)
    complaint: np.ndarray  # float32 z-score: tendency to complain
    organic_rate: np.ndarray  # float32 organic purchases per day once a customer
    persuadability: np.ndarray  # float32 logit shift of converting after a click
    depth0: np.ndarray  # int8 funnel depth (0 first contact .. 4 customer) reachable at first
    depth1: np.ndarray  # int8 funnel depth after the upgrade
    upgrade_ns: np.ndarray  # int64 ns of the upgrade (NEVER if none)

    @property
    def n_users(self) -> int:
        return len(self.tz)

    def depth_at(self, user_idx: np.ndarray, at_ns: np.ndarray) -> np.ndarray:
        """Funnel depth each user can reach at each instant."""
        return np.where(at_ns < self.upgrade_ns[user_idx], self.depth0[user_idx], self.depth1[user_idx])

    def customer_from_ns(self, user_idx: np.ndarray) -> np.ndarray:
        """When each user may start buying organically (NEVER if never)."""
        d0, d1, up = self.depth0[user_idx], self.depth1[user_idx], self.upgrade_ns[user_idx]
        start = np.maximum(self.signup_ns[user_idx], self.start_ns)
        return np.where(d0 >= 4, start, np.where(d1 >= 4, np.maximum(up, start), NEVER))

    def save(self, truth_dir: Path | str) -> None:
        """Write the arrays as truth.npz and the scalars as truth.json (no pickle)."""
        truth_dir = Path(truth_dir)
        truth_dir.mkdir(parents=True, exist_ok=True)
        arrays = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("start_ns", "end_ns")}
        np.savez_compressed(truth_dir / "truth.npz", **arrays)
        meta = {"start_ns": self.start_ns, "end_ns": self.end_ns, "timezones": list(TIMEZONES),
                "categories": list(CATEGORIES), "channels": list(CHANNELS)}
        (truth_dir / "truth.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, truth_dir: Path | str) -> Truth:
        """Read a truth written by `save`."""
        truth_dir = Path(truth_dir)
        meta = json.loads((truth_dir / "truth.json").read_text())
        with np.load(truth_dir / "truth.npz", allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        return cls(start_ns=int(meta["start_ns"]), end_ns=int(meta["end_ns"]), **arrays)


def concat_truths(parts: list[Truth]) -> Truth:
    """The truth of a world simulated in chunks of users: every per-user array, the chunks' users in order."""
    per_user = [f.name for f in dataclasses.fields(Truth) if f.name not in ("start_ns", "end_ns")]
    return Truth(start_ns=parts[0].start_ns, end_ns=parts[0].end_ns,
                 **{name: np.concatenate([getattr(p, name) for p in parts]) for name in per_user})


def draw_truth(n_users: int, start: pd.Timestamp, days: int, rng: np.random.Generator) -> Truth:
    """Draw every user's hidden traits."""
    n = n_users
    start_ns, end_ns = start.value, start.value + days * DAY_NS
    tz = rng.choice(len(TIMEZONES), size=n, p=[0.3, 0.1, 0.15, 0.15, 0.15, 0.15]).astype(np.int8)
    # 75 % signed up during the two years before the history, the rest during it.
    before = rng.random(n) < 0.75
    signup = np.where(before, start_ns - (rng.random(n) * 730 * DAY_NS).astype(np.int64),
                      start_ns + (rng.random(n) * (days - 1) * DAY_NS).astype(np.int64))
    # Peaked interests: most users care about two or three categories.
    interest = rng.dirichlet(np.full(len(CATEGORIES), INTEREST_CONCENTRATION), size=n).astype(np.float32)
    # Three daily rhythms: morning commuters, lunch-break and evening browsers.
    peak = rng.choice(np.array([8.0, 12.5, 20.5]), size=n, p=[0.25, 0.25, 0.5])
    preferred_hour = ((peak + rng.normal(0, 1.0, n)) % 24).astype(np.float32)
    hour_width = rng.uniform(1.0, 2.5, n).astype(np.float32)
    activity = rng.lognormal(np.log(0.28), 0.7, n).astype(np.float32)
    # ~30 % go dormant within 120 days of becoming active.
    hazard = rng.lognormal(np.log(1 / 330), 0.5, n)
    active_from = np.maximum(signup, start_ns)
    churn = active_from + (rng.exponential(1.0, n) / hazard * DAY_NS).astype(np.int64)
    # Funnel depth: where each user is at the start, and a later step up for about half of them.
    depth0 = np.where(before, rng.choice(5, size=n, p=[0.08, 0.2, 0.22, 0.15, 0.35]),
                      rng.choice(2, size=n, p=[0.3, 0.7])).astype(np.int8)
    upgrades = rng.random(n) < np.where(before, 0.45, 0.7)
    depth1 = np.where(upgrades, np.minimum(4, depth0 + 1 + rng.binomial(2, 0.35, n)), depth0).astype(np.int8)
    upgrade = np.where(upgrades & (depth1 > depth0),
                       active_from + (rng.random(n) * (end_ns + 60 * DAY_NS - active_from)).astype(np.int64), NEVER)
    # Organic buying and persuadability are anti-correlated: sure things vs persuadables vs lost causes.
    latent = rng.normal(0, 1, n)
    organic_rate = (0.009 * np.exp(0.8 * latent + rng.normal(0, 0.5, n))).astype(np.float32)
    persuadability = (-0.6 * latent + rng.normal(0, 0.7, n)).astype(np.float32)
    return Truth(
        start_ns=int(start_ns), end_ns=int(end_ns), tz=tz, signup_ns=signup.astype(np.int64), interest=interest,
        price_sensitivity=rng.beta(2, 3, n).astype(np.float32),
        channel_response=rng.normal(0, CHANNEL_RESPONSE_SD, size=(n, len(CHANNELS))).astype(np.float32),
        preferred_hour=preferred_hour, hour_width=hour_width, activity=activity, churn_ns=churn.astype(np.int64),
        fatigue=rng.gamma(2.0, 0.15, n).astype(np.float32), complaint=rng.normal(0, 1, n).astype(np.float32),
        organic_rate=organic_rate, persuadability=persuadability, depth0=depth0, depth1=depth1,
        upgrade_ns=upgrade.astype(np.int64),
    )


class Oracle:
    """True response probabilities, vectorised over arrays; for evaluating policies, never as a feature."""

    def __init__(self, truth: Truth, offers: pd.DataFrame):
        self.truth = truth
        self.offers = offers.reset_index(drop=True)
        self._offer_index = {o: i for i, o in enumerate(self.offers["offer_id"])}
        self._channel_index = {c: i for i, c in enumerate(CHANNELS)}

    def _offer_idx(self, offer_id) -> np.ndarray:
        return np.vectorize(self._offer_index.__getitem__, otypes=[np.intp])(np.asarray(offer_id, dtype=object))

    def _channel_idx(self, channel) -> np.ndarray:
        return np.vectorize(self._channel_index.__getitem__, otypes=[np.intp])(np.asarray(channel, dtype=object))

    def local_hour(self, user_idx, at) -> np.ndarray:
        """Local clock hour of each user at each UTC instant."""
        return local_hour(self.truth.tz[np.asarray(user_idx)], _ns(at))

    def p_open(self, user_idx, channel, local_hour, recent_contacts=0, at=None) -> np.ndarray:
        """P(open | delivered) for a send at `local_hour` with `recent_contacts` in the previous 7 days."""
        u = np.asarray(user_idx)
        at_ns = _ns(at) if at is not None else np.full(len(u), self.truth.start_ns)
        return response.p_open(self.truth, u, self._channel_idx(channel), np.asarray(local_hour, dtype=float),
                               np.broadcast_to(recent_contacts, u.shape), at_ns)

    def p_organic(self, user_idx, at, horizon_days: float = 7.0) -> np.ndarray:
        """P(at least one organic purchase within `horizon_days` after `at`)."""
        u = np.asarray(user_idx)
        return response.p_organic(self.truth, u, np.broadcast_to(_ns(at), u.shape), horizon_days)

    def p_convert(self, user_idx, offer_id, channel, at, recent_contacts=0, horizon_days: float = 7.0) -> np.ndarray:
        """P(a purchase within `horizon_days`) if the offer is sent on the channel at UTC `at`."""
        u = np.asarray(user_idx)
        at_ns = np.broadcast_to(_ns(at), u.shape)
        caused = response.p_caused(self.truth, self.offers, u, self._offer_idx(offer_id), self._channel_idx(channel),
                                   at_ns, np.broadcast_to(recent_contacts, u.shape))
        organic = response.p_organic(self.truth, u, at_ns, horizon_days)
        return 1.0 - (1.0 - organic) * (1.0 - caused)

    def uplift(self, user_idx, offer_id, channel, at, recent_contacts=0, horizon_days: float = 7.0) -> np.ndarray:
        """P(convert | contacted) - P(convert | not contacted): the incremental effect of the contact."""
        return (self.p_convert(user_idx, offer_id, channel, at, recent_contacts, horizon_days)
                - self.p_organic(user_idx, at, horizon_days))


def _ns(at) -> np.ndarray:
    """UTC instants (Timestamp, Series, DatetimeIndex, datetime64 or int ns) as int64 ns."""
    if isinstance(at, (int, np.integer)):
        return np.asarray(at, dtype=np.int64)
    if isinstance(at, np.ndarray) and at.dtype == np.int64:
        return at
    if isinstance(at, pd.Timestamp):
        return np.asarray((at if at.tzinfo else at.tz_localize("UTC")).value, dtype=np.int64)
    idx = pd.DatetimeIndex(pd.Series(at) if not isinstance(at, pd.DatetimeIndex) else at)
    if idx.tz is None:
        idx = idx.tz_localize("UTC")
    return idx.tz_convert("UTC").as_unit("ns").asi8  # a column stored in seconds would otherwise come back in seconds
