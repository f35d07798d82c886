"""The marketing catalog: categories, products, offers and channels of the simulated shop."""

from __future__ import annotations

import numpy as np
import pandas as pd

from nextbest.features.contract import EVENT_TYPES

__all__ = ["CATEGORIES", "CHANNELS", "EVENT_TYPES", "PRODUCTS_PER_CATEGORY", "offers_table", "channels_table", "product_prices",
           "product_names"]

CATEGORIES: tuple[str, ...] = ("electronics", "fashion", "home", "beauty", "grocery", "sports", "books", "toys")
CHANNELS: tuple[str, ...] = ("push", "sms", "email", "inapp", "wechat")
# The contract's event types (in funnel order): the index is the event-type code used inside the simulator.
PRODUCTS_PER_CATEGORY = 25
# Typical item price per category (currency units); products scatter around it.
_CATEGORY_PRICE = np.array([150.0, 55.0, 65.0, 32.0, 25.0, 58.0, 18.0, 30.0])

# (offer_id, name, kind, category, value, eligibility, valid days from start or None, priority)
_OFFERS: tuple[tuple, ...] = (
    ("off_electronics", "Top tech picks", "product", "electronics", 140.0, None, None, 2),
    ("off_fashion", "New season styles", "product", "fashion", 60.0, None, None, 1),
    ("off_home", "Home refresh", "product", "home", 65.0, "lifecycle_stage != first_contact", None, 1),
    ("off_beauty", "Beauty bestsellers", "product", "beauty", 35.0, None, None, 1),
    ("off_grocery", "Pantry restock", "product", "grocery", 30.0, "lifecycle_stage in [customer]", None, 1),
    ("off_sports", "Gear up", "product", "sports", 60.0, None, None, 1),
    ("off_books", "Summer reads", "product", "books", 20.0, None, None, 0),
    ("off_toys", "Back-to-school toys", "product", "toys", 32.0, None, (20, 100), 1),
    ("cpn_10pct", "10% off your next order", "coupon", "any", 42.0,
     "lifecycle_stage in [confirmed_lead, customer]", None, 2),
    ("cpn_welcome", "Welcome: 15% off a first order", "coupon", "any", 36.0,
     "lifecycle_stage in [lead, intent_lead, confirmed_lead]", None, 3),
    ("cpn_shipping", "Free shipping this week", "coupon", "any", 30.0, "tenure_days >= 30", None, 0),
    ("ret_winback", "We miss you", "retention", "any", 45.0,
     "lifecycle_stage in [customer] and recency_days >= 30", None, 3),
)


def offers_table(start: pd.Timestamp) -> pd.DataFrame:
    """The offers catalog in contract form; seasonal offers are valid relative to `start`."""
    rows = []
    for offer_id, name, kind, category, value, eligibility, valid, priority in _OFFERS:
        valid_from = start + pd.Timedelta(days=valid[0]) if valid else pd.NaT
        valid_to = start + pd.Timedelta(days=valid[1]) if valid else pd.NaT
        rows.append((offer_id, name, kind, category, value, eligibility, valid_from, valid_to, priority))
    df = pd.DataFrame(rows, columns=["offer_id", "name", "kind", "category", "value", "eligibility", "valid_from",
                                     "valid_to", "priority"])
    for col in ("valid_from", "valid_to"):
        df[col] = pd.to_datetime(df[col], utc=True).astype("datetime64[ns, UTC]")
    df["eligibility"] = df["eligibility"].astype(object).where(df["eligibility"].notna(), None)
    return df


def channels_table() -> pd.DataFrame:
    """Channels with cost per contact (currency units), quiet hours (local) and daily capacity (contacts/day)."""
    return pd.DataFrame({
        "channel": list(CHANNELS),
        "cost": [0.001, 0.05, 0.002, 0.0, 0.01],
        "quiet_hours": ["22-8", "22-8", None, None, "22-8"],
        "daily_capacity": pd.array([None, 50_000, None, None, 200_000], dtype="Int64"),
    })


def product_prices(seed: int) -> np.ndarray:
    """Price of each product (index = category * PRODUCTS_PER_CATEGORY + k), scattered around its category's."""
    rng = np.random.default_rng(seed)
    scatter = rng.lognormal(0.0, 0.4, size=(len(CATEGORIES), PRODUCTS_PER_CATEGORY))
    return np.round(_CATEGORY_PRICE[:, None] * scatter, 2).ravel()


def product_names() -> np.ndarray:
    """Product ids such as 'electronics-07', in product-index order."""
    return np.array([f"{c}-{k:02d}" for c in CATEGORIES for k in range(PRODUCTS_PER_CATEGORY)], dtype=object)
