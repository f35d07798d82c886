"""The service's clock, and the window around it inside which a caller's timestamps are believed.

The server clock decides: a caller may state when something happened (`now`, an event's `ts`, an
outcome's `at`), but a time far from the clock is a caller's mistake (or an attack on the caps, which
are charged per day), so it is refused with a message before anything is read or written.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

__all__ = ["system_clock", "TimeWindow", "SCHEDULE_HORIZON"]

# How far ahead a campaign may place `not_before` / `deadline`: a decision plans the next 24 hours,
# so a month is generous and still keeps every date far from datetime's limits.
SCHEDULE_HORIZON = timedelta(days=31)


def system_clock() -> datetime:
    """Now, in UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class TimeWindow:
    """Caller times from `behind` before the clock to `ahead` after it are believed."""

    behind: timedelta
    ahead: timedelta

    def check(self, name: str, value: datetime | None, clock: datetime) -> datetime:
        """`value` in UTC (the clock when absent); ValueError naming the field and the window when outside it."""
        if value is None:
            return clock
        # Aware datetimes compare without conversion, so year 1 or 9999 with any offset cannot overflow here.
        if clock - self.behind <= value <= clock + self.ahead:
            return value.astimezone(UTC)
        raise ValueError(
            f"{name} {value.isoformat()} is outside the accepted window: at most {_span(self.behind)} before and "
            f"{_span(self.ahead)} after the server clock ({clock:%Y-%m-%dT%H:%M:%SZ}); leave it out to use the server clock")


def _span(d: timedelta) -> str:
    s = int(d.total_seconds())
    for unit, n in (("day", 86_400), ("hour", 3_600), ("minute", 60)):
        if s >= n and s % n == 0:
            return f"{s // n} {unit}{'s' if s // n != 1 else ''}"
    return f"{s} seconds"
