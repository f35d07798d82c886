"""The service's logs become the contacts table: treated, explored, control and no-action rows; idempotent; late
outcomes wait for the next run."""

from __future__ import annotations

import pandas as pd
import pytest

from nextbest.features.contract import conform
from nextbest.pipelines.logs_to_contacts import PREFIX, logs_to_contacts, merge_contacts

T0 = pd.Timestamp("2026-06-10T09:00:00Z")
USERS = {"p1": "u1", "p2": "u2", "p3": "u3", "p4": "u4"}


def _at(hours: float) -> str:
    return (T0 + pd.Timedelta(hours=hours)).isoformat()


def _decision(did: str, user: str, actions=(), holdout=None, no_action_p=None, at=0.0, campaign="spring") -> dict:
    return {"decision_id": did, "at": _at(at), "user_id": user, "campaign_id": campaign, "trigger": None,
            "actions": [{"offer_id": o, "channel": c, "send_at": _at(at + 1), "propensity": p, "expected_value": 1.0,
                         "explored": e} for o, c, p, e in actions],
            "no_action_propensity": no_action_p, "holdout": holdout, "model_versions": {}, "reasons": [],
            "degraded_reasons": []}


def _outcome(did: str, outcome: str, hours: float, offer="o1", channel="email", revenue=None) -> dict:
    return {"decision_id": did, "user_id": "x", "outcome": outcome, "offer_id": offer, "channel": channel,
            "at": _at(hours), "revenue": revenue, "propensity": 0.9}


DECISIONS = [
    _decision("d1", "p1", [("o1", "email", 0.95, False)]),
    _decision("d2", "p2", [("o2", "sms", 0.01, True)]),
    _decision("d3", "p3", holdout="universal", no_action_p=0.05),
    _decision("d4", "p4", no_action_p=0.96),
    _decision("d1", "p1", [("o1", "email", 0.95, False)]),  # the same decision logged twice
    _decision("d5", "p9", [("o1", "email", 0.95, False)]),  # a user the users table no longer has
    _decision("d6", "p1", [("o2", "push", 0.95, False)], at=30),  # after the cut-off
]
OUTCOMES = [
    _outcome("d1", "opened", 2), _outcome("d1", "opened", 3),  # reported twice: the first time counts
    _outcome("d1", "converted", 5, revenue=20.0),
    _outcome("d1", "complained", 40),  # after the cut-off: waits for the next run
    _outcome("d2", "not_sent", 1.5, offer="o2", channel="sms"),  # never reached the user
]
EVENTS = pd.DataFrame({"user_id": ["u3", "u3", "u4"], "ts": [T0 + pd.Timedelta(hours=h) for h in (4, 6, 4)],
                       "type": ["purchase", "purchase", "purchase"], "amount": [12.5, 99.0, 7.0]})
CUTOFF = T0 + pd.Timedelta(hours=24)


def _rows(cutoff=CUTOFF, decisions=DECISIONS, outcomes=OUTCOMES) -> pd.DataFrame:
    return logs_to_contacts(decisions, outcomes, USERS, cutoff, EVENTS).set_index("contact_id")


def test_each_logged_choice_becomes_one_row_with_its_propensity():
    rows = _rows()
    assert sorted(rows.index) == [f"{PREFIX}d1", f"{PREFIX}d3", f"{PREFIX}d4"]  # d2 not sent, d5 unknown, d6 later
    d1, d3, d4 = rows.loc[f"{PREFIX}d1"], rows.loc[f"{PREFIX}d3"], rows.loc[f"{PREFIX}d4"]
    assert (d1["user_id"], d1["offer_id"], d1["channel"], d1["variant"], d1["propensity"]) == ("u1", "o1", "email", "treatment", 0.95)
    assert d1["opened_at"] == T0 + pd.Timedelta(hours=2) and d1["converted_at"] == T0 + pd.Timedelta(hours=5)
    assert d1["revenue"] == 20.0 and pd.isna(d1["complained_at"])
    # the hold-out: no action, the share as propensity, converted by the user's own first purchase
    assert d3["variant"] == "control" and d3["offer_id"] is None and d3["propensity"] == 0.05
    assert d3["converted_at"] == T0 + pd.Timedelta(hours=4) and d3["revenue"] == 12.5
    # a chosen "no action" is kept (its propensity logged), never as a control
    assert d4["variant"] == "no_action" and d4["propensity"] == 0.96 and pd.isna(d4["converted_at"])
    # a log from before P(no contact) and P(held out) were logged on every decision: none to weigh them by
    assert rows["no_contact_propensity"].isna().all() and rows["holdout_propensity"].isna().all()


def test_every_row_carries_its_decisions_p_no_contact_and_p_held_out():
    """A log that records P(no contact) and P(held out) on every decision puts both on each of its rows (the judge's
    weights among sends and hold-outs, `offpolicy.judged_log`); a control row still trains with its hold-out's share."""
    sent = {**_decision("d1", "p1", [("o1", "email", 0.9 * 0.95, False)], no_action_p=0.1 + 0.9 * 0.01),
            "holdout_propensity": 0.1}
    held = {**_decision("d3", "p3", holdout="universal", no_action_p=0.1 + 0.9 * 0.8), "holdout_share": 0.05,
            "holdout_propensity": 0.1}
    chose = {**_decision("d4", "p4", no_action_p=0.1 + 0.9 * 0.96), "holdout_propensity": 0.1}
    rows = _rows(decisions=[sent, held, chose])
    d1, d3, d4 = rows.loc[f"{PREFIX}d1"], rows.loc[f"{PREFIX}d3"], rows.loc[f"{PREFIX}d4"]
    assert d1["propensity"] == pytest.approx(0.855) and d1["no_contact_propensity"] == pytest.approx(0.109)
    assert d3["variant"] == "control" and d3["propensity"] == 0.05 and d3["no_contact_propensity"] == pytest.approx(0.82)
    assert d4["variant"] == "no_action" and d4["propensity"] == d4["no_contact_propensity"] == pytest.approx(0.964)
    assert (rows["holdout_propensity"] == 0.1).all()
    conform("contacts", rows.reset_index(), "contacts (from the logs)")


def test_the_rows_pass_the_raw_data_contract():
    rows = _rows().reset_index()
    conformed = conform("contacts", rows, "contacts (from the logs)")  # raises ContractError naming a broken rule
    assert len(conformed) == len(rows) and set(conformed["variant"]) == {"treatment", "control", "no_action"}


def test_explored_actions_are_marked_and_rerunning_is_idempotent():
    explored = [_decision("e1", "p2", [("o2", "sms", 0.01, True)])]
    rows = _rows(decisions=explored, outcomes=[])
    assert rows.loc[f"{PREFIX}e1", "variant"] == "explore"
    first = logs_to_contacts(DECISIONS, OUTCOMES, USERS, CUTOFF, EVENTS)
    again = logs_to_contacts(DECISIONS + DECISIONS, OUTCOMES + OUTCOMES, USERS, CUTOFF, EVENTS)
    pd.testing.assert_frame_equal(first, again)


def test_late_outcomes_and_decisions_arrive_with_the_next_run_and_replace_the_old_rows():
    exported = pd.DataFrame({"contact_id": ["c1"], "user_id": ["u1"], "sent_at": [T0 - pd.Timedelta(days=3)],
                             "campaign_id": ["old"], "offer_id": ["o1"], "channel": ["email"], "variant": ["treatment"]})
    first = merge_contacts(exported, logs_to_contacts(DECISIONS, OUTCOMES, USERS, CUTOFF, EVENTS))
    later = CUTOFF + pd.Timedelta(days=2)
    second = merge_contacts(first, logs_to_contacts(DECISIONS, OUTCOMES, USERS, later, EVENTS)).set_index("contact_id")
    assert sorted(second.index) == ["c1", f"{PREFIX}d1", f"{PREFIX}d3", f"{PREFIX}d4", f"{PREFIX}d6"]
    assert second.loc[f"{PREFIX}d1", "complained_at"] == T0 + pd.Timedelta(hours=40)
    assert second.loc["c1", "campaign_id"] == "old"  # exported contacts are kept as they were
