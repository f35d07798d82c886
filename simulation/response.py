"""The ground-truth response model: pure vectorised functions for logging history and replaying any policy."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from nextbest.simulation.catalog import CATEGORIES, CHANNELS, EVENT_TYPES, PRODUCTS_PER_CATEGORY
from nextbest.simulation.clock import DAY_NS, HOUR_NS, MINUTE_NS, NAT, local_hour, to_utc_series

if TYPE_CHECKING:
    from nextbest.simulation.truth import Truth

__all__ = ["HORIZON_DAYS", "p_open", "p_click", "p_buy", "p_caused", "p_unsubscribe", "p_complaint", "p_organic",
           "draw_organic_first",
           "draw_outcomes", "draw_outcomes_ns", "offer_arrays", "draw_category", "recent_contacts"]

HORIZON_DAYS = 7.0  # conversion window after a send
# Per channel, in CHANNELS order: delivery probability, open logit at a neutral hour, mean delay to open (h),
# unsubscribe and complaint logit shifts (SMS annoys more), mean delivery delay (s).
_DELIVERY = np.array([0.92, 0.98, 0.96, 0.90, 0.97])
_OPEN_LOGIT = np.array([-2.0, -1.0, -1.6, -0.7, -1.1])
_OPEN_DELAY_H = np.array([0.5, 0.7, 5.0, 3.0, 1.5])
_UNSUB_SHIFT = np.array([0.0, 0.6, 0.4, -0.8, 0.0])
_COMPLAINT_SHIFT = np.array([0.0, 1.0, 0.3, -1.0, 0.2])
_DELIVERY_DELAY_S = np.array([5.0, 20.0, 60.0, 600.0, 10.0])
_KINDS = ("product", "coupon", "retention")


def offer_arrays(offers: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Offers as arrays: kind code (index into product/coupon/retention), category index (-1 = any), value."""
    kind = offers["kind"].map({k: i for i, k in enumerate(_KINDS)}).to_numpy(dtype=np.int8)
    cat = offers["category"].map({c: i for i, c in enumerate(CATEGORIES)}).fillna(-1).to_numpy(dtype=np.int8)
    return kind, cat, offers["value"].to_numpy(dtype=np.float64)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _dormant(truth: Truth, u: np.ndarray, at_ns: np.ndarray) -> np.ndarray:
    return at_ns >= truth.churn_ns[u]


def _rhythm(truth: Truth, u: np.ndarray, hour: np.ndarray) -> np.ndarray:
    """Logit bonus of reaching a user near their preferred local hour (negative far from it)."""
    gap = np.abs(hour - truth.preferred_hour[u]) % 24
    gap = np.minimum(gap, 24 - gap)
    return 1.6 * np.exp(-0.5 * (gap / truth.hour_width[u]) ** 2) - 0.7


def p_open(truth: Truth, u: np.ndarray, c: np.ndarray, hour: np.ndarray, recent: np.ndarray,
           at_ns: np.ndarray) -> np.ndarray:
    """P(open | delivered) on channel index `c` at local `hour`, after `recent` contacts in the previous 7 days."""
    z = (_OPEN_LOGIT[c] + truth.channel_response[u, c] + _rhythm(truth, u, hour)
         - truth.fatigue[u] * recent - 1.5 * _dormant(truth, u, at_ns))
    return _sigmoid(z)


def _log_match(truth: Truth, offers: pd.DataFrame, u: np.ndarray, o: np.ndarray) -> np.ndarray:
    """How well an offer fits a user: log of category interest relative to uniform (0 for 'any' offers)."""
    _, cat, _ = offer_arrays(offers)
    oc = cat[o]
    share = truth.interest[u, np.maximum(oc, 0)] * len(CATEGORIES)
    return np.where(oc >= 0, np.log(np.clip(share, 0.05, None)), 0.0)


def p_click(truth: Truth, offers: pd.DataFrame, u: np.ndarray, o: np.ndarray) -> np.ndarray:
    """P(click | opened): interest in the offer's category draws clicks."""
    return _sigmoid(-0.6 + 0.6 * _log_match(truth, offers, u, o))


def p_buy(truth: Truth, offers: pd.DataFrame, u: np.ndarray, o: np.ndarray, recent: np.ndarray,
          at_ns: np.ndarray) -> np.ndarray:
    """P(the click turns into a purchase the user would not have made otherwise)."""
    kind, _, value = offer_arrays(offers)
    k = kind[o]
    dormant = _dormant(truth, u, at_ns)
    z = (-0.4 + 0.9 * _log_match(truth, offers, u, o) + truth.persuadability[u] - truth.fatigue[u] * recent
         - 0.35 * np.log(value[o] / 50.0)
         + np.where(k == 1, 3.0 * (truth.price_sensitivity[u] - 0.4), 0.0)
         # Dormant users ignore most offers, but a win-back offer is made for them.
         + np.where(dormant, np.where(k == 2, 0.8, -1.2), 0.0))
    return _sigmoid(z)


def p_caused(truth: Truth, offers: pd.DataFrame, u: np.ndarray, o: np.ndarray, c: np.ndarray, at_ns: np.ndarray,
             recent: np.ndarray) -> np.ndarray:
    """P(the contact causes a purchase): delivered x opened x clicked x bought."""
    hour = local_hour(truth.tz[u], at_ns)
    return (_DELIVERY[c] * p_open(truth, u, c, hour, recent, at_ns) * p_click(truth, offers, u, o)
            * p_buy(truth, offers, u, o, recent, at_ns))


def p_unsubscribe(truth: Truth, u: np.ndarray, c: np.ndarray, recent: np.ndarray) -> np.ndarray:
    """P(the send is delivered and the user unsubscribes from the channel), after `recent` contacts in 7 days."""
    return _DELIVERY[c] * _unsubscribe_if_delivered(truth, u, c, recent)


def p_complaint(truth: Truth, u: np.ndarray, c: np.ndarray, recent: np.ndarray) -> np.ndarray:
    """P(the send is delivered and the user complains about it), after `recent` contacts in 7 days."""
    return _DELIVERY[c] * _complaint_if_delivered(truth, u, c, recent)


def _unsubscribe_if_delivered(truth: Truth, u: np.ndarray, c: np.ndarray, recent: np.ndarray) -> np.ndarray:
    # Each recent contact pushes a user who tires easily (high fatigue) towards opting out.
    return _sigmoid(-6.3 + _UNSUB_SHIFT[c] + truth.fatigue[u] * recent * 1.5)


def _complaint_if_delivered(truth: Truth, u: np.ndarray, c: np.ndarray, recent: np.ndarray) -> np.ndarray:
    return _sigmoid(-7.9 + _COMPLAINT_SHIFT[c] + 0.9 * truth.complaint[u] + truth.fatigue[u] * recent * 1.5)


def _organic_window(truth: Truth, u: np.ndarray, at_ns: np.ndarray, horizon_days: float) -> tuple[np.ndarray, np.ndarray]:
    """Start and length (days) of the part of [at, at + horizon) in which the user buys organically."""
    begin = np.maximum(at_ns, truth.customer_from_ns(u))
    stop = np.minimum(at_ns + int(horizon_days * DAY_NS), truth.churn_ns[u])
    return begin, np.clip((stop - begin) / DAY_NS, 0.0, None)


def p_organic(truth: Truth, u: np.ndarray, at_ns: np.ndarray, horizon_days: float = HORIZON_DAYS) -> np.ndarray:
    """P(at least one organic purchase within `horizon_days` after `at_ns`): a Poisson process while a customer."""
    _, days = _organic_window(truth, u, at_ns, horizon_days)
    return 1.0 - np.exp(-truth.organic_rate[u] * days)


def draw_organic_first(truth: Truth, u: np.ndarray, at_ns: np.ndarray, rng: np.random.Generator,
                       horizon_days: float = HORIZON_DAYS) -> np.ndarray:
    """Time of the first organic purchase within the horizon (NAT if none), drawn from the same process."""
    begin, days = _organic_window(truth, u, at_ns, horizon_days)
    wait = rng.exponential(1.0, len(u)) / truth.organic_rate[u]
    return np.where(wait < days, begin + (wait * DAY_NS).astype(np.int64), NAT)


def draw_category(truth: Truth, u: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One category per row, drawn from each user's interests (a loop over the 8 categories, not rows)."""
    draw = rng.random(len(u)).astype(np.float32)
    out = np.zeros(len(u), dtype=np.int8)
    cum = np.zeros(len(u), dtype=np.float32)
    for k in range(len(CATEGORIES) - 1):
        cum += truth.interest[u, k]
        out += (draw >= cum).astype(np.int8)
    return out


def draw_outcomes_ns(truth: Truth, offers: pd.DataFrame, u: np.ndarray, o: np.ndarray, c: np.ndarray,
                     send_ns: np.ndarray, recent: np.ndarray, rng: np.random.Generator, end_ns: int | None = None,
                     organic_ns: np.ndarray | None = None, organic_revenue: np.ndarray | None = None,
                     prices: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Outcomes of sends as int64-ns arrays (NAT = did not happen), plus the events they cause (clicks, purchases)."""
    n = len(u)
    end_ns = np.iinfo(np.int64).max if end_ns is None else end_ns
    hour = local_hour(truth.tz[u], send_ns)
    delivered = rng.random(n) < _DELIVERY[c]
    delivered_ns = send_ns + (rng.exponential(_DELIVERY_DELAY_S[c]) * 1e9).astype(np.int64)
    opened = delivered & (rng.random(n) < p_open(truth, u, c, hour, recent, send_ns))
    opened_ns = delivered_ns + (rng.exponential(_OPEN_DELAY_H[c]) * HOUR_NS).astype(np.int64)
    clicked = opened & (rng.random(n) < p_click(truth, offers, u, o))
    clicked_ns = opened_ns + (rng.exponential(3.0, n) * MINUTE_NS).astype(np.int64)
    caused = clicked & (rng.random(n) < p_buy(truth, offers, u, o, recent, send_ns))
    # Most caused purchases follow the click within hours; all within the conversion window.
    caused_ns = np.minimum(clicked_ns + (rng.exponential(6.0, n) * HOUR_NS).astype(np.int64),
                           send_ns + int(HORIZON_DAYS * DAY_NS) - MINUTE_NS)
    unsub = delivered & (rng.random(n) < _unsubscribe_if_delivered(truth, u, c, recent))
    unsub_ns = np.maximum(opened_ns, delivered_ns) + (rng.exponential(1.0, n) * HOUR_NS).astype(np.int64)
    complained = delivered & (rng.random(n) < _complaint_if_delivered(truth, u, c, recent))
    complained_ns = delivered_ns + (rng.exponential(2.0, n) * HOUR_NS).astype(np.int64)

    kind, ocat, value = offer_arrays(offers)
    cat = np.where(ocat[o] >= 0, ocat[o], draw_category(truth, u, rng)).astype(np.int8)
    product = (cat.astype(np.int16) * PRODUCTS_PER_CATEGORY + rng.integers(0, PRODUCTS_PER_CATEGORY, n)).astype(np.int16)
    caused_amount = np.round(value[o] * rng.gamma(4.0, 0.25, n), 2)
    if organic_ns is None:
        organic_ns = draw_organic_first(truth, u, send_ns, rng)
        base = prices if prices is not None else np.full(PRODUCTS_PER_CATEGORY * len(CATEGORIES), 40.0)
        organic_revenue = np.round(base[rng.integers(0, len(base), n)] * (1 + rng.poisson(0.3, n)), 2)

    def when(happened: np.ndarray, ns: np.ndarray) -> np.ndarray:
        return np.where(happened & (ns < end_ns), ns, NAT)

    caused_ns = when(caused, caused_ns)
    organic_ns = when(organic_ns != NAT, organic_ns)
    has_org, has_caused = organic_ns != NAT, caused_ns != NAT
    caused_first = has_caused & (~has_org | (caused_ns < organic_ns))
    converted_ns = np.where(caused_first, caused_ns, organic_ns)
    revenue = np.where(caused_first, caused_amount, np.where(has_org, organic_revenue, 0.0))
    outcomes = {
        "delivered_at": when(delivered, delivered_ns), "opened_at": when(opened, opened_ns),
        "clicked_at": when(clicked, clicked_ns), "converted_at": converted_ns, "revenue": revenue,
        "unsubscribed_at": when(unsub, unsub_ns), "complained_at": when(complained, complained_ns),
        "caused": has_caused,
    }
    # A click shows a product page (a view); a caused purchase is an ordinary purchase in the events.
    click_rows, buy_rows = np.flatnonzero(outcomes["clicked_at"] != NAT), np.flatnonzero(has_caused)
    rows = np.concatenate([click_rows, buy_rows])
    is_buy = np.r_[np.zeros(len(click_rows), bool), np.ones(len(buy_rows), bool)]
    events = {
        "user": u[rows].astype(np.int32),
        "ts": np.where(is_buy, caused_ns[rows], outcomes["clicked_at"][rows]),
        "type": np.where(is_buy, EVENT_TYPES.index("purchase"), EVENT_TYPES.index("view")).astype(np.int8),
        "category": cat[rows], "product": product[rows],
        "amount": np.where(is_buy, caused_amount[rows], np.nan),
        "quantity": np.where(is_buy, 1.0, np.nan),
    }
    return outcomes, events


def draw_outcomes(truth: Truth, offers: pd.DataFrame, actions: pd.DataFrame, recent_contacts: np.ndarray,
                  rng: np.random.Generator, end: pd.Timestamp | None = None) -> pd.DataFrame:
    """Outcomes of `actions` (user_idx, offer_id, channel, send_at UTC): one row per action, UTC timestamps."""
    u = actions["user_idx"].to_numpy(dtype=np.int64)
    o = actions["offer_id"].map({x: i for i, x in enumerate(offers["offer_id"])}).to_numpy(dtype=np.intp)
    c = actions["channel"].map({x: i for i, x in enumerate(CHANNELS)}).to_numpy(dtype=np.intp)
    send_ns = pd.DatetimeIndex(actions["send_at"]).tz_convert("UTC").asi8
    out, _ = draw_outcomes_ns(truth, offers, u, o, c, send_ns, np.asarray(recent_contacts), rng,
                              end_ns=None if end is None else pd.Timestamp(end).value)
    frame = pd.DataFrame({k: to_utc_series(v) if k.endswith("_at") else v for k, v in out.items()})
    frame["revenue"] = frame["revenue"].where(frame["converted_at"].notna())
    frame.index = actions.index
    return frame


def recent_contacts(contacts: pd.DataFrame) -> np.ndarray:
    """For each logged row, the user's treated contacts in the 7 days before it (the fatigue the truth sees)."""
    sent = contacts["channel"].notna().to_numpy()
    frame = pd.DataFrame({"u": contacts["user_id"].astype(str).to_numpy(), "t": contacts["sent_at"].astype("int64").to_numpy(),
                          "sent": sent.astype(np.int64), "row": np.arange(len(contacts))}).sort_values(["u", "t"])
    out = np.zeros(len(frame), dtype=np.int64)
    week = 7 * DAY_NS
    for _, g in frame.groupby("u", sort=False):  # per user: a two-pointer count over sorted send times
        t, s = g["t"].to_numpy(), np.cumsum(g["sent"].to_numpy())
        lo = np.searchsorted(t, t - week, side="left")
        before = np.r_[0, s][np.arange(len(t))] - np.r_[0, s][lo]
        out[g["row"].to_numpy()] = before
    return out
