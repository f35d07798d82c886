"""What the history can tell of the hidden traits: posterior estimates, for a yardstick the oracle cannot be.

The oracle knows every user's traits exactly; no policy can, since it only sees the history. The history oracle
decides like the oracle on a truth whose two least observable traits are replaced by what the logged history
says of them, as well as it can be said (the posterior mean under the simulator's own prior):

- category interests, from the categorised events (views, carts, purchases) before the period;
- the response to each channel, from the delivered sends before the period and whether each was opened, every
  other term of the open probability (rhythm at the send hour, fatigue, dormancy) read from the truth.

Every other trait (persuadability, price sensitivity, dormancy, rhythm) stays exact, so the history oracle
is an upper bound on what any policy scored on this history can earn, not a policy one could build.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from nextbest.simulation import response
from nextbest.simulation.catalog import CATEGORIES, CHANNELS
from nextbest.simulation.clock import local_hour
from nextbest.simulation.truth import CHANNEL_RESPONSE_SD, INTEREST_CONCENTRATION, Truth

__all__ = ["history_beliefs", "interest_posterior", "channel_response_posterior"]

_ITEM_TYPES = ("view", "add_to_cart", "purchase")  # the events that carry a category (as the affinity features)
_GRID = np.linspace(-4.0, 4.0, 81)  # channel response values of the grid posterior (the prior's sd is 0.9)


def interest_posterior(events: pd.DataFrame, user_ids: np.ndarray, before: pd.Timestamp) -> np.ndarray:
    """(U, categories): posterior mean interest shares, Dirichlet prior plus the categorised events before `before`."""
    ids = pd.Index(np.asarray(user_ids).astype(str))
    ts = pd.to_datetime(events["ts"], utc=True)
    ev = events[(ts < before).to_numpy() & events["type"].astype(str).isin(_ITEM_TYPES).to_numpy()]
    rows = ids.get_indexer(ev["user_id"].astype(str))
    cats = pd.Index(CATEGORIES).get_indexer(ev["category"].astype(str))
    keep = (rows >= 0) & (cats >= 0)
    counts = np.zeros((len(ids), len(CATEGORIES)))
    np.add.at(counts, (rows[keep], cats[keep]), 1.0)
    return (counts + INTEREST_CONCENTRATION) / (counts.sum(axis=1, keepdims=True) + INTEREST_CONCENTRATION * len(CATEGORIES))


def channel_response_posterior(truth: Truth, contacts: pd.DataFrame, user_ids: np.ndarray,
                               before: pd.Timestamp) -> np.ndarray:
    """(U, channels): posterior mean of each user's open-logit shift per channel, from the sends delivered before
    `before` (a grid posterior; every other term of the open logit from `truth`, whose rows follow `user_ids`)."""
    ids = pd.Index(np.asarray(user_ids).astype(str))
    ct = contacts[contacts["channel"].notna()]
    sent = pd.to_datetime(ct["sent_at"], utc=True)
    ct = ct.assign(u=ids.get_indexer(ct["user_id"].astype(str)), sent_ns=pd.DatetimeIndex(sent).asi8)
    ct = ct[(ct["u"] >= 0).to_numpy() & (sent < before).to_numpy()]
    u, send, recent = ct["u"].to_numpy(), ct["sent_ns"].to_numpy(), response.recent_contacts(ct)
    delivered = (pd.to_datetime(ct["delivered_at"], utc=True) < before).to_numpy()
    opened = (pd.to_datetime(ct["opened_at"], utc=True) < before).to_numpy()[delivered]
    u, send, recent = u[delivered], send[delivered], recent[delivered]
    c = pd.Index(CHANNELS).get_indexer(ct["channel"].astype(str))[delivered]
    u, send, recent, opened, c = (a[c >= 0] for a in (u, send, recent, opened, c))
    # The open logit without the user's channel shift: the response model's own formula with the shift at zero.
    neutral = dataclasses.replace(truth, channel_response=np.zeros_like(truth.channel_response))
    p = response.p_open(neutral, u, c, local_hour(truth.tz[u], send), recent, send)
    z = (np.log(p) - np.log1p(-p))[:, None] + _GRID[None, :]
    log_lik = np.where(opened[:, None], -np.logaddexp(0.0, -z), -np.logaddexp(0.0, z))
    log_post = np.tile(-0.5 * (_GRID / CHANNEL_RESPONSE_SD) ** 2, (len(ids), len(CHANNELS), 1))
    np.add.at(log_post, (u, c), log_lik)
    w = np.exp(log_post - log_post.max(axis=2, keepdims=True))
    return (w * _GRID).sum(axis=2) / w.sum(axis=2)


def history_beliefs(truth: Truth, tables: dict[str, pd.DataFrame], user_ids: np.ndarray,
                    before: pd.Timestamp) -> Truth:
    """`truth` (rows following `user_ids`) with interests and channel responses as the history before `before` tells them."""
    return dataclasses.replace(
        truth,
        interest=interest_posterior(tables["events"], user_ids, before).astype(np.float32),
        channel_response=channel_response_posterior(truth, tables["contacts"], user_ids, before).astype(np.float32),
    )
