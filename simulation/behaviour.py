"""Organic behaviour: the events users generate on their own (registering, browsing, carts, purchases)."""

from __future__ import annotations

import numpy as np

from nextbest.simulation.catalog import EVENT_TYPES, PRODUCTS_PER_CATEGORY
from nextbest.simulation.clock import DAY_NS, HOUR_NS, MINUTE_NS, utc_offset_ns
from nextbest.simulation.response import draw_category
from nextbest.simulation.truth import Truth

__all__ = ["organic_events", "purchase_carts", "concat_events"]

_T = {t: i for i, t in enumerate(EVENT_TYPES)}
# Funnel stage each browsing type reveals, and the type a user at a given depth shows instead of a deeper one.
_STAGE = np.array([1, 1, 2, 2, 3, 4], dtype=np.int8)
_SHALLOWER = np.array([-1, _T["app_open"], _T["view"], _T["add_to_cart"], _T["add_to_cart"]], dtype=np.int8)
_BROWSE_TYPES = np.array([_T["app_open"], _T["view"], _T["search"], _T["add_to_cart"]], dtype=np.int8)
_BROWSE_MIX = [0.42, 0.36, 0.11, 0.11]


def _in_rhythm(truth: Truth, u: np.ndarray, t_ns: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Move each instant to the same local day at an hour drawn from the user's daily rhythm."""
    offset = utc_offset_ns(truth.tz[u], t_ns)
    local = t_ns + offset
    hour = (truth.preferred_hour[u] + truth.hour_width[u] * rng.standard_normal(len(u), dtype=np.float32)) % 24
    return local - local % DAY_NS + (hour * HOUR_NS).astype(np.int64) - offset


def _spread(u_all: np.ndarray, begin: np.ndarray, days: np.ndarray, rate: np.ndarray,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Poisson(rate x days) instants per user, uniform over [begin, begin + days)."""
    counts = rng.poisson(rate * days)
    u = np.repeat(u_all, counts)
    t = begin[u] + (rng.random(len(u)) * days[u] * DAY_NS).astype(np.int64)
    return u, t


def _empty() -> dict[str, np.ndarray]:
    return {"user": np.zeros(0, np.int32), "ts": np.zeros(0, np.int64), "type": np.zeros(0, np.int8),
            "category": np.zeros(0, np.int8), "product": np.zeros(0, np.int16), "amount": np.zeros(0),
            "quantity": np.zeros(0)}


def concat_events(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate event-array dicts column by column, emptying the parts (to bound peak memory)."""
    parts = [_empty()] + parts
    return {k: np.concatenate([p.pop(k) for p in parts]) for k in list(parts[0])}


def organic_events(truth: Truth, prices: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Register, browsing and organic purchase events in the history, as arrays (purchases without carts)."""
    n, start, end = truth.n_users, truth.start_ns, truth.end_ns
    users = np.arange(n, dtype=np.int32)
    active_from = np.maximum(truth.signup_ns, start)
    active_to = np.minimum(truth.churn_ns, end)
    active_days = np.clip((active_to - active_from) / DAY_NS, 0.0, None)

    # Register: at signup for users who ever showed up, or when a first-contact user finally does.
    upgrade_in = (truth.depth0 == 0) & (truth.depth1 >= 1) & (truth.upgrade_ns < end)
    reg_u = np.flatnonzero((truth.depth0 >= 1) | upgrade_in).astype(np.int32)
    reg_t = np.where(truth.depth0[reg_u] >= 1, truth.signup_ns[reg_u], truth.upgrade_ns[reg_u])
    reg = {"user": reg_u, "ts": reg_t, "type": np.full(len(reg_u), _T["register"], np.int8)}

    # Browsing, capped at the funnel depth the user has reached at that moment.
    u, t = _spread(users, active_from, active_days, truth.activity, rng)
    t = _in_rhythm(truth, u, t, rng)
    kind = _BROWSE_TYPES[rng.choice(len(_BROWSE_TYPES), size=len(u), p=_BROWSE_MIX)]
    depth = truth.depth_at(u, t)
    kind = np.where(_STAGE[kind] > depth, _SHALLOWER[depth], kind).astype(np.int8)
    keep = (depth > 0) & (t >= active_from[u]) & (t < active_to[u])
    browse = {"user": u[keep], "ts": t[keep], "type": kind[keep]}

    # Organic purchases: a Poisson process at the user's rate while a customer and active.
    buy_from = np.maximum(truth.customer_from_ns(users), active_from)
    buy_days = np.clip((active_to - buy_from) / DAY_NS, 0.0, None)
    buy_from = np.minimum(buy_from, end)
    pu, pt = _spread(users, buy_from, buy_days, truth.organic_rate, rng)
    pt = _in_rhythm(truth, pu, pt, rng)
    keep = (pt >= buy_from[pu]) & (pt < active_to[pu])
    buy = {"user": pu[keep], "ts": pt[keep], "type": np.full(int(keep.sum()), _T["purchase"], np.int8)}

    out = concat_events([_fill(reg, prices, truth, rng), _fill(browse, prices, truth, rng), _fill(buy, prices, truth, rng)])
    return out


def _fill(ev: dict[str, np.ndarray], prices: np.ndarray, truth: Truth, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Add category/product (views, carts, purchases) and amount/quantity (purchases) to typed events."""
    m = len(ev["user"])
    has_item = np.isin(ev["type"], [_T["view"], _T["add_to_cart"], _T["purchase"]])
    cat = np.where(has_item, draw_category(truth, ev["user"], rng), -1).astype(np.int8)
    product = np.where(has_item, cat.astype(np.int16) * PRODUCTS_PER_CATEGORY
                       + rng.integers(0, PRODUCTS_PER_CATEGORY, m), -1).astype(np.int16)
    is_buy = ev["type"] == _T["purchase"]
    quantity = np.where(is_buy, 1.0 + rng.poisson(0.3, m), np.nan)
    amount = np.where(is_buy, np.round(prices[np.maximum(product, 0)] * quantity, 2), np.nan)
    return {**ev, "ts": ev["ts"].astype(np.int64), "category": cat, "product": product, "amount": amount,
            "quantity": quantity}


def purchase_carts(ev: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """An add_to_cart of the same product a few minutes before every purchase (carts without one are abandoned)."""
    rows = np.flatnonzero(ev["type"] == _T["purchase"])
    before = (rng.uniform(2.0, 40.0, len(rows)) * MINUTE_NS).astype(np.int64)
    return {"user": ev["user"][rows], "ts": ev["ts"][rows] - before,
            "type": np.full(len(rows), _T["add_to_cart"], np.int8), "category": ev["category"][rows],
            "product": ev["product"][rows], "amount": np.full(len(rows), np.nan), "quantity": np.full(len(rows), np.nan)}
