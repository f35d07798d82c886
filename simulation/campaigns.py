"""The randomised logging policy and the campaign log it produces (contacts, caused events, suppressions)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from nextbest.features.contract import STAGES, offer_valid, parse_eligibility
from nextbest.simulation.catalog import CHANNELS, EVENT_TYPES
from nextbest.simulation.clock import DAY_NS, HOUR_NS, MINUTE_NS, NAT, utc_offset_ns
from nextbest.simulation.response import HORIZON_DAYS, draw_outcomes_ns
from nextbest.simulation.truth import Truth

__all__ = ["CampaignPlan", "STAGES", "SEND_HOURS", "Purchases", "run_campaigns", "eligible"]

SEND_HOURS = (8, 22)  # local send hours drawn uniformly from [8, 22): 8:00 .. 21:59
_RING = 8  # last sends remembered per user: enough for every contact within 7 days at one campaign a day


@dataclass(frozen=True)
class CampaignPlan:
    """How often the logging policy runs and how many users it targets."""

    every_days: int = 2  # days between campaigns
    contacts_per_week: float = 1.0  # treated contacts per user per week (among reachable users)
    control_share: float = 0.1  # probability a targeted user is held out (no contact)


def eligible(offers: pd.DataFrame, state: dict[str, np.ndarray], at: pd.Timestamp) -> np.ndarray:
    """(users x offers) mask: eligibility clauses over the user state, and validity at `at`."""
    n = len(next(iter(state.values())))
    out = np.ones((n, len(offers)), dtype=bool)
    ops = {"==": np.equal, "!=": np.not_equal, ">=": np.greater_equal, "<=": np.less_equal, ">": np.greater,
           "<": np.less}
    for j, row in enumerate(offers.itertuples(index=False)):
        if not offer_valid(at, row.valid_from, row.valid_to):
            out[:, j] = False
            continue
        for clause in parse_eligibility(row.eligibility):
            x = state.get(clause.feature)
            if x is None:  # a feature nobody has never qualifies (serving's rule: fail closed)
                out[:, j] = False
                break
            out[:, j] &= pd.notna(x)  # nor does an unknown value
            if clause.op in ("in", "not in"):
                hit = np.isin(x, np.asarray(clause.value, dtype=x.dtype))
                out[:, j] &= hit if clause.op == "in" else ~hit
            else:
                out[:, j] &= ops[clause.op](x, clause.value)
    return out


def _uniform_pick(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Column index of a uniformly drawn True in each row (rows have at least one)."""
    r = np.floor(rng.random(len(mask)) * mask.sum(axis=1))
    return np.argmax(np.cumsum(mask, axis=1) > r[:, None], axis=1)


class _Log:
    """Growable columns for the campaign log: few large arrays instead of many pieces that fragment the heap."""

    def __init__(self, capacity: int):
        self.capacity, self.size, self.columns = max(capacity, 1024), 0, {}

    def append(self, rows: dict[str, np.ndarray]) -> None:
        m = len(next(iter(rows.values())))
        if self.size + m > self.capacity:
            self.capacity = int((self.size + m) * 1.25)
            self.columns = {k: np.resize(v, self.capacity) for k, v in self.columns.items()}
        for k, v in rows.items():
            if k not in self.columns:
                self.columns[k] = np.empty(self.capacity, dtype=v.dtype)
            self.columns[k][self.size:self.size + m] = v
        self.size += m

    def finish(self) -> dict[str, np.ndarray]:
        """The filled part of every column (never-touched spare capacity costs no resident memory)."""
        return {k: v[:self.size] for k, v in self.columns.items()}


class Purchases:
    """Organic purchases sorted by (user, time) for 'first purchase after t' / 'last before t' look-ups."""

    @classmethod
    def of_events(cls, events: dict[str, np.ndarray]) -> Purchases:
        """The purchases among simulated event arrays (user, ts, type, amount)."""
        buy = events["type"] == EVENT_TYPES.index("purchase")
        return cls(events["user"][buy], events["ts"][buy], events["amount"][buy])

    def __init__(self, user: np.ndarray, ts: np.ndarray, amount: np.ndarray):
        order = np.lexsort((ts, user))
        self.user, self.ts, self.amount = user[order].astype(np.int64), ts[order], amount[order]
        self.key = self.user * (1 << 40) + (self.ts - _EPOCH) // 10**6  # ms since 2000: 2^40 ms ~ 35 years

    def _key(self, u: np.ndarray, at_ns: np.ndarray) -> np.ndarray:
        return u.astype(np.int64) * (1 << 40) + (at_ns - _EPOCH) // 10**6

    def first_after(self, u: np.ndarray, at_ns: np.ndarray, days: float) -> tuple[np.ndarray, np.ndarray]:
        """Time and amount of each user's first purchase in (at, at + days] (NAT / 0 if none)."""
        if len(self.key) == 0:  # a tiny world where nobody bought yet
            return np.full(len(u), NAT), np.zeros(len(u))
        i = np.searchsorted(self.key, self._key(u, at_ns), side="right")
        j = np.minimum(i, len(self.key) - 1)
        ok = (i < len(self.key)) & (self.user[j] == u) & (self.ts[j] <= at_ns + int(days * DAY_NS))
        return np.where(ok, self.ts[j], NAT), np.where(ok, self.amount[j], 0.0)

    def last_before(self, u: np.ndarray, at_ns: int) -> np.ndarray:
        """Time of each user's last purchase before `at` (NAT if none)."""
        if len(self.key) == 0:
            return np.full(len(u), NAT)
        i = np.searchsorted(self.key, self._key(u, np.full(len(u), at_ns)), side="left") - 1
        j = np.maximum(i, 0)
        return np.where((i >= 0) & (self.user[j] == u), self.ts[j], NAT)


_EPOCH = pd.Timestamp("2000-01-01", tz="UTC").value


def _random_suppressions(truth: Truth, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Do-not-contact rows that come from outside the log: regulator and VIP lists on every channel, a few manual."""
    n = truth.n_users
    reason = rng.choice(4, size=n, p=[0.994, 0.003, 0.002, 0.001])
    u = np.flatnonzero(reason > 0)
    since = truth.start_ns - 60 * DAY_NS + (rng.random(len(u)) * (truth.end_ns - truth.start_ns + 60 * DAY_NS)).astype(np.int64)
    channel = np.where(reason[u] == 3, rng.integers(0, len(CHANNELS), len(u)), -1)
    names = np.array(["", "regulator", "vip", "manual"], dtype=object)
    return {"user": u, "channel": channel, "reason": names[reason[u]], "since": since}


def run_campaigns(truth: Truth, offers: pd.DataFrame, consent: np.ndarray, organic: dict[str, np.ndarray],
                  plan: CampaignPlan, rng: np.random.Generator) -> tuple[dict, dict, dict]:
    """Run every campaign of the history: contact arrays, the events contacts caused, and suppression rows."""
    n, start_ns, end_ns = truth.n_users, truth.start_ns, truth.end_ns
    days = (end_ns - start_ns) // DAY_NS
    purchases = Purchases.of_events(organic)
    outside = _random_suppressions(truth, rng)
    blocked_all = np.full(n, np.iinfo(np.int64).max)  # when a '*' suppression starts, per user
    star = outside["channel"] < 0
    blocked_all[outside["user"][star]] = outside["since"][star]
    blocked = ~consent.copy()  # (n, channels): no consent, or suppressed by an earlier outcome
    manual = ~star
    ring = np.full((n, _RING), NAT, dtype=np.int64)  # recent send times per user
    ring_pos = np.zeros(n, dtype=np.int64)
    last_caused = np.full(n, NAT, dtype=np.int64)
    # Treated contacts per campaign so that each reachable user gets `contacts_per_week` in expectation.
    share = min(1.0, plan.contacts_per_week * plan.every_days / 7 / (1 - plan.control_share))
    n_campaigns = len(range(0, days, plan.every_days))
    log = _Log(int(n * share * n_campaigns * 1.05))  # expected rows, a little headroom
    caused_events, log_supp = [], []

    for campaign, day in enumerate(range(0, days, plan.every_days)):
        at_ns = start_ns + day * DAY_NS
        at = pd.Timestamp(at_ns, tz="UTC")
        blocked[outside["user"][manual & (outside["since"] <= at_ns)], outside["channel"][manual & (outside["since"] <= at_ns)]] = True
        reachable = (truth.signup_ns <= at_ns) & (blocked_all > at_ns) & ~blocked.all(axis=1)
        idx = np.flatnonzero(reachable & (rng.random(n) < share))
        last_buy = np.maximum(purchases.last_before(idx, at_ns), last_caused[idx])
        depth = truth.depth_at(idx, np.full(len(idx), at_ns))
        stage = np.where(last_buy != NAT, 4, np.minimum(depth, 3))
        state = {
            "lifecycle_stage": np.asarray(STAGES, dtype=object)[stage],
            "recency_days": np.where(last_buy != NAT, (at_ns - last_buy) // DAY_NS, 9999),
            "tenure_days": (at_ns - truth.signup_ns[idx]) // DAY_NS,
        }
        offer_ok = eligible(offers, state, at)
        keep = offer_ok.any(axis=1)
        idx, offer_ok = idx[keep], offer_ok[keep]
        channel_ok = ~blocked[idx]
        m = len(idx)
        control = rng.random(m) < plan.control_share
        offer = _uniform_pick(offer_ok, rng)
        channel = _uniform_pick(channel_ok, rng)
        propensity = np.where(control, plan.control_share,
                              (1 - plan.control_share) / (offer_ok.sum(axis=1) * channel_ok.sum(axis=1)))
        hour = rng.integers(*SEND_HOURS, m)
        minute = rng.integers(0, 60, m)
        send = at_ns + hour * HOUR_NS + minute * MINUTE_NS - utc_offset_ns(truth.tz[idx], np.full(m, at_ns))
        send = np.where(control, at_ns, send)  # a hold-out is logged at the decision time

        recent = ((ring[idx] > send[:, None] - 7 * DAY_NS) & (ring[idx] < send[:, None])).sum(axis=1)
        org_ns, org_rev = purchases.first_after(idx, send, HORIZON_DAYS)
        out, events = draw_outcomes_ns(truth, offers, idx, offer, channel, send, recent, rng, end_ns=end_ns,
                                       organic_ns=org_ns, organic_revenue=org_rev)
        # Hold-outs get nothing: only their organic conversion is kept.
        for col in ("delivered_at", "opened_at", "clicked_at", "unsubscribed_at", "complained_at"):
            out[col] = np.where(control, NAT, out[col])
        out.pop("caused")
        out["converted_at"] = np.where(control, np.where(org_ns < end_ns, org_ns, NAT), out["converted_at"])
        out["revenue"] = np.where(control, np.where(out["converted_at"] != NAT, org_rev, 0.0), out["revenue"])
        set_rows = idx[~control]
        ring[set_rows, ring_pos[set_rows] % _RING] = send[~control]
        ring_pos[set_rows] += 1
        keep_ev = np.isin(events["user"], set_rows)  # a hold-out received nothing, so caused nothing
        events = {k: v[keep_ev] for k, v in events.items()}
        bought = events["type"] == EVENT_TYPES.index("purchase")
        last_caused[events["user"][bought]] = np.maximum(last_caused[events["user"][bought]], events["ts"][bought])
        caused_events.append(events)
        for col, reason in (("unsubscribed_at", "opt_out"), ("complained_at", "complaint")):
            hit = out[col] != NAT
            blocked[idx[hit], channel[hit]] = True
            log_supp.append({"user": idx[hit], "channel": channel[hit], "reason": np.full(hit.sum(), reason, object),
                             "since": out[col][hit]})
        log.append({"user": idx.astype(np.int32), "campaign": np.full(m, campaign, np.int16), "sent": send,
                         "offer": np.where(control, -1, offer).astype(np.int8),
                         "channel": np.where(control, -1, channel).astype(np.int8),
                         "control": control, "propensity": propensity, **out})

    cat = log.finish()
    supp = {k: np.concatenate([outside[k]] + [s[k] for s in log_supp]) for k in ("user", "channel", "reason", "since")}
    return cat, caused_events, supp
