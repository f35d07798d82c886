"""Contact policy: the hard rules every action must pass, failing closed, each refusal with a reason code."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from nextbest.features.contract import HOUR_S, NO_SEND, offer_valid, parse_eligibility, spacing_ok
from nextbest.serving.config import OperatorConfig, parse_quiet_hours

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
    "UserRules",
    "CountsBatch",
    "GridBatch",
    "BatchResult",
    "user_rules",
    "counts_batch",
    "grid_batch",
    "evaluate_many",
    "hour_bin",
    "spacing_field",
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
    "send_window": "no send time is left inside the campaign's send hours (user's local time; unknown timezone: none)",
    "cap_channel_day": "the per-channel daily cap is reached on the user's local day",
    "cap_channel_week": "the per-channel 7-day cap is reached",
    "cap_user_day": "the per-user daily cap over all channels is reached",
    "cap_user_week": "the per-user 7-day cap over all channels is reached",
    "spacing": "the user already has caps.spacing_contacts contacts in the caps.spacing_hours hours before every "
               "remaining send time (or a planned later contact would), over all channels",
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
    in_window: np.ndarray  # bool (S,): inside the campaign's local send hours
    hour_bin: np.ndarray  # int64 (S,): the UTC hour each slot falls in (the spacing rule's unit)


def hour_bin(t: datetime) -> int:
    """The UTC hour a send time falls in, as the spacing rule and the ledger's `h:` counters count it."""
    return int(t.timestamp() // HOUR_S)


def spacing_field(bin_: int) -> str:
    """The ledger counter of the user's contacts in one UTC hour (zero-padded, so a range of hours is a range of names)."""
    return f"h:{bin_:08d}"


def time_grid(earliest: datetime, timezone: str | None, deadline: datetime | None = None,
              send_hours: str | None = None) -> TimeGrid:
    """Slot 0 at `earliest`, then each following whole hour; local clock from `timezone` (UTC if unknown).
    `send_hours` ("9-20": 09:00 up to 20:00 local) limits the slots a campaign may use; with an unknown timezone
    no slot is inside them (fail closed, like quiet hours)."""
    tz = ZoneInfo(timezone) if timezone else UTC
    start = earliest.astimezone(UTC)
    first_hour = start.replace(minute=0, second=0, microsecond=0)
    times_utc = [start] + [first_hour + timedelta(hours=k) for k in range(1, SLOTS)]
    times = [t.astimezone(tz) for t in times_utc]
    local_dates = (times[0].date(), times[0].date() + timedelta(days=1))
    utc_dates = (start.date(), start.date() + timedelta(days=1))
    local_hour = np.array([t.hour for t in times])
    if send_hours is None:
        in_window = np.ones(SLOTS, dtype=bool)
    else:  # the same "from-to" local hours as a channel's quiet hours: one parser
        in_window = parse_quiet_hours(send_hours)[local_hour] & (timezone is not None)
    return TimeGrid(
        times=times,
        local_hour=local_hour,
        local_day=np.array([int(t.date() != local_dates[0]) for t in times]),
        utc_day=np.array([int(t.date() != utc_dates[0]) for t in times_utc]),
        local_dates=local_dates,
        utc_dates=utc_dates,
        before_deadline=np.array([deadline is None or t <= deadline for t in times_utc]),
        in_window=in_window,
        hour_bin=np.array([hour_bin(t) for t in times_utc], dtype=np.int64),
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
    sends: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # hour bins of the user's
    # contacts (one entry per contact; NO_SEND pads), for the spacing rule


def _reach(config: OperatorConfig, grid: TimeGrid) -> tuple[int, int]:
    """The hour bins a contact must fall in to matter to the spacing rule at any of the grid's slots (the ledger keeps
    every hour counter: without this bound a long-contacted user's decision would read them all)."""
    hours = config.caps.spacing_hours
    return int(grid.hour_bin[0]) - hours + 1, int(grid.hour_bin[-1]) + hours - 1


def _sends(user_counts: dict[str, int], reach: tuple[int, int]) -> list[int]:
    """The hour bins of a user's contacts within `reach` from the ledger's `h:` counters, one entry per contact."""
    return [b for name, n in user_counts.items() if name.startswith("h:") and reach[0] <= (b := int(name[2:])) <= reach[1]
            for _ in range(n)]


def _spacing(caps, sends: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """Per send slot (hour bin), whether the spacing rule lets a contact go out then."""
    if caps.spacing_contacts <= 0 or not (np.asarray(sends) != NO_SEND).any():
        return np.ones(bins.shape, dtype=bool)
    flat = bins.reshape(-1)
    return spacing_ok(np.broadcast_to(np.asarray(sends).reshape(1, -1), (len(flat), np.asarray(sends).size)), flat,
                      caps.spacing_contacts, caps.spacing_hours).reshape(bins.shape)


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
        sends=np.array(_sends(user_counts, _reach(config, grid)), dtype=np.int64),
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
        elif not offer_valid(now, offer.valid_from, offer.valid_to):
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
    user_week = week.sum(axis=0)  # (2,)
    spaced = _spacing(caps, counts.sends, grid.hour_bin)  # (S,)
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
            ("send_window", grid.in_window),
            ("quiet_hours", ~parse_quiet_hours(ch.quiet_hours)[grid.local_hour]),
            ("cap_channel_day", (day[j] < caps.per_channel_day)[grid.local_day]),
            ("cap_channel_week", (week[j] < caps.per_channel_week)[grid.local_day]),
            ("cap_user_day", (user_day < caps.per_user_day)[grid.local_day]),
            ("cap_user_week", (user_week < caps.per_user_week)[grid.local_day]),
            ("spacing", spaced),
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
    hours: int = 0  # > 0: the spacing rule instead of a sum: `keys` are the new contacts' hour counters (one scope),
    # and with the scope's stored `h:` counters no `hours` consecutive hours may hold more than `limit` (spacing_ok)


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
        charges += [(user_id, f"c:{channel}:{d}"), (user_id, f"o:{offer_id}:{d}"), (CAPACITY, f"{channel}:{utc_d}"),
                    (user_id, spacing_field(hour_bin(send_at)))]
        # Rolling windows: every window that contains day d must stay within its cap, not only the one
        # ending at d (a decision for an earlier day could otherwise overfill a later window).
        found = [
            Constraint(((user_id, f"c:{channel}:{d}"),), caps.per_channel_day, "cap_channel_day"),
            Constraint(tuple((user_id, f"c:{c}:{d}") for c in config.channel_names()), caps.per_user_day, "cap_user_day"),
            *[Constraint(tuple((user_id, f"c:{c}:{d + timedelta(days=end - k)}") for c in config.channel_names()
                               for k in range(WEEK)), caps.per_user_week, "cap_user_week") for end in range(WEEK)],
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
    if caps.spacing_contacts > 0 and actions:
        hours = tuple(k for k in charges if k[1].startswith("h:"))
        constraints[(hours, "spacing")] = Constraint(hours, caps.spacing_contacts, "spacing", caps.spacing_hours)
    return charges, list(constraints.values())


# --- the same rules over a batch of users -------------------------------------------------------------
#
# `evaluate_many` gives, user by user, exactly what `evaluate` gives (offer_ok, channel_ok, slot_ok and the
# refusals in the same order with the same details), with NumPy over the batch. What does not depend on
# the ledger counters (campaign limits, validity, eligibility, suppression, consent, timezone) is worked
# out once per request in `user_rules`, so re-applying the caps after an action is cheap.

_OFFER_RULES = ("not_in_campaign", "offer_not_valid", "eligibility", "cap_offer")  # codes 1..4 (0 = allowed)
_CHANNEL_RULES = ("not_in_campaign", "suppressed", "consent", "timezone_unknown")  # codes 1..4
_SLOT_RULES = ("deadline", "send_window", "quiet_hours", "cap_channel_day", "cap_channel_week", "cap_user_day",
               "cap_user_week", "spacing", "capacity")
_CONSENTED = (True, 1, 1.0, "true", "True")


def _plain(x: object) -> object:
    """A feature value as `evaluate` sees it: None for missing/NaN, Python scalars for NumPy ones."""
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return None
    return x.item() if isinstance(x, np.generic) else x


def _per_value(column: np.ndarray | None, n: int, fn) -> np.ndarray:
    """fn(value) for each user's value, calling fn once per distinct value; an object array (n,)."""
    out = np.empty(n, dtype=object)
    if column is None:
        out[:] = [fn(None)] * n
        return out
    if n == 1:
        out[0] = fn(_plain(column[0]))
        return out
    if column.dtype != object:
        uniq, inverse = np.unique(column, return_inverse=True)
        results = np.empty(len(uniq), dtype=object)
        results[:] = [fn(_plain(u)) for u in uniq]
        return results[inverse.reshape(-1)]
    seen: dict = {}
    for i, v in enumerate(column.tolist()):
        try:
            key = (type(v), v)
            if key not in seen:
                seen[key] = fn(_plain(v))
            out[i] = seen[key]
        except TypeError:  # an unhashable value (a list feature): evaluate it on its own
            out[i] = fn(_plain(v))
    return out


_CLAUSES: dict[str | None, list] = {}


def _clauses(rule: str | None) -> list:
    """parse_eligibility, once per distinct rule text."""
    if rule not in _CLAUSES:
        _CLAUSES[rule] = list(parse_eligibility(rule))
    return _CLAUSES[rule]


def matches(rule: str | None, users: dict[str, np.ndarray]) -> np.ndarray:
    """Per user, whether `rule` (the eligibility rule language) holds; an unknown feature never qualifies."""
    n = len(users["user_id"])
    ok = np.ones(n, dtype=bool)
    for clause in _clauses(rule):
        ok &= _per_value(users.get(clause.feature), n, lambda v, c=clause: _clause_holds(v, c.op, c.value)).astype(bool)
    return ok


@dataclass
class UserRules:
    """Per user, the refusals that do not depend on ledger counters (codes index _OFFER_RULES/_CHANNEL_RULES + 1)."""

    offer_code: np.ndarray  # int8 (U, O)
    offer_detail: np.ndarray  # object (U, O): eligibility clause that failed
    channel_code: np.ndarray  # int8 (U, C)
    channel_detail: np.ndarray  # object (U, C): suppression reason

    def take(self, rows: np.ndarray) -> UserRules:
        return UserRules(self.offer_code[rows], self.offer_detail[rows], self.channel_code[rows], self.channel_detail[rows])


def user_rules(config: OperatorConfig, users: dict[str, np.ndarray], nows: list[datetime],
               allowed_offers: np.ndarray, allowed_channels: np.ndarray, timezone_known: np.ndarray,
               suppressed: list[dict[str, str]]) -> UserRules:
    """Campaign limits, offer validity, eligibility, suppression, consent and timezone for every user.

    `users` maps feature names to one value per user (as serving/engine.py's Users); `allowed_*` are
    boolean (U, O) / (U, C) masks of what each user's campaign allows.
    """
    n_u, n_o, n_c = len(nows), len(config.offers), len(config.channels)
    distinct_now = list(dict.fromkeys(nows))
    invalid = np.array([[not offer_valid(t, o.valid_from, o.valid_to) for o in config.offers]
                        for t in distinct_now], dtype=bool).reshape(len(distinct_now), n_o)
    if len(distinct_now) > 1:
        where = {t: k for k, t in enumerate(distinct_now)}
        invalid = invalid[[where[t] for t in nows]]
    failed = np.full((n_u, n_o), None, dtype=object)
    verdicts: dict[tuple, np.ndarray] = {}
    for i, offer in enumerate(config.offers):
        open_ = None
        for clause in _clauses(offer.eligibility):
            key = (clause.feature, clause.op, clause.value)
            if key not in verdicts:
                target = "[" + ", ".join(map(str, clause.value)) + "]" if isinstance(clause.value, tuple) else clause.value
                prefix = f"{clause.feature} {clause.op} {target} (user has "
                verdicts[key] = _per_value(users.get(clause.feature), n_u,
                                           lambda v, c=clause, p=prefix: None if _clause_holds(v, c.op, c.value) else f"{p}{v})")
            verdict = verdicts[key]
            fails = verdict != None  # noqa: E711 - elementwise on an object array
            if open_ is not None:
                fails &= open_
            if fails.any():
                failed[fails, i] = verdict[fails]
                open_ = ~fails if open_ is None else open_ & ~fails
    ineligible = failed != None  # noqa: E711
    offer_code = np.where(~allowed_offers, 1, np.where(invalid, 2, np.where(ineligible, 3, 0))).astype(np.int8)
    offer_detail = np.where(offer_code == 3, failed, "")

    sup = np.zeros((n_u, n_c), dtype=bool)
    channel_detail = np.full((n_u, n_c), "", dtype=object)
    for u, s in enumerate(suppressed):
        if s:
            for j, ch in enumerate(config.channels):
                reason = s.get(ch.channel) or s.get("*")
                if reason:
                    sup[u, j], channel_detail[u, j] = True, reason
    no_consent = np.zeros((n_u, n_c), dtype=bool)
    for j, ch in enumerate(config.channels):
        if ch.requires_consent:
            no_consent[:, j] = _per_value(users.get(f"consent_{ch.channel}"), n_u, lambda v: v not in _CONSENTED).astype(bool)
    quiet = np.array([bool(ch.quiet_hours) for ch in config.channels], dtype=bool)
    tz_unknown = ~timezone_known[:, None] & quiet[None, :]
    channel_code = np.where(~allowed_channels, 1, np.where(sup, 2, np.where(no_consent, 3, np.where(tz_unknown, 4, 0))))
    channel_detail = np.where(channel_code == 2, channel_detail, "")
    return UserRules(offer_code, offer_detail, channel_code.astype(np.int8), channel_detail)


@dataclass
class GridBatch:
    """Each user's TimeGrid arrays stacked: (U, S)."""

    grids: list[TimeGrid]
    local_hour: np.ndarray
    local_day: np.ndarray
    utc_day: np.ndarray
    before_deadline: np.ndarray
    in_window: np.ndarray
    hour_bin: np.ndarray

    def take(self, rows: np.ndarray) -> GridBatch:
        return GridBatch([self.grids[r] for r in rows.tolist()], self.local_hour[rows], self.local_day[rows],
                         self.utc_day[rows], self.before_deadline[rows], self.in_window[rows], self.hour_bin[rows])


def grid_batch(grids: list[TimeGrid]) -> GridBatch:
    return GridBatch(grids, np.stack([g.local_hour for g in grids]), np.stack([g.local_day for g in grids]),
                     np.stack([g.utc_day for g in grids]), np.stack([g.before_deadline for g in grids]),
                     np.stack([g.in_window for g in grids]), np.stack([g.hour_bin for g in grids]))


@dataclass
class CountsBatch:
    """Counts of many users: (U, C, WEEK + 1), (U, O), (U, C, 2), each user's suppressions, and (U, K) the hour bins
    of each user's contacts (NO_SEND pads)."""

    channel_day: np.ndarray
    offer_window: np.ndarray
    capacity_used: np.ndarray
    suppressed: list[dict[str, str]]
    sends: np.ndarray

    def take(self, rows: np.ndarray) -> CountsBatch:
        return CountsBatch(self.channel_day[rows], self.offer_window[rows], self.capacity_used[rows],
                           [self.suppressed[r] for r in rows.tolist()], self.sends[rows])

    def one(self, row: int) -> Counts:
        return Counts(self.channel_day[row], self.offer_window[row], self.capacity_used[row], self.suppressed[row],
                      self.sends[row])


def counts_batch(user_counts: list[dict[str, int]], capacity_counts: dict[str, int], config: OperatorConfig,
                 grids: list[TimeGrid], suppressed: list[dict[str, str]]) -> CountsBatch:
    """What `counts_from` gives for each user, reading only the counters a user actually has."""
    n_u, n_o, n_c = len(grids), len(config.offers), len(config.channels)
    channels = {c: j for j, c in enumerate(config.channel_names())}
    offers = {o: i for i, o in enumerate(config.offer_ids())}
    window = config.caps.offer_window_days
    channel_day = np.zeros((n_u, n_c, WEEK + 1), dtype=np.int64)
    offer_window = np.zeros((n_u, n_o), dtype=np.int64)
    capacity_used = np.zeros((n_u, n_c, 2), dtype=np.int64)
    day_slots: dict[date, tuple[dict[str, int], set[str]]] = {}
    capacity: dict[tuple[date, date], np.ndarray] = {}
    sends: list[list[int]] = [[] for _ in range(n_u)]
    for u, (counts, grid) in enumerate(zip(user_counts, grids, strict=True)):
        reach = _reach(config, grid)
        d0 = grid.local_dates[0]
        if d0 not in day_slots:
            day_slots[d0] = ({d.isoformat(): k for k, d in enumerate(_local_days(grid))},
                             {(d0 + timedelta(days=k)).isoformat() for k in range(-window, window + 2)})
        days, offer_days = day_slots[d0]
        for name, n in counts.items():
            kind, _, rest = name.partition(":")
            key, _, day = rest.rpartition(":")
            if kind == "c" and key in channels and day in days:
                channel_day[u, channels[key], days[day]] = n
            elif kind == "o" and key in offers and day in offer_days:
                offer_window[u, offers[key]] += n
            elif kind == "h" and reach[0] <= int(rest) <= reach[1]:
                sends[u] += [int(rest)] * n
        if grid.utc_dates not in capacity:
            capacity[grid.utc_dates] = np.array([[capacity_counts.get(f"{c}:{d}", 0) for d in grid.utc_dates]
                                                 for c in config.channel_names()], dtype=np.int64).reshape(n_c, 2)
        capacity_used[u] = capacity[grid.utc_dates]
    k = max((len(x) for x in sends), default=0)
    padded = np.full((n_u, k), NO_SEND, dtype=np.int64)
    for u, x in enumerate(sends):
        padded[u, :len(x)] = x
    return CountsBatch(channel_day, offer_window, capacity_used, suppressed, padded)


@dataclass
class BatchResult:
    """`evaluate`'s answer for each user: (U, O), (U, C), (U, C, S) and one list of refusals per user."""

    offer_ok: np.ndarray
    channel_ok: np.ndarray
    slot_ok: np.ndarray
    refusals: list[list[Refusal]]

    def one(self, row: int) -> PolicyResult:
        return PolicyResult(self.offer_ok[row], self.channel_ok[row], self.slot_ok[row], self.refusals[row])


def _slot_reason(mask: int) -> tuple[str, str]:
    """The refusal for a channel whose slots the rules in bit mask `mask` removed (as `evaluate` names it)."""
    names = [name for k, name in enumerate(_SLOT_RULES) if mask >> k & 1]
    return names[-1], ", ".join(names[:-1])


def evaluate_many(config: OperatorConfig, rules: UserRules, counts: CountsBatch, grids: GridBatch) -> BatchResult:
    """Apply every contact rule to every user at once; see `evaluate` for the rules and their order."""
    caps = config.caps
    n_u, n_c = rules.channel_code.shape
    offer_code = rules.offer_code.copy()
    offer_code[(offer_code == 0) & (counts.offer_window >= caps.per_offer)] = 4

    day = counts.channel_day[:, :, WEEK - 1:WEEK + 1]  # (U, C, 2)
    week = np.stack([counts.channel_day[:, :, k:k + WEEK].sum(axis=2) for k in (0, 1)], axis=2)
    user_day = day.sum(axis=1)  # (U, 2)
    user_week = week.sum(axis=1)  # (U, 2)
    quiet = np.stack([parse_quiet_hours(ch.quiet_hours) for ch in config.channels])  # (C, 24)
    capacity = np.array([ch.daily_capacity if ch.daily_capacity is not None else np.iinfo(np.int64).max
                         for ch in config.channels], dtype=np.int64)
    shape = (n_u, n_c, grids.local_hour.shape[1])
    local_day = np.broadcast_to(grids.local_day[:, None, :], shape)
    spaced = np.ones((n_u, shape[2]), dtype=bool)
    if caps.spacing_contacts > 0 and counts.sends.size:
        busy = np.flatnonzero((counts.sends != NO_SEND).any(axis=1))  # users with no contact pass
        if len(busy):
            sent = np.repeat(counts.sends[busy], shape[2], axis=0)  # (B * S, K)
            spaced[busy] = spacing_ok(sent, grids.hour_bin[busy].reshape(-1), caps.spacing_contacts,
                                      caps.spacing_hours).reshape(len(busy), shape[2])
    slot_rules = (
        np.broadcast_to(grids.before_deadline[:, None, :], shape),
        np.broadcast_to(grids.in_window[:, None, :], shape),
        ~quiet[:, grids.local_hour].transpose(1, 0, 2),
        np.take_along_axis(day < caps.per_channel_day, local_day, axis=2),
        np.take_along_axis(week < caps.per_channel_week, local_day, axis=2),
        np.broadcast_to(np.take_along_axis(user_day < caps.per_user_day, grids.local_day, axis=1)[:, None, :], shape),
        np.broadcast_to(np.take_along_axis(user_week < caps.per_user_week, grids.local_day, axis=1)[:, None, :], shape),
        np.broadcast_to(spaced[:, None, :], shape),
        np.take_along_axis(counts.capacity_used < capacity[None, :, None], np.broadcast_to(grids.utc_day[:, None, :], shape),
                           axis=2),
    )
    ok = np.ones(shape, dtype=bool)
    blocked = np.zeros((n_u, n_c), dtype=np.int64)
    for k, rule in enumerate(slot_rules):
        blocked |= (ok & ~rule).any(axis=2).astype(np.int64) << k
        ok &= rule
    level_ok = rules.channel_code == 0
    slot_ok = ok & level_ok[:, :, None]
    channel_ok = slot_ok.any(axis=2)

    refusals: list[list[Refusal]] = [[] for _ in range(n_u)]
    made: dict[tuple, Refusal] = {}

    def refusal(*key) -> Refusal:
        r = made.get(key)
        if r is None:
            r = made[key] = Refusal(*key)
        return r

    offers = config.offer_ids()
    for u, o in zip(*(a.tolist() for a in np.nonzero(offer_code)), strict=True):
        code = offer_code[u, o]
        detail = rules.offer_detail[u, o] if code == 3 else \
            f"{counts.offer_window[u, o]} of {caps.per_offer} in {caps.offer_window_days} days" if code == 4 else ""
        refusals[u].append(refusal(_OFFER_RULES[code - 1], offers[o], None, detail))
    channels = config.channel_names()
    for u, c in zip(*(a.tolist() for a in np.nonzero(~channel_ok)), strict=True):
        code = rules.channel_code[u, c]
        if code:
            refusals[u].append(refusal(_CHANNEL_RULES[code - 1], None, channels[c], rules.channel_detail[u, c]))
        else:
            reason, detail = _slot_reason(int(blocked[u, c]))
            refusals[u].append(refusal(reason, None, channels[c], detail))
    return BatchResult(offer_code == 0, channel_ok, slot_ok, refusals)
