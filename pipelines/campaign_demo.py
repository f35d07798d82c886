"""`nextbest demo --campaign`: a marketer's campaign on the demo world, end to end over HTTP.

A segment, a campaign with four copy variants of one offer and a control hold-out, created by one person and
approved by another, run in batches by the decision service; the simulated recipients click (copy C is planted as
the best, simulation/copies.py) and report back to /feedback; the sequential test names the winner, which then
goes to the rest of the audience.
"""

from __future__ import annotations

import numpy as np

from nextbest.features.settings import Settings

__all__ = ["campaign_demo"]

STAGES = "lifecycle_stage in [lead, intent_lead, confirmed_lead, customer]"


def campaign_demo(settings: Settings, seed: int = 7, lift: float = 1.5) -> dict:
    """Run the demo campaign; returns the experiment rows and the run summaries."""
    import httpx

    from nextbest.campaigns import segments
    from nextbest.pipelines.campaign_commands import open_store
    from nextbest.pipelines.serve_commands import running_service
    from nextbest.serving.config import load_config
    from nextbest.simulation.copies import copy_effects, draw_responses

    store = open_store(settings)
    store.save_segment(segments.Segment("demo_engaged", STAGES, "users past their first contact"),
                       set(segments.table_columns(settings.feature_dir)), replace=True)
    offer = load_config(settings.operator_yaml).offers[0].offer_id
    variants = "ABCD"
    spec = {"name": "demo: four subject lines", "audience": "demo_engaged", "control_pct": 5.0,
            "offers": [{"offer_id": offer, "variants": [{"id": v, "text": f"subject line {v}"} for v in variants]}],
            "experiment": {"mode": "fixed", "metric": "clicked", "mde": 1.0, "baseline": 0.05, "test_share": 0.5}}
    effects = copy_effects(len(variants), best=variants.index("C"), lift=lift)
    rng = np.random.default_rng(seed)
    runs = []
    with running_service(settings) as url, httpx.Client(base_url=url, timeout=120) as client:
        cid = f"demo-{rng.integers(1 << 30):x}"
        client.post("/campaigns/create", json={"spec": spec, "actor": "ann", "campaign_id": cid}).raise_for_status()
        for command, actor in (("submit", "ann"), ("approve", "bob"), ("start", "bob")):
            client.post("/campaigns/command", json={"campaign_id": cid, "command": command, "actor": actor}
                        ).raise_for_status()

        def run_until_it_waits() -> dict:
            while True:
                r = client.post("/campaigns/run", json={"campaign_id": cid, "batch": 1000, "max_batches": 20})
                out = r.raise_for_status().json()
                if out["stopped"] != "batch limit of this run":
                    return out

        runs.append(run_until_it_waits())
        # The recipients respond: the channel systems report each click back to the service.
        sends = store.sends(cid)
        arms = np.array([variants.index(s["variant"]) for s in sends], dtype=int)
        clicked = draw_responses(0.05, arms, effects, rng) if len(arms) else np.zeros(0, dtype=bool)
        for s in (s for s, hit in zip(sends, clicked, strict=True) if hit):
            client.post("/feedback", json={"decision_id": s["decision_id"], "outcome": "clicked",
                                           "offer_id": s["offer_id"]}).raise_for_status()
        experiment = client.post("/campaigns/experiment", json={"campaign_id": cid}).raise_for_status().json()
        if runs[-1]["state"] == "running" and any(row["winner"] for row in experiment):
            runs.append(run_until_it_waits())  # the winner goes to the rest of the audience
    return dict(campaign_id=cid, planted_best="C", experiment=experiment, runs=runs)
