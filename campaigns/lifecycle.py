"""The approval state machine, as a pure function: (campaign, command, actor) -> the campaign after it.

draft -> submitted -> approved -> running <-> paused -> finished; submitted -> rejected -> (edit) -> draft.
Whoever approves must not be whoever submitted (four eyes, unless switched off). An edit of a submitted,
approved, running or paused campaign takes it back to `submitted` and clears the approval: a changed campaign
never sends on an old approval. Only `running` sends (`may_send`).
"""

from __future__ import annotations

from datetime import datetime

from nextbest.campaigns.model import Campaign, CampaignSpec

__all__ = ["COMMANDS", "TransitionError", "apply", "edit", "may_send"]

# command -> (states it is allowed from, state after)
COMMANDS: dict[str, tuple[tuple[str, ...], str]] = {
    "submit": (("draft", "rejected"), "submitted"),
    "approve": (("submitted",), "approved"),
    "reject": (("submitted",), "rejected"),
    "start": (("approved",), "running"),
    "pause": (("running",), "paused"),
    "resume": (("paused",), "running"),
    "stop": (("approved", "running", "paused"), "finished"),
    "finish": (("running",), "finished"),  # the executor: the audience is done
}


class TransitionError(ValueError):
    """A command the campaign's state (or the actor) does not allow; the message names the fix."""


def apply(campaign: Campaign, command: str, actor: str, now: datetime, four_eyes: bool = True) -> Campaign:
    """The campaign after `command` by `actor`; raises TransitionError when not allowed."""
    if command not in COMMANDS:
        raise TransitionError(f"unknown command {command!r}; one of {', '.join(COMMANDS)}")
    if not actor or not actor.strip():
        raise TransitionError("say who you are (--actor / `actor`): approvals and changes are recorded by name")
    allowed, after = COMMANDS[command]
    if campaign.state not in allowed:
        raise TransitionError(f"campaign {campaign.id} is {campaign.state}; `{command}` needs it {' or '.join(allowed)}")
    changes: dict = {"state": after, "updated_at": now}
    if command == "submit":
        changes.update(submitted_by=actor, approved_by=None, approved_version=None)
    elif command == "approve":
        if four_eyes and actor == campaign.submitted_by:
            raise TransitionError(f"{actor} submitted campaign {campaign.id}; another person must approve it (four eyes)")
        changes.update(approved_by=actor, approved_version=campaign.version)
    elif command == "reject":
        changes.update(approved_by=None, approved_version=None)
    return campaign.model_copy(update=changes)


def edit(campaign: Campaign, spec: CampaignSpec, actor: str, now: datetime) -> Campaign:
    """The campaign with a new spec (a new version). A draft or rejected campaign stays what it is; any other
    goes back to `submitted` by `actor`, and needs a new approval. A finished campaign cannot change."""
    if campaign.state == "finished":
        raise TransitionError(f"campaign {campaign.id} is finished; create a new campaign instead")
    if not actor or not actor.strip():
        raise TransitionError("say who you are (--actor / `actor`): changes are recorded by name")
    if spec == campaign.spec:
        return campaign
    state = "draft" if campaign.state in ("draft", "rejected") else "submitted"
    return campaign.model_copy(update=dict(
        spec=spec, version=campaign.version + 1, state=state, updated_at=now, approved_by=None, approved_version=None,
        submitted_by=actor if state == "submitted" else None, winners={}))


def may_send(campaign: Campaign) -> bool:
    """Whether the campaign may contact anyone now: running, on the version that was approved."""
    return campaign.state == "running" and campaign.approved_by is not None and \
        campaign.approved_version == campaign.version
