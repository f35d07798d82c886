"""HTTP request and response models of the decision service.

Requests are strict: unknown fields are rejected, and values are not coerced (`"dry_run": "yes"` or
`0`, `"n_actions": "2"`, `"now": 0` and non-finite numbers are 400s, not guesses).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    model_validator,
)

__all__ = [
    "MAX_BATCH",
    "SendHours",
    "CampaignContext",
    "DecideRequest",
    "BatchDecideRequest",
    "Action",
    "Filtered",
    "Decision",
    "BatchDecision",
    "Event",
    "EventsRequest",
    "EventsResponse",
    "FeedbackRequest",
    "FeedbackResponse",
    "ProfileRequest",
    "Profile",
    "ReloadResponse",
]

MAX_BATCH = 1000
UserId = Field(min_length=1, max_length=128, description="the user's id in the company's data")


def _text_time(value: object) -> object:
    # Lax pydantic reads a number as seconds since 1970 (`"now": 0` would decide in 1970): only text or a datetime.
    if isinstance(value, bool | int | float):
        raise ValueError("give a time as ISO-8601 text with an offset, e.g. 2026-11-23T09:30:00Z, not a number")
    return value


Time = Annotated[AwareDatetime, BeforeValidator(_text_time)]


def _hours(value: str) -> str:
    start, end = (int(h) for h in value.split("-"))
    if start == end % 24:
        raise ValueError(f"send_hours {value!r} is empty or the whole day: give 'from-to' local hours with from != to, "
                         "e.g. '9-20', or leave it out for any hour")
    return value


# Local hours "from-to" (to not included; "18-2" wraps midnight), read by serving/config.py parse_quiet_hours.
SendHours = Annotated[str, Field(pattern=r"^([01]?[0-9]|2[0-3])-([01]?[0-9]|2[0-4])$"), AfterValidator(_hours)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class CampaignContext(_In):
    """What the calling campaign allows."""

    campaign_id: str | None = Field(None, max_length=128, description="the caller's campaign, copied to the logs")
    offers: list[str] | None = Field(None, min_length=1, max_length=200, description="offers this campaign may send (default: all)")
    channels: list[str] | None = Field(None, min_length=1, max_length=20, description="channels it may use (default: all)")
    deadline: Time | None = Field(None, description="send no later than this (ISO-8601 with offset)")
    not_before: Time | None = Field(None, description="send no earlier than this (ISO-8601 with offset)")
    trigger: str | None = Field(None, max_length=64, description="name of the event trigger that asked, if any")
    send_hours: SendHours | None = Field(None, description="local hours the campaign may send in, in each user's timezone, e.g. "
                                   "'9-20' (09:00 up to 20:00) or '18-2'; default: any hour")
    variants: dict[str, dict[str, float]] | None = Field(
        None, description="copy variants per offer with the probability each is sent with (a copy experiment's "
        "allocation), e.g. {\"o1\": {\"A\": 0.5, \"B\": 0.5}}; the variant drawn for an action and its probability "
        "are answered and logged with it")

    @model_validator(mode="after")
    def _shares(self) -> CampaignContext:
        for offer, shares in (self.variants or {}).items():
            if not 1 <= len(shares) <= 10 or any(not 0 < len(v) <= 64 for v in shares):
                raise ValueError(f"variants[{offer}]: 1 to 10 variant ids of 1-64 characters")
            if any(not 0.0 <= p <= 1.0 for p in shares.values()) or abs(sum(shares.values()) - 1.0) > 1e-6:
                raise ValueError(f"variants[{offer}]: probabilities must lie in [0, 1] and add up to 1, got "
                                 f"{list(shares.values())}")
        return self


class DecideRequest(_In):
    """Decide for one user."""

    user_id: str = UserId
    now: Time | None = Field(None, description="decision time (ISO-8601 with offset); default: the server clock")
    context: CampaignContext = Field(default_factory=CampaignContext, description="campaign limits")
    n_actions: StrictInt = Field(1, ge=1, le=5, description="how many actions at most (each must pass the caps together)")
    idempotency_key: str | None = Field(None, min_length=1, max_length=128,
                                        description="replaying a key returns the first decision and charges the caps once")
    dry_run: StrictBool = Field(False, description="decide but charge nothing and log nothing")
    explain: StrictBool = Field(False, description="include the scores of every candidate")


class BatchDecideRequest(_In):
    """Decide for up to 1,000 users with one campaign context."""

    user_ids: list[str] = Field(min_length=1, max_length=MAX_BATCH, description="users to decide for (at most 1,000)")
    now: Time | None = Field(None, description="decision time; default: the server clock")
    context: CampaignContext = Field(default_factory=CampaignContext)
    n_actions: StrictInt = Field(1, ge=1, le=5)
    idempotency_key: str | None = Field(None, min_length=1, max_length=100,
                                        description="batch key; each user's decision is keyed `<key>:<user_id>`")
    dry_run: StrictBool = False
    explain: StrictBool = False


class Action(BaseModel):
    """One contact to make."""

    offer_id: str
    channel: str
    send_at: datetime = Field(description="when to send, ISO-8601 in the user's local UTC offset")
    expected_value: float = Field(description="EV of this action in currency units (value x effect - cost)")
    p_convert: float = Field(description="P(convert within 7 days | this offer, channel, hour)")
    uplift: float | None = Field(description="P(convert | contacted) - P(convert | not), when an uplift model is loaded")
    score: float = Field(description="the ranking score (EV with operator levers and churn boost)")
    propensity: float = Field(description="probability the policy picked this action (for off-policy evaluation)")
    explored: bool = Field(description="picked by exploration rather than as the best guess")
    variant: str | None = Field(None, description="the copy variant drawn for this action (context.variants)")
    variant_probability: float | None = Field(None, description="probability the variant was drawn with (its "
                                              "allocation in the copy experiment), for unbiased estimates")


class Filtered(BaseModel):
    """A candidate the contact policy removed."""

    offer_id: str | None = Field(description="the offer, when the rule concerns an offer")
    channel: str | None = Field(description="the channel, when the rule concerns a channel")
    reason: str = Field(description="reason code: consent, suppressed, cap_*, quiet_hours, deadline, eligibility, capacity, ...")
    detail: str = Field("", description="e.g. the suppression reason or the failed eligibility clause")


class Decision(BaseModel):
    """The answer for one user."""

    decision_id: str
    user_id: str
    actions: list[Action] = Field(description="empty means: no action (nothing has positive value or nothing is allowed)")
    no_action_propensity: float | None = Field(None, description="probability of no contact, whatever was chosen: "
                                               "P(held out) + P(not held out) x P(the policy, exploration included, "
                                               "picks no action)")
    holdout: str | None = Field(None, description="the hold-out this user is in ('universal' or 'campaign:<id>'): no contact, "
                                "logged as a control decision")
    holdout_share: float | None = Field(None, description="the share held out by that hold-out (the control row's "
                                        "probability of being in the control group, which uplift training uses)")
    holdout_propensity: float | None = Field(None, description="P(this decision is held out), every hold-out scope "
                                             "together: 1 - P(not held out), the factor in each action's propensity")
    filtered: list[Filtered]
    model_versions: dict[str, str] = Field(description="model kind -> registered name/version used")
    degraded: bool = Field(description="true when a fallback was used (see degraded_reasons)")
    degraded_reasons: list[str]
    replayed: bool = Field(False, description="true when this is the stored answer for a repeated idempotency key")
    dry_run: bool = False
    explanation: dict | None = Field(None, description="every candidate with its scores, when explain was asked")


class BatchDecision(BaseModel):
    decisions: list[Decision]


class Event(_In):
    """One behaviour event."""

    user_id: str = UserId
    type: str = Field(min_length=1, max_length=64, description="register, app_open, view, search, add_to_cart, purchase, ...")
    ts: Time | None = Field(None, description="when it happened (ISO-8601 with offset); default: now")
    product_id: str | None = Field(None, max_length=128)
    category: str | None = Field(None, max_length=128)
    amount: StrictFloat | None = Field(None, ge=0, le=1e9)


class EventsRequest(_In):
    events: list[Event] = Field(min_length=1, max_length=MAX_BATCH)


class EventsResponse(BaseModel):
    accepted: int = Field(description="events pushed to the online store")
    triggered: list[Decision] = Field(description="decisions made by event triggers, send_at inside the trigger's window")
    cancelled: list[str] = Field(description="decision ids of waiting triggers cancelled by these events (e.g. a purchase)")
    degraded: bool = Field(description="true when the online store could not be updated")


Outcome = Literal["sent", "delivered", "opened", "clicked", "converted", "unsubscribed", "complained", "not_sent"]


class FeedbackRequest(_In):
    """What happened to a decision's action."""

    decision_id: str = Field(min_length=1, max_length=64)
    outcome: Outcome = Field(description="not_sent gives the caps charge back")
    offer_id: str | None = Field(None, description="which action of the decision (default: the first)")
    channel: str | None = None
    at: Time | None = Field(None, description="when it happened; default: now")
    revenue: StrictFloat | None = Field(None, ge=0, le=1e9, description="for converted")


class FeedbackResponse(BaseModel):
    recorded: bool = Field(description="false when this outcome was already reported (reports are idempotent)")
    suppressed: str | None = Field(None, description="channel now suppressed for the user, after a complaint or unsubscribe")
    released: bool = Field(False, description="true when not_sent gave the caps charge back")


class ProfileRequest(_In):
    user_id: str = UserId
    now: Time | None = Field(None, description="as of when to count contacts; default: the server clock")


class Profile(BaseModel):
    """A user's 360-degree view."""

    user_id: str
    features: dict[str, object] = Field(description="every online feature of the decision FeatureService")
    tags: dict[str, object] = Field(description="segment, lifecycle stage, value tier, cluster, scorecard")
    scores: dict[str, float] = Field(description="churn risk and the best P(convert) per channel from the models in force")
    contacts: dict[str, dict[str, int]] = Field(description="channel -> contacts today and over 7 local days")
    suppressions: dict[str, str] = Field(description="channel (or *) -> reason")
    degraded: bool


class ReloadResponse(BaseModel):
    offers: int
    channels: int
    error: str | None = Field(description="why the file was rejected (the last good config stays in force)")
    model_versions: dict[str, str]
