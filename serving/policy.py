"""Contact policy: the hard rules every action must pass, failing closed, each refusal with a reason code."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from features.contract import parse_eligibility
from serving.config import OperatorConfig, parse_quiet_hours

__all__ = [
    "REASONS",
    "Refusal",
    "TimeGrid",
    "Counts",
    "Constraint",
    "PolicyResult",
    "time_grid",
    "eligible",
    "counts_from",
    "evaluate",
    "constraints_for",
    "CAPACITY",
    "Key",
]

# Every reason a candidate can be filtered for; tests assert each one is produced by its rule.
REASONS: dict[str, str] = {
    "not_in_campaign": "the campaign context does not allow this offer or channel",
    "offer_not_valid": "the offer is outside its valid_from/valid_to window",
    "eligibility": "the user does not meet the offer's eligibility rule",
    "cap_offer": "the offer already reached the user the allowed number of times in its window",
    "consent": "no consent for this channel in the profile (unknown consent counts as no)",
    "suppressed": "the user is on the suppression list for this channel",
    "timezone_unknown": "the user's timezone is unknown, so quiet hours cannot be honoured",
    "quiet_hours": "every remaining send time falls in the channel's quiet hours (user's local time)",
    "deadline": "no send time is left before the campaign deadline",
    "cap_channel_day": "the per-channel daily cap is reached on the user's local day",
    "cap_channel_week": "the per-channel 7-day cap is reached",
    "cap_user_day": "the per-user daily cap over all channels is reached",
    "capacity": "the channel's daily capacity is used up",
    "ledger_unavailable": "the contact ledger cannot be reached, so no contact is made",
}

SLOTS = 24  # candidate send times: now (or the earliest allowed) and the next 23 hour starts
WEEK = 7  # local days in the weekly cap window


@dataclass(frozen=True)
class Refusal:
    """One filtered candidate: an offer (channel None), a channel (offer None), and why."""

    reason: str
    offer_id: str | None = None
    channel: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class TimeGrid:
    """Candidate send times for one user, with their local hour and the local/UTC day each falls on."""

    times: list[datetime]  # aware datetimes in the user's timezone
    local_hour: np.ndarray  # int (S,)
    local_day: np.ndarray  # 0 or 1: first or second local calendar day of the grid
    utc_day: np.ndarray  # 0 or 1: first or second UTC day
    local_dates: tuple[date, date]
    utc_dates: tuple[date, date]
    before_deadline: np.ndarray  # bool (S,)


def time_grid(earliest: datetime, timezone: str | None, deadline: datetime | None = None) -> TimeGrid:
    """Slot 0 at `earliest`, then each following whole hour; local clock from `timezone` (UTC if unknown)."""
    tz = ZoneInfo(timezone) if timezone else UTC
    start = earliest.astimezone(UTC)
    first_hour = start.replace(minute=0, second=0, microsecond=0)
    times_utc = [start] + [first_hour + timedelta(hours=k) for k in range(1, SLOTS)]
    times = [t.astimezone(tz) for t in times_utc]
    local_dates = (times[0].date(), times[0].date() + timedelta(days=1))
    utc_dates = (start.date(), start.date() + timedelta(days=1))
    return TimeGrid(
        times=times,
        local_hour=np.array([t.hour for t in times]),
        local_day=np.array([int(t.date() != local_dates[0]) for t in times]),
        utc_day=np.array([int(t.date() != utc_dates[0]) for t in times_utc]),
        local_dates=local_dates,
        utc_dates=utc_dates,
        before_deadline=np.array([deadline is None or t <= deadline for t in times_utc]),
    )


def _clause_holds(value: object, op: str, target: object) -> bool:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return False  # an unknown feature never qualifies: fail closed
    if op in ("in", "not in"):
        members = {str(t) if isinstance(t, str) else float(t) for t in target}  # type: ignore[union-attr]
        try:
            v: object = float(value) if not isinstance(value, str) else value
        except (TypeError, ValueError):
            v = str(value)
        if isinstance(v, float) and v not in members:
            v = str(value)
        return (v in members) == (op == "in")
    if isinstance(target, float):
        try:
            v = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
    else:
        v, target = str(value), str(target)
    return {"==": v == target, "!=": v != target, ">=": v >= target, "<=": v <= target,  # type: ignore[operator]
            ">": v > target, "<": v < target}[op]  # type: ignore[operator]


def eligible(config: OperatorConfig, features: dict[str, object]) -> list[str | None]:
    """Per offer: None if the user qualifies, else the first clause that fails (as text)."""
    out: list[str | None] = []
    for offer in config.offers:
        failed = None
        for clause in parse_eligibility(offer.eligibility):
            if not _clause_holds(features.get(clause.feature), clause.op, clause.value):
                target = "[" + ", ".join(map(str, clause.value)) + "]" if isinstance(clause.value, tuple) else clause.value
                failed = f"{clause.feature} {clause.op} {target} (user has {features.get(clause.feature)})"
                break
        out.append(failed)
    return out


@dataclass
class Counts:
    """Ledger counters one user's decision needs; shapes follow the config's offer and channel order."""

    channel_day: np.ndarray  # (C, WEEK + 1): local days d0-6 .. d0+1
    offer_window: np.ndarray  # (O,): contacts with each offer over the offer window
    capacity_used: np.ndarray  # (C, 2): sends per channel on the grid's two UTC days
    suppressed: dict[str, str] = field(default_factory=dict)  # channel or "*" -> reason


def _local_days(grid: TimeGrid) -> list[date]:
    return [grid.local_dates[0] + timedelta(days=k) for k in range(-(WEEK - 1), 2)]


def counts_from(user_counts: dict[str, int], capacity_counts: dict[str, int], config: OperatorConfig, grid: TimeGrid,
                suppressed: dict[str, str]) -> Counts:
    """Arrange one user's ledger counters (field -> count, missing = 0) into the arrays the rules use."""
    days = _local_days(grid)
    window = config.caps.offer_window_days
    # Charges may sit up to a window either side of a grid day (the commit checks the same span).
    offer_days = [grid.local_dates[0] + timedelta(days=k) for k in range(-window, window + 2)]
    return Counts(
        channel_day=np.array([[user_counts.get(f"c:{c}:{d}", 0) for d in days] for c in config.channel_names()],
                             dtype=np.int64).reshape(len(config.channels), WEEK + 1),
        offer_window=np.array([sum(user_counts.get(f"o:{o}:{d}", 0) for d in offer_days) for o in config.offer_ids()],
                              dtype=np.int64),
        capacity_used=np.array([[capacity_counts.get(f"{c}:{d}", 0) for d in grid.utc_dates] for c in config.channel_names()],
                               dtype=np.int64).reshape(len(config.channels), 2),
        suppressed=suppressed,
    )


@dataclass
class PolicyResult:
    """What the rules allow: offers x channels, and send slots per channel."""

    offer_ok: np.ndarray  # bool (O,)
    channel_ok: np.ndarray  # bool (C,)
    slot_ok: np.ndarray  # bool (C, S)
    refusals: list[Refusal]


def evaluate(config: OperatorConfig, features: dict[str, object], counts: Counts, grid: TimeGrid, now: datetime,
             allowed_offers: set[str] | None = None, allowed_channels: set[str] | None = None,
             timezone_known: bool = True) -> PolicyResult:
    """Apply every contact rule; anything unknown is refused (fail closed)."""
    refusals: list[Refusal] = []
    caps = config.caps
    offer_ok = np.ones(len(config.offers), dtype=bool)
    for i, (offer, why_not) in enumerate(zip(config.offers, eligible(config, features), strict=True)):
        reason, detail = None, ""
        if allowed_offers is not None and offer.offer_id not in allowed_offers:
            reason = "not_in_campaign"
        elif (offer.valid_from and now < offer.valid_from) or (offer.valid_to and now > offer.valid_to):
            reason = "offer_not_valid"
        elif why_not is not None:
            reason, detail = "eligibility", why_not
        elif counts.offer_window[i] >= caps.per_offer:
            reason, detail = "cap_offer", f"{counts.offer_window[i]} of {caps.per_offer} in {caps.offer_window_days} days"
        if reason:
            offer_ok[i] = False
            refusals.append(Refusal(reason, offer_id=offer.offer_id, detail=detail))

    n_c = len(config.channels)
    channel_ok = np.ones(n_c, dtype=bool)
    slot_ok = np.ones((n_c, SLOTS), dtype=bool)
    # Day-level caps, for the grid's two local days (index 6 = d0 in channel_day).
    day = counts.channel_day[:, WEEK - 1:WEEK + 1]  # (C, 2)
    week = np.stack([counts.channel_day[:, k:k + WEEK].sum(axis=1) for k in (0, 1)], axis=1)  # (C, 2)
    user_day = day.sum(axis=0)  # (2,)
    for j, ch in enumerate(config.channels):
        reason, detail = None, ""
        suppression = counts.suppressed.get(ch.channel) or counts.suppressed.get("*")
        if allowed_channels is not None and ch.channel not in allowed_channels:
            reason = "not_in_campaign"
        elif suppression:
            reason, detail = "suppressed", suppression
        elif ch.requires_consent and features.get(f"consent_{ch.channel}") not in (True, 1, 1.0, "true", "True"):
            reason = "consent"
        elif ch.quiet_hours and not timezone_known:
            reason = "timezone_unknown"
        if reason:
            channel_ok[j] = False
            slot_ok[j] = False
            refusals.append(Refusal(reason, channel=ch.channel, detail=detail))
            continue
        capacity = ch.daily_capacity if ch.daily_capacity is not None else np.iinfo(np.int64).max
        rules = (
            ("deadline", grid.before_deadline),
            ("quiet_hours", ~parse_quiet_hours(ch.quiet_hours)[grid.local_hour]),
            ("cap_channel_day", (day[j] < caps.per_channel_day)[grid.local_day]),
            ("cap_channel_week", (week[j] < caps.per_channel_week)[grid.local_day]),
            ("cap_user_day", (user_day < caps.per_user_day)[grid.local_day]),
            ("capacity", (counts.capacity_used[j] < capacity)[grid.utc_day]),
        )
        ok = np.ones(SLOTS, dtype=bool)
        blocked = []
        for name, rule in rules:
            if (ok & ~rule).any():
                blocked.append(name)
            ok &= rule
        slot_ok[j] = ok
        if not ok.any():
            channel_ok[j] = False
            # Name the rule that removed the last slots first; the others narrowed the window before it.
            refusals.append(Refusal(blocked[-1], channel=ch.channel, detail=", ".join(blocked[:-1])))
    return PolicyResult(offer_ok=offer_ok, channel_ok=channel_ok, slot_ok=slot_ok, refusals=refusals)


CAPACITY = "#capacity"  # ledger scope of the per-channel daily capacity counters (user scopes are user ids)
Key = tuple[str, str]  # (scope, field)


@dataclass(frozen=True)
class Constraint:
    """sum(ledger[keys]) + (new charges on these keys) must stay <= limit, checked atomically by the ledger."""

    keys: tuple[Key, ...]
    limit: int
    rule: str


def constraints_for(user_id: str, config: OperatorConfig, actions: list[tuple[str, str, datetime]],
                    timezone: str | None) -> tuple[list[Key], list[Constraint]]:
    """Keys to charge and the caps to re-check when committing `actions` (offer, channel, send_at)."""
    tz = ZoneInfo(timezone) if timezone else UTC
    caps = config.caps
    window = caps.offer_window_days
    charges: list[Key] = []
    constraints: dict[tuple, Constraint] = {}
    for offer_id, channel, send_at in actions:
        d = send_at.astimezone(tz).date()
        utc_d = send_at.astimezone(UTC).date()
        charges += [(user_id, f"c:{channel}:{d}"), (user_id, f"o:{offer_id}:{d}"), (CAPACITY, f"{channel}:{utc_d}")]
        # Rolling windows: every window that contains day d must stay within its cap, not only the one
        # ending at d (a decision for an earlier day could otherwise overfill a later window).
        found = [
            Constraint(((user_id, f"c:{channel}:{d}"),), caps.per_channel_day, "cap_channel_day"),
            Constraint(tuple((user_id, f"c:{c}:{d}") for c in config.channel_names()), caps.per_user_day, "cap_user_day"),
            *[Constraint(tuple((user_id, f"c:{channel}:{d + timedelta(days=end - k)}") for k in range(WEEK)),
                         caps.per_channel_week, "cap_channel_week") for end in range(WEEK)],
            *[Constraint(tuple((user_id, f"o:{offer_id}:{d + timedelta(days=end - k)}") for k in range(window)),
                         caps.per_offer, "cap_offer") for end in range(window)],
        ]
        capacity = next(c.daily_capacity for c in config.channels if c.channel == channel)
        if capacity is not None:
            found.append(Constraint(((CAPACITY, f"{channel}:{utc_d}"),), capacity, "capacity"))
        for c in found:
            constraints[(c.keys, c.rule)] = c
    return charges, list(constraints.values())
