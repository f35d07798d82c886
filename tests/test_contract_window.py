"""What the contract reserves (request column names, offer kinds), the observation window, and tags without future."""

from __future__ import annotations

import typing

import numpy as np
import pandas as pd
import pytest

from nextbest.features.contract import DEFAULT_OFFER_KIND, OFFER_KINDS, ContractError, conform
from nextbest.features.tags import behaviour_clusters
from nextbest.training.datasets import contact_rows


def test_a_profile_column_named_like_a_request_column_is_refused_with_the_fix(raw_frames):
    users = raw_frames["users"].assign(channel="web", offer_id="x")
    with pytest.raises(ContractError) as info:
        conform("users", users, "users.csv")
    named = {v.column: v.rule for v in info.value.violations}
    assert set(named) == {"channel", "offer_id"}
    assert "reserved" in named["channel"] and "profile_channel" in named["channel"] and "mapping" in named["channel"]


def test_offer_kinds_are_one_list_for_contract_training_and_serving(raw_frames):
    from nextbest.serving.config import Offer

    field = Offer.model_fields["kind"]
    assert set(typing.get_args(field.annotation)) == set(OFFER_KINDS) and field.default == DEFAULT_OFFER_KIND
    offers = raw_frames["offers"].assign(kind=["retention", "vip"])
    with pytest.raises(ContractError) as info:
        conform("offers", offers, "offers.csv")
    assert [(v.column, v.rows) for v in info.value.violations] == [("kind", 1)]
    assert "retention" in info.value.violations[0].rule
    # An offers table without `kind` trains with serving's default kind, not a kind serving never sends.
    raw = {**raw_frames, "offers": conform("offers", raw_frames["offers"], "offers.csv")}
    assert set(contact_rows(raw)["offer_kind"]) == {DEFAULT_OFFER_KIND}
    raw["offers"] = raw["offers"].assign(kind=["retention", None])
    rows = contact_rows(raw)
    assert set(rows.loc[rows["offer_id"] == "o1", "offer_kind"]) == {"retention"}
    assert set(rows.loc[rows["offer_id"] == "o2", "offer_kind"]) == {DEFAULT_OFFER_KIND}


def test_observed_until_keeps_an_export_whose_outcomes_were_watched_after_the_last_event(raw_frames):
    # An experiment export: every mail sent on the last day of the event log, outcomes watched for two weeks.
    end = pd.to_datetime(raw_frames["events"]["ts"]).max()
    contacts = raw_frames["contacts"].assign(sent_at=end - pd.Timedelta(hours=1))
    raw = {**raw_frames, "contacts": contacts}
    with pytest.raises(ValueError, match="observed_until") as info:
        contact_rows(raw)
    assert "1,200 contacts" in str(info.value) and "--window" in str(info.value)
    watched = contacts.assign(observed_until=end + pd.Timedelta(days=14))
    assert len(contact_rows({**raw, "contacts": watched})) == len(contacts)
    # Watched for 3 days only: outcomes within 7 days are unknown, so those contacts carry no label.
    short = watched.assign(observed_until=np.where(np.arange(len(contacts)) < 200, end + pd.Timedelta(days=3),
                                                   end + pd.Timedelta(days=14)))
    assert len(contact_rows({**raw, "contacts": short})) == len(contacts) - 200


def test_behaviour_clusters_of_a_snapshot_never_depend_on_later_snapshots():
    rng = np.random.default_rng(0)
    snaps = np.repeat(np.array(["2026-01-01", "2026-02-01", "2026-03-01"], dtype="datetime64[ns]"), 400)
    x = rng.normal(size=(len(snaps), 3)) + np.where(rng.random(len(snaps)) < 0.5, 3.0, 0.0)[:, None]
    labels = behaviour_clusters(x, snaps, k=3, seed=7)
    assert set(labels) == {0, 1, 2}
    later = x.copy()
    later[snaps == snaps.max()] *= 10  # a very different future
    changed = behaviour_clusters(later, snaps, k=3, seed=7)
    past = snaps < snaps.max()
    np.testing.assert_array_equal(changed[past], labels[past])
    assert not np.array_equal(changed[~past], labels[~past])
    # The same rows without the future at all: the same tags.
    np.testing.assert_array_equal(behaviour_clusters(x[past], snaps[past], k=3, seed=7), labels[past])


def test_retrain_skips_the_models_the_contact_log_cannot_train_and_says_why(raw_frames):
    from nextbest.training.jobs import MODELS, skipped_models

    contacts = raw_frames["contacts"]  # no control group, no conversions tracked, opens tracked
    skipped = skipped_models({**raw_frames, "contacts": contacts}, list(MODELS))
    assert "control group" in skipped["uplift"] or "converted_at" in skipped["uplift"]
    assert "converted_at" in skipped["conversion"] and "converted_at" in skipped["offer_net"]
    assert "send_time" not in skipped and "channel" not in skipped and "purchase" not in skipped
    full = contacts.assign(converted_at=contacts["sent_at"].where(np.arange(len(contacts)) % 5 == 0),
                           variant=np.where(np.arange(len(contacts)) % 10 == 0, "control", "treatment"))
    assert skipped_models({**raw_frames, "contacts": full}, list(MODELS)) == {}
    blind = full.drop(columns=["opened_at"]).assign(variant="treatment")
    skipped = skipped_models({**raw_frames, "contacts": blind}, list(MODELS))
    assert set(skipped) == {"uplift", "send_time", "channel"}
    assert "variant `control`" in skipped["uplift"] and "opened_at" in skipped["send_time"]


def test_off_policy_judges_an_export_watched_after_its_last_event(raw_frames):
    from nextbest.pipelines.offpolicy import decisions_since

    # Every decision sent after the event log ends (an experiment export): only `observed_until` says the outcome
    # windows were watched, for the policy gate and `evaluate --logs` as for training.
    end = pd.to_datetime(raw_frames["events"]["ts"], utc=True).max()
    contacts = raw_frames["contacts"].assign(sent_at=end + pd.Timedelta(days=1))
    snapshots = pd.Series([end.normalize()])
    with pytest.raises(ValueError, match="complete 7-day outcome window"):
        decisions_since({**raw_frames, "contacts": contacts}, snapshots)
    watched = contacts.assign(observed_until=np.where(np.arange(len(contacts)) < 200, end + pd.Timedelta(days=3),
                                                      end + pd.Timedelta(days=30)))
    cutoff, kept = decisions_since({**raw_frames, "contacts": watched}, snapshots, newest=1.0)
    assert cutoff == end.normalize() and len(kept["contacts"]) == len(contacts) - 200  # 200 watched too briefly
