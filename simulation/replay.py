"""Replay a policy over a fresh period of a simulated world: same users and truth, outcomes from the response model.

Every policy faces the same hard contact rules (consent, suppressions, caps, contact spacing, quiet hours, capacity);
the replay does not repair a policy's choices, it counts any send that breaks a rule as a violation.
Incremental conversions and revenue, unsubscribes and complaints are the expected values under the truth (the sum
of each send's true probability: P(the contact caused a purchase), and that times the offer's value; P(unsubscribe),
P(complaint)), so two policies compare without sampling noise; opens, unsubscribes and complaints are also drawn
(`*_drawn` in the metrics), and the suppressions the drawn opt-outs create bind later days.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd

from nextbest.features.contract import NO_SEND, STAGE_OF_TYPE, STAGES, parse_quiet_hours, spacing_ok
from nextbest.simulation import response
from nextbest.simulation.campaigns import Purchases, eligible
from nextbest.simulation.catalog import CHANNELS
from nextbest.simulation.clock import DAY_NS, HOUR_NS, MINUTE_NS, NAT, to_utc_series, utc_offset_ns
from nextbest.simulation.truth import Truth

__all__ = ["Rules", "ReplayConfig", "Period", "Situation", "Choice", "Policy", "ReplayResult", "replay", "keep_capacity",
           "hour_ok_matrix", "OUTCOMES"]



@dataclass(frozen=True)
class Rules:
    """Frequency caps every replayed policy must obey (quiet hours and capacity come from the channels table).

    The defaults are the service's default caps (serving/config.py `Caps`; `Rules.of(Caps()) == Rules()` is tested),
    so a replay without an operator config judges a policy under the rules the service would enforce."""

    per_user_per_day: int = 1  # enforced by construction: a policy makes one decision per user per day
    per_user_per_week: int = 3  # over 7 local calendar days, the day of the send included
    per_user_channel_per_week: int = 3
    per_offer: int | None = 1  # sends of one offer to one user within `offer_window_days` (None: no such cap)
    offer_window_days: int = 7  # local calendar days, the day of the send included (the history holds 7 days)
    spacing_contacts: int = 2  # no contact when the user already has this many contacts in the last
    spacing_hours: int = 168  # hours (whole UTC hours; features/contract.py spacing_ok); 0 contacts = off

    @classmethod
    def of(cls, caps) -> Rules:
        """The operator config's caps (serving/config.py `Caps`) as the replay's rules, so the replay counts as a
        violation exactly what the service refuses: per user and per channel per 7 days, per offer per window (the
        replay decides once per user and day)."""
        return cls(per_user_per_day=1, per_user_per_week=caps.per_user_week, per_user_channel_per_week=caps.per_channel_week,
                   per_offer=caps.per_offer, offer_window_days=caps.offer_window_days,
                   spacing_contacts=caps.spacing_contacts, spacing_hours=caps.spacing_hours)


@dataclass(frozen=True)
class ReplayConfig:
    days: int = 14
    seed: int = 11
    rules: Rules = field(default_factory=Rules)


@dataclass(frozen=True)
class Period:
    """What a replay needs of a world: its truth, catalog, consent, suppressions and history at the start."""

    truth: Truth | None  # None: a company's own logs, for off-policy evaluation only (nothing to replay)
    offers: pd.DataFrame
    channels: pd.DataFrame  # in CHANNELS order (with a truth), else the channels table's order
    user_ids: np.ndarray
    consent: np.ndarray  # (n, C) bool
    suppressed: np.ndarray  # (n, C) bool at the start of the period
    start: pd.Timestamp  # midnight UTC after the history
    last_sends: np.ndarray  # (n, k) int64 ns of the most recent sends before the start (NAT padded)
    last_channels: np.ndarray  # (n, k) channel index of each of those sends (-1 = none)
    last_offers: np.ndarray  # (n, k) offer index of each of those sends (-1 = none or not in the catalog)
    stage: np.ndarray  # (n,) funnel stage index at the start
    last_purchase_ns: np.ndarray  # (n,) int64 ns, NAT if none
    # The features the offers' eligibility rules read, per user, as the decision service reads them (its newest feature
    # snapshot before the period: pipelines/evaluate.py `feature_state`). None: stage, recency and tenure derived from
    # the raw tables here, which is only the simulator's stand-in: the feature build rounds recency and tenure its own
    # way and a snapshot older than the period misses the latest events, so the two disagree for some users.
    state: dict[str, np.ndarray] | None = None
    # (n, k) whether the caps count each of the last sends. None: all. A service's ledger counts only its own sends
    # (it does not import another system's contacts), so a round through the service counts only those against the
    # caps; the users tire of every contact all the same (the truth's fatigue counts them all).
    last_counted: np.ndarray | None = None

    @classmethod
    def from_tables(cls, tables: dict[str, pd.DataFrame], truth: Truth | None,
                    counted: np.ndarray | None = None) -> Period:
        """Build from raw tables in the contract (what `simulate` returns or what is on disk) and the truth;
        without a truth, the period starts at the first midnight after the logs (off-policy evaluation only).
        `counted`: per row of the contacts table, whether the caps count it (None: every contact)."""
        users = tables["users"]
        ids = users["user_id"].astype(str).to_numpy()
        index = pd.Index(ids)
        n = len(ids)
        names = list(CHANNELS) if truth is not None else list(tables["channels"]["channel"].astype(str))
        channels = tables["channels"].assign(channel=tables["channels"]["channel"].astype(str)).set_index("channel")
        channels = channels.loc[names].reset_index()
        consent = np.stack([users[f"consent_{c}"].fillna(False).to_numpy(dtype=bool) if f"consent_{c}" in users
                            else np.zeros(n, dtype=bool) for c in names], axis=1)
        suppressed = np.zeros((n, len(names)), dtype=bool)
        sup = tables.get("suppressions")
        if sup is not None and len(sup):
            rows = index.get_indexer(sup["user_id"].astype(str))
            ch = sup["channel"].astype(str).to_numpy()
            star = ch == "*"
            suppressed[rows[star]] = True
            cidx = pd.Index(names).get_indexer(ch[~star])
            ok = cidx >= 0
            suppressed[rows[~star][ok], cidx[ok]] = True
        contacts = tables["contacts"]
        if truth is not None:
            start = pd.Timestamp(truth.end_ns, tz="UTC")
        else:
            last = max(pd.to_datetime(tables["events"]["ts"], utc=True).max(), pd.to_datetime(contacts["sent_at"], utc=True).max())
            start = last.floor("D") + pd.Timedelta(days=1)
        in_week = (contacts["channel"].notna() & (contacts["sent_at"] >= start - pd.Timedelta(days=7))).to_numpy()
        sent = contacts[in_week]
        # Every send of the week before the start (the caps' and the fatigue's window), at least 8 columns.
        width = max(8, int(sent["user_id"].astype(str).value_counts().max()) if len(sent) else 0)
        last = np.full((n, width), NAT, dtype=np.int64)
        last_ch = np.full((n, width), -1, dtype=np.int64)
        last_offer = np.full((n, width), -1, dtype=np.int64)
        last_counted = None if counted is None else np.ones((n, width), dtype=bool)
        if len(sent):
            s = pd.DataFrame({"u": index.get_indexer(sent["user_id"].astype(str)),
                              "t": pd.to_datetime(sent["sent_at"], utc=True).astype("int64"),
                              "c": pd.Index(names).get_indexer(sent["channel"].astype(str)),
                              "o": pd.Index(tables["offers"]["offer_id"].astype(str)).get_indexer(sent["offer_id"].astype(str)),
                              "counted": True if counted is None else np.asarray(counted, dtype=bool)[in_week]})
            s = s[s["u"] >= 0].sort_values("t", kind="stable")  # contacts of users outside the table: none of ours
            s["k"] = s.groupby("u").cumcount()
            at = (s["u"].to_numpy(), s["k"].to_numpy())
            last[at], last_ch[at], last_offer[at] = s["t"].to_numpy(), s["c"].to_numpy(), s["o"].to_numpy()
            if last_counted is not None:
                last_counted[at] = s["counted"].to_numpy()
        ev = tables["events"]
        codes = ev["type"].astype(str).map(STAGE_OF_TYPE).fillna(0).to_numpy(dtype=np.int8)
        urow = index.get_indexer(ev["user_id"].astype(str))
        stage = np.zeros(n, dtype=np.int8)
        np.maximum.at(stage, urow, codes)
        buy = ev["type"].astype(str).to_numpy() == "purchase"
        last_buy = np.full(n, NAT, dtype=np.int64)
        np.maximum.at(last_buy, urow[buy], ev["ts"].astype("int64").to_numpy()[buy])
        return cls(truth, tables["offers"].reset_index(drop=True), channels, ids, consent, suppressed, start, last,
                   last_ch, last_offer, stage, last_buy, last_counted=last_counted)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def sample(self, n: int | None, seed: int = 0) -> Period:
        """The same period for a seeded random subset of `n` users (all users if n is None or larger)."""
        if n is None or n >= self.n_users:
            return self
        rows = np.sort(np.random.default_rng(seed).choice(self.n_users, size=n, replace=False))
        truth = self.truth
        if truth is not None:
            truth = dataclasses.replace(truth, **{f.name: getattr(truth, f.name)[rows] for f in dataclasses.fields(truth)
                                                  if isinstance(getattr(truth, f.name), np.ndarray)})
        return dataclasses.replace(
            self, truth=truth, user_ids=self.user_ids[rows],
            consent=self.consent[rows], suppressed=self.suppressed[rows], last_sends=self.last_sends[rows],
            last_channels=self.last_channels[rows], last_offers=self.last_offers[rows],
            stage=self.stage[rows], last_purchase_ns=self.last_purchase_ns[rows],
            state=None if self.state is None else {k: np.asarray(v)[rows] for k, v in self.state.items()},
            last_counted=None if self.last_counted is None else self.last_counted[rows])


@dataclass(frozen=True)
class Situation:
    """What a policy sees on one decision day."""

    day: int
    at: pd.Timestamp  # midnight UTC of the decision day
    allowed: np.ndarray  # (n, C) consent, not suppressed, under every cap
    eligible: np.ndarray  # (n, O) offer eligibility and validity, and under the per-offer cap
    recent: np.ndarray  # (n,) contacts in the previous 7 days
    hour_ok: np.ndarray  # (C, 24) local hours outside each channel's quiet hours
    capacity_left: np.ndarray  # (C,) sends left today per channel (inf = no limit)
    state: dict[str, np.ndarray]  # features the eligibility rules read


@dataclass(frozen=True)
class Choice:
    """One decision per user: offer index (-1 = no contact), channel index, local hour, score, probability."""

    offer: np.ndarray
    channel: np.ndarray
    hour: np.ndarray
    score: np.ndarray
    propensity: np.ndarray
    send_ns: np.ndarray | None = None  # exact UTC send times where the policy set them (a service's answers, which
    # may fall on the next local day); None: a random minute of the local hour on the decision day


class Policy(Protocol):
    name: str

    def choose(self, situation: Situation, rng: np.random.Generator) -> Choice: ...


def hour_ok_matrix(channels: pd.DataFrame) -> np.ndarray:
    """(C, 24) True where a local hour is outside the channel's quiet hours (the contract's one reading of them)."""
    return ~np.stack([parse_quiet_hours(spec) for spec in channels["quiet_hours"]]).reshape(len(channels), 24)


def _local_day(tz: np.ndarray, ns: np.ndarray) -> np.ndarray:
    """The day number (days since the epoch) of each instant on its user's local calendar; NAT -> a day long past."""
    sent = ns != NAT
    safe = np.where(sent, ns, 0)
    return np.where(sent, (safe + utc_offset_ns(tz, safe)) // DAY_NS, np.iinfo(np.int64).min // DAY_NS)


def _over_caps(sent: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], rows: np.ndarray, channel: np.ndarray,
               offer: np.ndarray, day: np.ndarray, rules: Rules) -> np.ndarray:
    """Per new send (user row, channel, offer, local day), whether the sends before it already fill a cap of the
    windows the ledger checks for that day: per user and per channel over 7 local days, per offer over its window."""
    u, c, d, o = (np.concatenate([x[k] for x in sent]) if sent else np.zeros(0, dtype=np.int64) for k in range(4))
    earlier = pd.DataFrame({"u": u, "c": c, "d": d, "o": o})
    new = pd.DataFrame({"i": np.arange(len(rows)), "u": rows, "nc": channel, "nd": day, "no": offer})
    pairs = new.merge(earlier[earlier["u"].isin(rows)], on="u")
    week = (pairs["d"] > pairs["nd"] - 7) & (pairs["d"] <= pairs["nd"])
    window = (pairs["d"] > pairs["nd"] - rules.offer_window_days) & (pairs["d"] <= pairs["nd"])

    def count(mask: pd.Series) -> np.ndarray:
        return np.bincount(pairs.loc[mask, "i"].to_numpy(dtype=np.int64), minlength=len(rows))

    over = (count(week) >= rules.per_user_per_week) | (count(week & (pairs["c"] == pairs["nc"])) >= rules.per_user_channel_per_week)
    if rules.per_offer is not None:
        over |= count(window & (pairs["o"] == pairs["no"])) >= rules.per_offer
    return over


def _unspaced(history: np.ndarray, send: np.ndarray, rules: Rules) -> np.ndarray:
    """Per new send, whether it breaks the spacing rule with the user's other sends (`history`, ns, NAT padded)."""
    if rules.spacing_contacts <= 0:
        return np.zeros(len(send), dtype=bool)
    bins = np.where(history != NAT, history // HOUR_NS, NO_SEND)
    return ~spacing_ok(bins, send // HOUR_NS, rules.spacing_contacts, rules.spacing_hours)


def keep_capacity(choice: Choice, capacity_left: np.ndarray) -> Choice:
    """Drop the lowest-scored sends of each channel beyond its capacity left today."""
    offer = choice.offer.copy()
    for c in np.flatnonzero(np.isfinite(capacity_left)):
        rows = np.flatnonzero((offer >= 0) & (choice.channel == c))
        if len(rows) > capacity_left[c]:
            drop = rows[np.argsort(-choice.score[rows], kind="stable")[int(capacity_left[c]):]]
            offer[drop] = -1
    return Choice(offer, choice.channel, choice.hour, choice.score, choice.propensity, choice.send_ns)


@dataclass
class ReplayResult:
    policy: str
    sends: pd.DataFrame  # one row per send with expected and drawn outcomes
    metrics: dict[str, float]
    events: dict[str, np.ndarray] | None = None  # events the sends caused (clicks, purchases), with `record`


OUTCOMES = ("delivered_at", "opened_at", "clicked_at", "converted_at", "unsubscribed_at", "complained_at")


def replay(period: Period, policy: Policy, config: ReplayConfig = ReplayConfig(), organic: Purchases | None = None,
           record: bool = False, observe: Callable[[pd.DataFrame], None] | None = None) -> ReplayResult:
    """Run `policy` for `config.days` days after the history and measure it.

    `organic`: the users' organic purchases in the period (a contact's logged conversion is the earlier of the
    purchase it caused and the organic one); without it, organic purchases are drawn per send. `record`: keep
    every outcome's time and the caused events, the logs the closed loop feeds back (pipelines/service_loop.py).
    `observe`: called with each day's sends once drawn (a policy outside the replay learns its outcomes day by day).
    """
    if period.truth is None:
        raise ValueError("a replay needs the simulated truth: a company's own logs support off-policy evaluation only")
    rng = np.random.default_rng(config.seed)
    truth, rules, n = period.truth, config.rules, period.n_users
    offers, n_channels = period.offers, len(CHANNELS)
    value = offers["value"].to_numpy(dtype=float)
    cost = period.channels["cost"].to_numpy(dtype=float)
    capacity = period.channels["daily_capacity"].astype("Float64").fillna(np.inf).to_numpy(dtype=float)
    hour_ok = hour_ok_matrix(period.channels)
    suppressed = period.suppressed.copy()
    # When each suppression began (the period's own: before it). A send breaks one only if the opt-out happened
    # before its decision day began: a service learns an opt-out when it is reported, not when it is drawn.
    suppressed_ns = np.where(period.suppressed, np.iinfo(np.int64).min, np.iinfo(np.int64).max)
    counted = period.last_counted if period.last_counted is not None else np.ones(period.last_sends.shape, dtype=bool)
    # The sends before the start that the caps do not count still tire the users: the truth's fatigue counts them.
    uncounted = np.where(counted, NAT, period.last_sends)
    sends_ns = [np.where(counted[:, k], period.last_sends[:, k], NAT) for k in range(period.last_sends.shape[1])]
    sends_day = [_local_day(truth.tz, ns) for ns in sends_ns]  # each send's day on the user's calendar, for the caps
    # (user rows, channel, local day, offer) per day, for the per-channel and per-offer caps; the history's sends first.
    sends_ns_ch: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for k in range(period.last_sends.shape[1]):
        had = (period.last_channels[:, k] >= 0) & counted[:, k]
        sends_ns_ch.append((np.flatnonzero(had), period.last_channels[had, k], sends_day[k][had], period.last_offers[had, k]))
    frames, caused_events = [], []
    for day in range(config.days):
        at = period.start + pd.Timedelta(days=day)
        at_ns = at.value
        history = np.stack(sends_ns, axis=1)
        # Fatigue: every contact in the last 7 x 24 hours, those the caps do not count included.
        recent = (((history > at_ns - 7 * DAY_NS) & (history != NAT)).sum(axis=1)
                  + ((uncounted > at_ns - 7 * DAY_NS) & (uncounted != NAT)).sum(axis=1))
        # The service counts its caps over the user's local calendar days, the day of the send included: the weekly
        # caps over 7 days, the per-offer cap over the offer window. The day's sends land on its local date.
        today = at_ns // DAY_NS
        in_week = (np.stack(sends_day, axis=1) > today - 7).sum(axis=1)
        per_channel_week = np.zeros((n, n_channels), dtype=np.int64)
        per_offer = np.zeros((n, len(offers)), dtype=np.int64)
        for d_rows, d_ch, d_day, d_o in sends_ns_ch:
            live = d_day > today - 7
            np.add.at(per_channel_week, (d_rows[live], d_ch[live]), 1)
            counted = (d_day > today - rules.offer_window_days) & (d_o >= 0)
            np.add.at(per_offer, (d_rows[counted], d_o[counted]), 1)
        offer_capped = per_offer >= rules.per_offer if rules.per_offer is not None else np.zeros_like(per_offer, dtype=bool)
        # One decision per user per day is the per-day cap.
        user_ok = (in_week < rules.per_user_per_week) & (truth.signup_ns <= at_ns)
        if rules.spacing_contacts > 0:
            # The policy picks the hour after this: a user with `spacing_contacts` contacts in the spacing window before
            # the day began (or planned after it) is out for the day, which keeps every hour of the day within the
            # service's rule (spacing_ok, which the violations below apply at the send's own hour).
            user_ok &= ((history > at_ns - rules.spacing_hours * HOUR_NS) & (history != NAT)).sum(axis=1) < rules.spacing_contacts
        allowed = period.consent & ~suppressed & user_ok[:, None] & (per_channel_week < rules.per_user_channel_per_week)
        state = period.state if period.state is not None else {
            "lifecycle_stage": np.asarray(STAGES, dtype=object)[period.stage],
            "recency_days": np.where(period.last_purchase_ns != NAT, (at_ns - period.last_purchase_ns) // DAY_NS, 9999),
            "tenure_days": (at_ns - truth.signup_ns) // DAY_NS,
        }
        offer_ok = eligible(offers, state, at)
        situation = Situation(day, at, allowed, offer_ok & ~offer_capped, recent, hour_ok, capacity.copy(), state)
        choice = policy.choose(situation, rng)
        rows = np.flatnonzero(choice.offer >= 0)
        propensity = choice.propensity[rows]
        if len(rows) == 0:
            continue
        o, c, h = choice.offer[rows], choice.channel[rows], choice.hour[rows].astype(np.int64)
        minute = rng.integers(0, 60, len(rows))
        send = at_ns + h * HOUR_NS + minute * MINUTE_NS - utc_offset_ns(truth.tz[rows], np.full(len(rows), at_ns))
        # A local hour before midnight UTC of the day lands on the previous UTC day: move it a day on.
        send = np.where(send < at_ns, send + DAY_NS, send)
        if choice.send_ns is not None:
            send = choice.send_ns[rows]
        broken = {
            "consent": ~period.consent[rows, c],
            "suppressed": suppressed_ns[rows, c] < at_ns,
            "cap": _over_caps(sends_ns_ch, rows, c, o, _local_day(truth.tz[rows], send), rules) | (truth.signup_ns[rows] > at_ns),
            "quiet_hours": ~hour_ok[c, h],
            "ineligible": ~offer_ok[rows, o],
            "spacing": _unspaced(history[rows], send, rules),
            "capacity": np.zeros(len(rows), dtype=bool),
        }
        for ch in range(n_channels):
            mine = np.flatnonzero(c == ch)
            if len(mine) > capacity[ch]:
                broken["capacity"][mine[int(capacity[ch]):]] = True
        caused = response.p_caused(truth, offers, rows, o, c, send, recent[rows])
        p_unsub = response.p_unsubscribe(truth, rows, c, recent[rows])
        p_complaint = response.p_complaint(truth, rows, c, recent[rows])
        org_ns, org_rev = organic.first_after(rows, send, response.HORIZON_DAYS) if organic is not None else (None, None)
        outcomes, events = response.draw_outcomes_ns(truth, offers, rows, o, c, send, recent[rows], rng,
                                                     organic_ns=org_ns, organic_revenue=org_rev)
        unsub = outcomes["unsubscribed_at"] != NAT
        complained = outcomes["complained_at"] != NAT
        suppressed[rows[unsub | complained], c[unsub | complained]] = True
        opted = unsub | complained
        when = np.minimum(np.where(unsub, outcomes["unsubscribed_at"], np.iinfo(np.int64).max),
                          np.where(complained, outcomes["complained_at"], np.iinfo(np.int64).max))
        np.minimum.at(suppressed_ns, (rows[opted], c[opted]), when[opted])
        day_sends = np.full(n, NAT, dtype=np.int64)
        day_sends[rows] = send
        sends_ns.append(day_sends)
        sends_day.append(_local_day(truth.tz, day_sends))
        sends_ns_ch.append((rows, c, sends_day[-1][rows], o))
        frame = pd.DataFrame({
            "day": day, "user_idx": rows, "offer_id": offers["offer_id"].to_numpy()[o], "channel": np.asarray(CHANNELS)[c],
            "local_hour": h, "send_at": pd.to_datetime(send, utc=True), "propensity": propensity,
            "recent_contacts": recent[rows], "p_caused": caused, "expected_revenue": caused * value[o], "cost": cost[c],
            "p_unsubscribe": p_unsub, "p_complaint": p_complaint,
            "opened": outcomes["opened_at"] != NAT, "caused": outcomes["caused"], "unsubscribed": unsub,
            "complained": complained, "violation": np.logical_or.reduce(list(broken.values())),
            **{f"broke_{k}": v for k, v in broken.items()},
        })
        if record:
            for col in OUTCOMES:
                frame[col] = to_utc_series(outcomes[col])
            frame["revenue"] = np.where(outcomes["converted_at"] != NAT, outcomes["revenue"], 0.0)
            caused_events.append(events)
        frames.append(frame)
        if observe is not None:
            observe(frame)
    sends = pd.concat(frames, ignore_index=True) if frames else _empty_sends()
    result = ReplayResult(policy.name, sends, _metrics(sends, n, config.days))
    if record:
        result.events = {k: np.concatenate([e[k] for e in caused_events]) for k in caused_events[0]} if caused_events else None
    return result


def _empty_sends() -> pd.DataFrame:
    return pd.DataFrame({k: pd.Series(dtype=t) for k, t in {
        "day": int, "user_idx": int, "offer_id": object, "channel": object, "local_hour": int, "propensity": float,
        "recent_contacts": int, "p_caused": float, "expected_revenue": float, "cost": float, "p_unsubscribe": float,
        "p_complaint": float, "opened": bool,
        "caused": bool, "unsubscribed": bool, "complained": bool, "violation": bool}.items()})


def _metrics(sends: pd.DataFrame, n_users: int, days: int) -> dict[str, float]:
    revenue = float(sends["expected_revenue"].sum())
    cost = float(sends["cost"].sum())
    unsubscribes, complaints = float(sends["p_unsubscribe"].sum()), float(sends["p_complaint"].sum())
    out = {
        "users": n_users,
        "days": days,
        "contacts": len(sends),
        "incremental_conversions": float(sends["p_caused"].sum()),
        "incremental_revenue": revenue,
        "cost": cost,
        "net_value": revenue - cost,
        "roi": (revenue - cost) / cost if cost > 0 else float("nan"),
        "opens": int(sends["opened"].sum()),
        # Expected under the truth, like revenue: the drawn counts (a few hundred rare events) differ between two
        # runs of the same policy by more than two policies differ.
        "unsubscribes": unsubscribes,
        "complaints": complaints,
        "unsubscribes_drawn": int(sends["unsubscribed"].sum()),
        "complaints_drawn": int(sends["complained"].sum()),
        "violations": int(sends["violation"].sum()),
        # Long-term harm beside revenue: per 1,000 contacts, comparable across policies that send more or less.
        "unsubscribes_per_1k": 1000 * unsubscribes / len(sends) if len(sends) else float("nan"),
        "complaints_per_1k": 1000 * complaints / len(sends) if len(sends) else float("nan"),
        "opt_outs_per_1k": 1000 * (unsubscribes + complaints) / len(sends) if len(sends) else float("nan"),
    }
    for ch in CHANNELS:
        out[f"contacts_{ch}"] = int((sends["channel"] == ch).sum())
    return out
