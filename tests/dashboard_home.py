"""A tiny home for the dashboard tests: a contact log with control groups and outcomes, two submitted campaigns
(one with a copy test), and a monitoring run. Built in well under a second; no Feast, no models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from nextbest.features.ingest import write_raw
from nextbest.features.settings import Settings

END = pd.Timestamp("2026-11-29T00:00:00Z")


def contacts(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    sent = END - pd.to_timedelta(rng.integers(60, 13 * 86400, n), unit="s")
    control = rng.random(n) < 0.2
    channel = np.where(control, None, rng.choice(["email", "sms", "push"], n))
    delivered = ~control & (rng.random(n) < 0.95)
    opened = delivered & (rng.random(n) < 0.3)
    clicked = opened & (rng.random(n) < 0.3)
    converted = rng.random(n) < np.where(control, 0.03, np.where(clicked, 0.4, 0.04))

    def at(mask, hours):
        return pd.Series(sent + pd.Timedelta(hours=hours)).where(mask)

    return pd.DataFrame({
        "contact_id": [f"c{i}" for i in range(n)], "user_id": [f"u{i % 900}" for i in range(n)], "sent_at": sent,
        "campaign_id": rng.choice(["spring", "winback"], n), "offer_id": np.where(control, None, rng.choice(["o1", "o2"], n)),
        "channel": channel, "variant": np.where(control, "control", rng.choice(["A", "B"], n)), "propensity": 0.5,
        "delivered_at": at(delivered, 0.1), "opened_at": at(opened, 2), "clicked_at": at(clicked, 2.5),
        "converted_at": at(converted, 20), "revenue": np.where(converted, rng.gamma(2.0, 25.0, n).round(2), 0.0),
    })


def make_home(root: Path) -> Settings:
    from nextbest.campaigns.model import CampaignOffer, CampaignSpec, Variant
    from nextbest.campaigns.store import CampaignStore, store_path
    from nextbest.monitoring.monitor import run_monitor

    settings = Settings(home=root / "home")
    write_raw({"contacts": contacts()}, settings.raw_dir)
    store = CampaignStore(store_path(settings.home))
    for cid, variants in (("spring", ["A", "B"]), ("winback", ["A"])):
        spec = CampaignSpec(name=f"{cid} campaign", audience="everyone", control_pct=10,
                            offers=[CampaignOffer(offer_id="o1", variants=[Variant(id=v, text=f"copy {v}") for v in variants])])
        store.create(spec, "alice", cid)
        store.command(cid, "submit", "alice")
    rng = np.random.default_rng(1)
    settings.feature_dir.mkdir(parents=True)
    n = 2000
    pd.DataFrame({"user_id": [f"u{i}" for i in range(2 * n)],
                  "event_timestamp": np.repeat(pd.to_datetime(["2026-10-01", "2026-11-01"], utc=True), n),
                  "revenue_90d": np.concatenate([rng.gamma(2, 30, n), rng.gamma(2, 30, n) + 40]),
                  "purchases_90d": rng.poisson(2, 2 * n)}).to_parquet(settings.feature_dir / "behaviour.parquet")
    run_monitor(settings)
    return settings
