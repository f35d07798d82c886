"""The campaign endpoints' bodies and handlers (serving/service.py routes them); errors become the runtime's
caller errors, so the service answers 400/404/409 with a message, never a 5xx."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from nextbest.campaigns import lifecycle
from nextbest.campaigns.execution import (
    ExecutionError,
    dry_run,
    evaluate_experiments,
    execute,
    required_per_arm,
    trigger_contexts,
)
from nextbest.campaigns.model import CampaignSpec
from nextbest.campaigns.segments import SegmentError
from nextbest.campaigns.store import CampaignStore, NotFound

__all__ = ["CampaignCreate", "CampaignEdit", "CampaignRef", "CampaignCommand", "CampaignRun", "CampaignApi", "TriggerCampaigns",
           "describe", "show", "check_references"]

Actor = Field(min_length=1, max_length=128, description="who asks (recorded with every change and approval)")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class CampaignCreate(_In):
    spec: CampaignSpec
    actor: str = Actor
    campaign_id: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class CampaignEdit(_In):
    campaign_id: str = Field(min_length=1, max_length=64)
    spec: CampaignSpec
    actor: str = Actor


class CampaignRef(_In):
    campaign_id: str = Field(min_length=1, max_length=64)


class CampaignCommand(_In):
    campaign_id: str = Field(min_length=1, max_length=64)
    command: Literal["submit", "approve", "reject", "start", "pause", "resume", "stop"]
    actor: str = Actor
    note: str | None = Field(None, max_length=500)


def describe(campaign) -> dict:
    """A campaign as JSON, with the sample each copy experiment needs per variant (shown before the start)."""
    doc = json.loads(campaign.model_dump_json())
    doc["experiment_sample"] = {o.offer_id: {"variants": len(o.variants),
                                             "users_per_variant": required_per_arm(campaign, o.offer_id)}
                                for o in campaign.spec.offers if len(o.variants) > 1}
    return doc


def show(store: CampaignStore, campaign_id: str) -> dict:
    """A campaign with its history (who did what) and its run's progress (the audience as a count)."""
    state = store.run_state(campaign_id)
    progress = None if state is None else {**{k: v for k, v in state.items() if k != "audience"},
                                           "audience": len(state["audience"])}
    return {**describe(store.get(campaign_id)), "history": store.events(campaign_id), "run": progress}


def check_references(spec: CampaignSpec, store: CampaignStore, config) -> None:
    """The audience segment is saved; offers, channels and the trigger are in the operator config."""
    if spec.audience is not None:
        store.segment(spec.audience)
    for kind, asked, known in (("offer", [o.offer_id for o in spec.offers], config.offer_ids()),
                               ("channel", spec.channels or [], config.channel_names()),
                               ("trigger", [spec.trigger] if spec.trigger else [], [t.name for t in config.triggers])):
        unknown = sorted(set(asked) - set(known))
        if unknown:
            raise ExecutionError(f"unknown {kind}(s) {unknown} in the campaign; the operator config has: "
                                 f"{', '.join(known) or 'none'}")


class CampaignRun(_In):
    campaign_id: str = Field(min_length=1, max_length=64)
    batch: int = Field(500, ge=1, le=1000, description="users per decision batch")
    max_batches: int = Field(10, ge=1, le=20, description="batches in this request at most (call again to go on)")


class CampaignApi:
    """Handlers over one store; `errors` maps (not found, conflict, bad input) to the caller's exception types."""

    def __init__(self, store: CampaignStore, runtime, errors: tuple[type, type, type]):
        self.store, self.runtime = store, runtime
        self._not_found, self._conflict, self._bad = errors

    def _call(self, fn: Callable[[], object]) -> object:
        try:
            return fn()
        except NotFound as err:
            raise self._not_found(str(err)) from None
        except lifecycle.TransitionError as err:
            raise self._conflict(str(err)) from None
        except (SegmentError, ExecutionError) as err:
            raise self._bad(str(err)) from None

    def _check(self, spec: CampaignSpec) -> None:
        check_references(spec, self.store, self.runtime.config.current(0))

    def create(self, req: CampaignCreate) -> dict:
        def run():
            self._check(req.spec)
            return describe(self.store.create(req.spec, req.actor, req.campaign_id))
        return self._call(run)

    def edit(self, req: CampaignEdit) -> dict:
        def run():
            self._check(req.spec)
            return describe(self.store.edit(req.campaign_id, req.spec, req.actor))
        return self._call(run)

    def show(self, req: CampaignRef) -> dict:
        return self._call(lambda: show(self.store, req.campaign_id))

    def command(self, req: CampaignCommand) -> dict:
        return self._call(lambda: describe(self.store.command(req.campaign_id, req.command, req.actor, req.note)))

    def dry_run(self, req: CampaignRef) -> dict:
        return self._call(lambda: dry_run(self.runtime.settings, self.store, req.campaign_id, self.runtime))

    def run(self, req: CampaignRun) -> dict:
        return self._call(lambda: execute(self.runtime.settings, self.store, req.campaign_id, self.runtime, req.batch,
                                          req.max_batches))

    def experiment(self, req: CampaignRef) -> list[dict]:
        return self._call(lambda: evaluate_experiments(self.runtime.settings, self.store, req.campaign_id)[1])


class TriggerCampaigns:
    """The service's `/events` asks which campaign each trigger belongs to (serving/runtime.py TriggerOwners): a
    trigger a campaign names sends only while that campaign is running on its approved version with room left under
    its limits, in its context; its contacts are recorded with the campaign within its `max_sends` and `budget`, and
    a decision that no longer fits (or whose campaign stopped meanwhile) is given back: its charges released with
    `not_sent`, its answer without the action (`answer`)."""

    def __init__(self, store: CampaignStore, runtime):
        self.store, self.runtime = store, runtime

    def contexts(self, now):
        config = self.runtime.config.current(time.monotonic())
        return trigger_contexts(self.store, now, {c.channel: c.cost for c in config.channels})

    def record(self, decisions: list[dict], campaign_ids: list[str | None], config) -> None:
        from nextbest.serving.schemas import FeedbackRequest

        costs = {c.channel: c.cost for c in config.channels}
        owned = {c.id for c in self.store.trigger_campaigns()}
        by: dict[str, list[tuple[str, list[tuple]]]] = {}
        for d, cid in zip(decisions, campaign_ids, strict=True):
            if cid in owned and d["actions"] and not d.get("replayed"):
                by.setdefault(cid, []).append((d["decision_id"], [
                    (d["decision_id"], d["user_id"], a["offer_id"], a["channel"], a["variant"], a["variant_probability"],
                     a["send_at"], costs.get(a["channel"], 0.0)) for a in d["actions"]]))
        actions = {d["decision_id"]: d["actions"] for d in decisions}
        for cid, decided in by.items():
            for decision_id in self.store.record_triggered(cid, decided):
                for a in actions[decision_id]:  # charged when decided: released, so no cap keeps counting it
                    self.runtime.feedback(FeedbackRequest(decision_id=decision_id, outcome="not_sent",
                                                          offer_id=a["offer_id"], channel=a["channel"]))

    def answer(self, triggered: list[dict]) -> list[dict]:
        """The triggered decisions as the caller may act on them: one a campaign gave back (now or when this event
        was first decided) has no action and says why (`campaign_limit`)."""
        back = self.store.given_back([d["decision_id"] for d in triggered if d["actions"]])
        return [{**d, "actions": [], "filtered": [*d["filtered"], {"reason": "campaign_limit", "offer_id": None,
                                                                   "channel": None, "detail": back[d["decision_id"]]}]}
                if d["decision_id"] in back else d for d in triggered]
