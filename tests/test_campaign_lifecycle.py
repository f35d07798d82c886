"""The approval state machine on the real SQLite store: four eyes, edits need a new approval, and nothing can send
(nor record a sending batch) unless the version that runs is the version someone other than its submitter approved."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nextbest.campaigns import lifecycle
from nextbest.campaigns.lifecycle import TransitionError
from nextbest.campaigns.model import CampaignOffer, CampaignSpec, Variant
from nextbest.campaigns.store import CampaignStore


def spec(name: str = "winter", offers: int = 1) -> CampaignSpec:
    return CampaignSpec(name=name, audience="everyone", offers=[
        CampaignOffer(offer_id=f"o{k}", variants=[Variant(id="A"), Variant(id="B")]) for k in range(offers)])


def test_the_happy_path_records_who_did_what(tmp_path):
    store = CampaignStore(tmp_path / "c.db")
    c = store.create(spec(), "ann")
    assert c.state == "draft" and not lifecycle.may_send(c)
    store.command(c.id, "submit", "ann")
    with pytest.raises(TransitionError, match="another person must approve"):
        store.command(c.id, "approve", "ann")
    c = store.command(c.id, "approve", "bob")
    assert (c.approved_by, c.approved_version, c.submitted_by) == ("bob", 1, "ann")
    assert not lifecycle.may_send(c)  # approved is not yet running
    c = store.command(c.id, "start", "ann")
    assert lifecycle.may_send(c)
    c = store.command(c.id, "pause", "ann")
    assert not lifecycle.may_send(c)
    c = store.command(store.command(c.id, "resume", "ann").id, "stop", "bob")
    assert c.state == "finished"
    with pytest.raises(TransitionError, match="finished"):
        store.edit(c.id, spec("other"), "ann")
    assert [e["command"] for e in store.events(c.id)] == ["create", "submit", "approve", "start", "pause", "resume", "stop"]
    assert [e["actor"] for e in store.events(c.id)][2] == "bob"


def test_an_edit_of_an_approved_or_running_campaign_needs_a_new_approval(tmp_path):
    store = CampaignStore(tmp_path / "c.db")
    c = store.create(spec(), "ann")
    for cmd, who in (("submit", "ann"), ("approve", "bob"), ("start", "bob")):
        c = store.command(c.id, cmd, who)
    c = store.edit(c.id, spec("winter, bigger"), "carl")
    assert (c.state, c.version, c.approved_by, c.submitted_by) == ("submitted", 2, None, "carl")
    assert not lifecycle.may_send(c)
    with pytest.raises(TransitionError, match="another person"):
        store.command(c.id, "approve", "carl")
    assert store.command(c.id, "approve", "ann").approved_version == 2
    assert store.versions(c.id) == [1, 2]
    assert store.edit(c.id, spec("winter, bigger"), "dan").version == 2  # an edit that changes nothing is no edit


def test_four_eyes_can_be_switched_off_for_a_team_of_one(tmp_path):
    store = CampaignStore(tmp_path / "c.db", four_eyes=False)
    c = store.create(spec(), "ann")
    store.command(c.id, "submit", "ann")
    assert store.command(c.id, "approve", "ann").approved_by == "ann"


def test_commands_need_an_actor_and_the_right_state(tmp_path):
    store = CampaignStore(tmp_path / "c.db")
    c = store.create(spec(), "ann")
    with pytest.raises(TransitionError, match="needs it approved"):
        store.command(c.id, "start", "ann")
    with pytest.raises(TransitionError, match="say who you are"):
        store.command(c.id, "submit", " ")
    assert store.get(c.id).state == "draft"


COMMANDS = sorted(lifecycle.COMMANDS)
STEP = st.one_of(st.tuples(st.sampled_from(COMMANDS), st.sampled_from(["ann", "bob", "carl"])),
                 st.tuples(st.just("edit"), st.sampled_from(["ann", "bob"])),
                 st.tuples(st.just("send"), st.just("executor")))


APPROVED_EDITED_REAPPROVED = [("submit", "ann"), ("approve", "bob"), ("start", "bob"), ("send", "executor"),
                              ("edit", "ann"), ("send", "executor"), ("approve", "ann"), ("approve", "bob"),
                              ("start", "ann"), ("send", "executor")]


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory) -> CampaignStore:
    return CampaignStore(tmp_path_factory.mktemp("sm") / "c.db")


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(STEP, min_size=1, max_size=14))
@example(APPROVED_EDITED_REAPPROVED)
def test_nothing_sends_unless_the_running_version_was_approved_by_someone_else(shared_store, steps):
    store = shared_store  # one file, a new campaign per example
    c = store.create(spec(), "ann")
    store.start_run(c.id, c.version, ["u1", "u2"])
    edits = 0
    for k, (command, actor) in enumerate(steps):
        before = store.get(c.id)
        if command == "edit":
            edits += 1
            try:
                store.edit(c.id, spec(f"v{edits}"), actor)
            except TransitionError:
                assert before.state == "finished"
        elif command == "send":  # what the executor does after each batch: refused unless sendable
            try:
                store.advance(c.id, before.version, 1, [(f"d{k}", "u1", "o0", "email", "A", 0.5, "t", 1.0)], 0)
                sent = True
            except TransitionError:
                sent = False
            assert sent == lifecycle.may_send(before)
        else:
            try:
                store.command(c.id, command, actor)
            except TransitionError:
                assert store.get(c.id) == before  # a refused command changes nothing
        now = store.get(c.id)
        if lifecycle.may_send(now):
            history = store.events(c.id)
            submit = [e for e in history if e["command"] in ("submit", "edit") and e["to"] == "submitted"][-1]
            approve = [e for e in history if e["command"] == "approve"][-1]
            assert approve["version"] == now.version and approve["actor"] != submit["actor"]
            assert all(e["command"] != "edit" for e in history[history.index(approve):])
    approved = {e["version"] for e in store.events(c.id) if e["command"] == "approve"}
    assert not store.sends(c.id) or approved  # every recorded send happened under an approval
    if steps == APPROVED_EDITED_REAPPROVED:
        assert len(store.sends(c.id)) == 2  # sent before the edit and after the new approval, not in between


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(STEP, min_size=1, max_size=14), st.sampled_from([None, 1, 3]))
@example(APPROVED_EDITED_REAPPROVED, 3)
def test_a_trigger_campaign_sends_only_on_its_approved_running_version_and_within_its_limit(shared_store, steps,
                                                                                            max_sends):
    """The same random command sequences on a trigger campaign: its trigger has a context exactly while the running
    version is the approved one (with room under `max_sends`), and a decided contact is recorded only then; a
    decision recorded for a paused, edited or full campaign is given back."""
    from datetime import UTC, datetime

    from nextbest.campaigns.execution import trigger_contexts
    from nextbest.campaigns.model import Caps

    store = shared_store
    trigger = f"cart-{uuid.uuid4().hex[:8]}"  # its own trigger: other examples' campaigns do not compete for it
    trigger_spec = spec().model_copy(update={"audience": None, "trigger": trigger, "caps": Caps(max_sends=max_sends)})
    c = store.create(trigger_spec, "ann")
    now = datetime.now(UTC)
    for k, (command, actor) in enumerate(steps):
        before = store.get(c.id)
        if command == "edit":
            try:
                store.edit(c.id, trigger_spec.model_copy(update={"name": f"v{k}"}), actor)
            except TransitionError:
                assert before.state == "finished"
        elif command == "send":
            n = store.totals(c.id)[0]
            room = max_sends is None or n < max_sends
            context = trigger_contexts(store, now)[trigger]
            assert (context is not None) == (lifecycle.may_send(before) and room)
            assert context is None or context.campaign_id == c.id
            refused = store.record_triggered(c.id, [(f"d{k}", [(f"d{k}", "u1", "o0", "email", "A", 0.5, "t", 1.0)])])
            assert (f"d{k}" not in refused) == (lifecycle.may_send(before) and room)
            assert store.given_back([f"d{k}"]) == refused
        else:
            try:
                store.command(c.id, command, actor)
            except TransitionError:
                assert store.get(c.id) == before
    sends = store.sends(c.id)
    assert max_sends is None or len(sends) <= max_sends
    assert not sends or any(e["command"] == "approve" for e in store.events(c.id))


def test_the_control_shares_decisions_read_follow_every_spec_change(tmp_path):
    """What the service's decisions hold out (`CampaignStore.control_shares`, cached): a change written by another
    process is seen at the next read; sends and commands leave the cached shares as they are."""
    service, cli = CampaignStore(tmp_path / "c.db"), CampaignStore(tmp_path / "c.db")  # two handles, one file
    c = cli.create(spec().model_copy(update={"control_pct": 10.0}), "ann")
    shares = service.control_shares()
    assert shares == {c.id: 0.10}
    cli.command(c.id, "submit", "ann")
    cli.add_sends(c.id, [("d1", "u1", "o0", "email", "A", 1.0, "t", 0.1)])
    assert service.control_shares() is shares
    cli.edit(c.id, spec().model_copy(update={"control_pct": 25.0}), "ann")
    assert service.control_shares() == {c.id: 0.25}
    cli.create(spec("no control"), "ann")
    assert service.control_shares() == {c.id: 0.25}
    cli.reset()
    assert service.control_shares() == {}
