"""The long-term cost of a contact in the objective: an unsubscribe or complaint loses the channel's future value."""

from __future__ import annotations

import numpy as np
import pandas as pd

from nextbest.serving import engine
from nextbest.serving.config import (
    Channel,
    Offer,
    OperatorConfig,
    catalog_config,
    default_config,
    observed_channel_values,
    observed_opt_out_rates,
)


def _config(opt_out_cost: float) -> OperatorConfig:
    return OperatorConfig(offers=[Offer(offer_id="o", category="any", value=20.0)],
                          channels=[Channel(channel="sms", cost=0.05, opt_out_rate=0.02, opt_out_cost=opt_out_cost),
                                    Channel(channel="push", cost=0.0, opt_out_rate=0.002, opt_out_cost=opt_out_cost)])


USERS = {"user_id": np.array(["calm", "tired", "hostile"], dtype=object),
         "contacts_7d": np.array([0.0, 4.0, 0.0]), "contacts_90d": np.array([10.0, 10.0, 10.0]),
         "unsubscribes_90d": np.array([0.0, 0.0, 2.0]), "complaints_90d": np.array([0.0, 0.0, 1.0])}


def test_risk_grows_with_recent_contacts_and_the_users_own_record_and_follows_the_channel():
    risk = engine.opt_out_risk(USERS, _config(1.0))
    assert (risk[:, 0] > risk[:, 1]).all()  # sms annoys more than push
    assert risk[1, 0] > risk[0, 0] and risk[2, 0] > risk[0, 0]  # a tired user, a user who opted out before


def test_the_expected_loss_is_subtracted_and_no_contact_wins_when_nothing_pays():
    p = np.full((3, 1, 2), 0.01)  # P(convert): EV 0.2 - cost before the long-term term
    nan = np.full_like(p, np.nan)
    free = engine.expected_values_many(p, nan, _config(0.0), np.zeros(3), engine.opt_out_risk(USERS, _config(0.0)))
    costly = _config(20.0)
    risk = engine.opt_out_risk(USERS, costly)
    ev = engine.expected_values_many(p, nan, costly, np.zeros(3), risk)
    assert np.allclose(free - ev, (risk * 20.0)[:, None, :])
    feasible = np.ones_like(ev, dtype=bool)
    g_free, g = engine.greedy_many(free, feasible, np.zeros(1)), engine.greedy_many(ev, feasible, np.zeros(1))
    assert (g_free.best >= 0).all()  # without the long-term cost everyone is contacted
    assert g.best[0] == 1 and g.best[2] == -1  # the calm user by push, not sms; the hostile one left alone


def test_the_contact_log_teaches_each_channels_opt_out_rate():
    t = pd.Timestamp("2026-06-01", tz="UTC")
    contacts = pd.DataFrame({"channel": ["sms"] * 400 + ["push"] * 400 + [None],
                             "unsubscribed_at": [t] * 20 + [pd.NaT] * 380 + [pd.NaT] * 400 + [t],
                             "complained_at": [pd.NaT] * 20 + [t] * 10 + [pd.NaT] * 370 + [t] * 2 + [pd.NaT] * 399})
    rates = observed_opt_out_rates(contacts, prior=0.003, strength=200)
    assert set(rates) == {"sms", "push"}  # a control row is not a contact
    assert np.isclose(rates["sms"], (30 + 0.6) / 600) and np.isclose(rates["push"], (2 + 0.6) / 600)


def test_the_contact_log_teaches_what_an_opt_out_loses_and_the_catalog_config_takes_it():
    t = pd.Timestamp("2026-06-01", tz="UTC")
    # 90 days of log: sms reached 2 users who bought 30 through it; push 4 users, 20; a control row is no channel's
    contacts = pd.DataFrame({"user_id": ["a", "b", "a", "c", "d", "e", "f", "z"],
                             "channel": ["sms", "sms", "sms", "push", "push", "push", "push", None],
                             "sent_at": [t, t, t + pd.Timedelta(days=90), t, t, t, t, t],
                             "revenue": [10.0, 0.0, 20.0, 5.0, 5.0, np.nan, 10.0, 99.0]})
    assert observed_channel_values(contacts) == {"sms": 15.0, "push": 5.0}  # revenue per user reached over 90 days
    channels = pd.DataFrame({"channel": ["sms", "push"], "cost": [0.05, 0.0]})
    learned = catalog_config(pd.DataFrame({"offer_id": ["o"], "category": ["any"], "value": [20.0]}), channels,
                             contacts=contacts)
    assert {c.channel: c.opt_out_cost for c in learned.channels} == {"sms": 15.0, "push": 5.0}
    # an operator's own figure stays
    base = default_config()
    base = base.model_copy(update={"channels": [c.model_copy(update={"opt_out_cost": 2.0}) if c.channel == "sms" else c
                                                for c in base.channels]})
    kept = catalog_config(pd.DataFrame({"offer_id": ["o"], "category": ["any"], "value": [20.0]}), channels, base=base,
                          contacts=contacts)
    assert {c.channel: c.opt_out_cost for c in kept.channels} == {"sms": 2.0, "push": 5.0}
