"""`nextbest demo` step 9: a marketer's campaign on the demo world, end to end over HTTP.

A segment, a campaign with four copy variants of one offer and a control hold-out, created by one person and
approved by another, run in batches by the decision service the demo already runs (steps 7 and 8); the simulated
recipients click (copy C is planted as the best, simulation/copies.py) and report back to /feedback; the
sequential test names the winner, which then goes to the rest of the audience.

Sized to cost seconds, not minutes: the audience is the loyal customers of the demo world (~2,700 users), the
metric is the click (a 10 % base rate, so a few hundred users per copy settle a large planted effect), and most
of the audience is in the test.
"""

from __future__ import annotations

import numpy as np

from nextbest.features.settings import Settings

__all__ = ["campaign_demo", "AUDIENCE"]

AUDIENCE = "lifecycle_stage in [customer] and rfm_segment in [champions, loyal]"
BASE_CLICK_RATE = 0.10  # the simulated recipients' click rate with a neutral copy


def campaign_demo(settings: Settings, client, seed: int = 7, lift: float = 2.0) -> dict:
    """Run the demo campaign through `client` (an httpx client of the running service); returns the experiment rows
    and the run summaries. Copy C clicks `lift` times more often than the others (+200 % by default)."""
    from nextbest.campaigns import segments
    from nextbest.pipelines.campaign_commands import open_store
    from nextbest.serving.config import load_config
    from nextbest.simulation.copies import copy_effects, draw_responses

    store = open_store(settings)
    store.save_segment(segments.Segment("loyal_customers", AUDIENCE, "customers in the best RFM segments"),
                       set(segments.table_columns(settings.feature_dir)), replace=True)
    offer = load_config(settings.operator_yaml).offers[0].offer_id
    variants = "ABCD"
    # The MDE announced before the start (+150 %) is below the planted effect: the test should find copy C.
    spec = {"name": "demo: four subject lines", "audience": "loyal_customers", "control_pct": 5.0,
            "send_hours": "8-22", "offers": [{"offer_id": offer, "variants": [{"id": v, "text": f"subject line {v}"}
                                                                              for v in variants]}],
            "experiment": {"mode": "fixed", "metric": "clicked", "mde": 1.5, "baseline": BASE_CLICK_RATE,
                           "test_share": 0.8}}
    effects = copy_effects(len(variants), best=variants.index("C"), lift=lift)
    rng = np.random.default_rng(seed)
    runs = []

    def post(path: str, body: dict) -> dict | list:
        return client.post(path, json=body).raise_for_status().json()

    cid = f"demo-{rng.integers(1 << 30):x}"
    post("/campaigns/create", {"spec": spec, "actor": "ann", "campaign_id": cid})
    for command, actor in (("submit", "ann"), ("approve", "bob"), ("start", "bob")):
        post("/campaigns/command", {"campaign_id": cid, "command": command, "actor": actor})

    def run_until_it_waits() -> dict:
        while True:  # a few batches per request: each request stays well inside the service's timeout
            out = post("/campaigns/run", {"campaign_id": cid, "batch": 1000, "max_batches": 3})
            if out["stopped"] != "batch limit of this run":
                return out

    runs.append(run_until_it_waits())
    # The recipients respond: the channel systems report each click back to the service.
    sends = store.sends(cid)
    arms = np.array([variants.index(s["variant"]) for s in sends], dtype=int)
    clicked = draw_responses(BASE_CLICK_RATE, arms, effects, rng) if len(arms) else np.zeros(0, dtype=bool)
    for s in (s for s, hit in zip(sends, clicked, strict=True) if hit):
        post("/feedback", {"decision_id": s["decision_id"], "outcome": "clicked", "offer_id": s["offer_id"]})
    experiment = post("/campaigns/experiment", {"campaign_id": cid})
    if runs[-1]["state"] == "running" and any(row["winner"] for row in experiment):
        runs.append(run_until_it_waits())  # the winner goes to the rest of the audience
    return dict(campaign_id=cid, planted_best="C", experiment=experiment, runs=runs)
