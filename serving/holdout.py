"""Hold-outs (control groups): which users a decision leaves uncontacted on purpose, stable per user.

One rule, used by the decision service (universal and per-campaign hold-outs) and by campaigns: a user is
held out when a keyed hash of (salt, scope, period, user id) falls below the hold-out's share. The hash, not a
random draw, keeps a user in (or out of) the hold-out for the whole period, on every worker and replica, without
storing anything; a new period or a new salt reshuffles who is held out. Scopes are independent: being in a
campaign's hold-out says nothing about the universal one.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

__all__ = ["UNIVERSAL", "holdout_draw", "period_of", "in_holdout", "control_of", "with_campaign_shares", "share_not_held_out"]

UNIVERSAL = "universal"  # the scope of the hold-out kept out of every campaign
_SCALE = float(1 << 64)


def holdout_draw(user_id: str, salt: str, scope: str, period: int) -> float:
    """A number in [0, 1) fixed by (salt, scope, period, user id) and spread uniformly over users."""
    digest = hashlib.sha256(f"{salt}\x1f{scope}\x1f{period}\x1f{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def period_of(now: datetime, period_days: int) -> int:
    """The hold-out period `now` falls in: whole `period_days` blocks since 1970-01-01 UTC."""
    days = (now.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)).days
    return days // period_days


def in_holdout(user_id: str, share: float, salt: str, scope: str, period: int) -> bool:
    """True when `user_id` is in the `share` of users held out of `scope` during `period`."""
    return share > 0 and holdout_draw(user_id, salt, scope, period) < share


def with_campaign_shares(holdout, shares: dict[str, float]):
    """The operator config's `Holdout` with campaigns' own control shares (campaign id -> share) added: a campaign
    holds out the larger of its own share and the operator's share for it. The same object when nothing changes."""
    merged = dict(holdout.campaigns)
    for campaign_id, share in shares.items():
        if share > merged.get(campaign_id, 0.0):
            merged[campaign_id] = share
    return holdout if merged == holdout.campaigns else holdout.model_copy(update={"campaigns": merged})


def control_of(user_id: str, campaign_id: str | None, holdout, now: datetime) -> tuple[str, float] | None:
    """The hold-out a decision for `user_id` falls in, as (scope, share), or None.

    `holdout` is the operator config's `Holdout` (share, per-campaign shares, salt, period_days). The universal
    hold-out is checked first: its users are kept out of every campaign, so a campaign's own control group is drawn
    from the others. The share is the probability with which this policy chose "no contact" for the user (its
    logged propensity).
    """
    period = period_of(now, holdout.period_days)
    if in_holdout(user_id, holdout.share, holdout.salt, UNIVERSAL, period):
        return UNIVERSAL, holdout.share
    share = holdout.campaigns.get(campaign_id, 0.0) if campaign_id else 0.0
    scope = f"campaign:{campaign_id}"
    if in_holdout(user_id, share, holdout.salt, scope, period):
        return scope, share
    return None


def share_not_held_out(campaign_id: str | None, holdout) -> float:
    """P(a decision for this campaign is not held out): the universal hold-out, then the campaign's among the rest
    (`control_of`'s order). An action's logged propensity is this times the probability the policy picked it, so the
    hold-out and the policy together sum to one over what may happen (as the replay logs its sends)."""
    share = holdout.campaigns.get(campaign_id, 0.0) if campaign_id else 0.0
    return (1.0 - holdout.share) * (1.0 - share)
