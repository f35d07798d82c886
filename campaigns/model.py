"""What a campaign is: the marketer's definition (validated pydantic models) and its state."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from nextbest.serving.schemas import SendHours

__all__ = ["STATES", "Variant", "CampaignOffer", "Experiment", "Caps", "CampaignSpec", "Campaign"]

# draft -> submitted -> approved -> running -> paused / finished (see campaigns/lifecycle.py)
STATES = ("draft", "submitted", "approved", "rejected", "running", "paused", "finished")
Name = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class Variant(_Strict):
    """One copy of an offer: what the message says."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="variant id, e.g. A, B, short_subject")
    text: str = Field("", max_length=2000, description="the copy (subject, title or body) as the channel sends it")


class CampaignOffer(_Strict):
    offer_id: str = Field(min_length=1, max_length=128, description="an offer of the operator config")
    variants: list[Variant] = Field(default_factory=lambda: [Variant(id="A")], min_length=1, max_length=10,
                                    description="copy variants; two or more make an experiment")

    @model_validator(mode="after")
    def _unique(self) -> CampaignOffer:
        ids = [v.id for v in self.variants]
        if len(set(ids)) != len(ids):
            raise ValueError(f"offer {self.offer_id}: variant ids must be unique, got {ids}")
        return self


class Experiment(_Strict):
    """How copy variants share the audience and when a winner is declared."""

    mode: Literal["fixed", "bandit"] = Field("fixed", description="fixed: an even split over the variants for "
                                             "`test_share` of the audience, then the winner; bandit: Thompson "
                                             "sampling with a floor per variant")
    metric: Literal["opened", "clicked", "converted"] = Field("clicked", description="the outcome compared")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="false-winner rate the sequential rule allows")
    power: float = Field(0.95, gt=0.5, lt=1, description="power at the minimum detectable effect (for the sample "
                         "size shown before the start): the share of runs in which the true best copy wins when "
                         "its lift is the MDE")
    mde: float = Field(0.2, gt=0, le=10, description="minimum detectable effect, relative (0.2 = +20 %)")
    baseline: float = Field(0.05, gt=0, lt=1, description="expected rate of the metric for the control copy")
    test_share: float = Field(0.2, gt=0, le=1, description="fixed mode: share of the audience in the test")
    floor: float = Field(0.05, ge=0, lt=0.5, description="bandit mode: least probability per variant")
    outcome_hours: int = Field(72, ge=1, le=720, description="how long after a send its outcome is awaited: the "
                               "fixed test's 'no copy better at the announced sample' counts only sends this old")


class Caps(_Strict):
    max_sends: int | None = Field(None, ge=1, description="at most this many contacts in total")
    budget: float | None = Field(None, gt=0, description="at most this much channel cost in total")


class CampaignSpec(_Strict):
    """What a marketer writes (YAML or JSON); everything that needs approval."""

    name: str = Field(min_length=1, max_length=200)
    audience: str | None = Field(None, description="a saved segment (audience campaigns)")
    trigger: str | None = Field(None, max_length=64, description="an event trigger of the operator config "
                                "(trigger campaigns), instead of an audience")
    offers: list[CampaignOffer] = Field(min_length=1, max_length=50)
    channels: list[str] | None = Field(None, min_length=1, max_length=20, description="allowed channels (default: all)")
    start: AwareDatetime | None = Field(None, description="send no earlier than this")
    end: AwareDatetime | None = Field(None, description="send no later than this")
    send_window_hours: int = Field(24, ge=1, le=168, description="each batch's sends are scheduled within this many "
                                   "hours after it runs (inside quiet hours and caps)")
    send_hours: SendHours | None = Field(None, description="local hours of the day the campaign sends in, in each "
                                         "user's timezone, e.g. '9-20' (09:00 up to 20:00); default: any hour the "
                                         "channels' quiet hours allow")
    caps: Caps = Field(default_factory=Caps)
    priority: int = Field(0, ge=-100, le=100, description="higher runs first when campaigns compete for users")
    control_pct: float = Field(0.0, ge=0, le=50, description="per-campaign control hold-out, percent of the audience")
    experiment: Experiment = Field(default_factory=Experiment)

    @model_validator(mode="after")
    def _target(self) -> CampaignSpec:
        if (self.audience is None) == (self.trigger is None):
            raise ValueError("give exactly one of `audience` (a segment) or `trigger` (an event trigger)")
        if self.start and self.end and self.end <= self.start:
            raise ValueError("`end` must be later than `start`")
        ids = [o.offer_id for o in self.offers]
        if len(set(ids)) != len(ids):
            raise ValueError(f"each offer once: {ids}")
        return self


class Campaign(BaseModel):
    """A stored campaign: its spec at `version`, its state and who did what."""

    model_config = ConfigDict(frozen=True)

    id: str
    version: int
    state: str
    spec: CampaignSpec
    created_by: str
    submitted_by: str | None = None
    approved_by: str | None = None
    approved_version: int | None = None
    updated_at: datetime
    winners: dict[str, str] = Field(default_factory=dict, description="offer -> winning variant, once recorded")
