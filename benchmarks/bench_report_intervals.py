"""Are the report's intervals honest on the simulated world? For seeded worlds, every campaign's reported incremental
revenue (treated vs its control group, 95 % interval, `monitoring.reports.incremental` on the contacts table as
exported) is checked against the simulated truth: the sum over its treated contacts of (revenue - the organic
revenue the same user would have had without the contact). Target: the interval holds the truth for >= 90 % of
campaigns.

The truth is read where the simulator draws it: `draw_outcomes_ns` gets each contact's organic first purchase (the
counterfactual) as an argument; a wrapper records its revenue per campaign (evaluation only; the report never sees
it). Control contacts receive exactly that organic revenue, so the treated rows' counterfactual sum is the call's
sum minus the campaign's control revenue in the table.

    .venv/bin/python benchmarks/bench_report_intervals.py --seeds 5 --users 5000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

import nextbest.simulation.campaigns as sim_campaigns
from nextbest.monitoring.reports import incremental, report_frame
from nextbest.simulation import WorldConfig, simulate

NAT = np.iinfo(np.int64).min


def world_with_truth(config: WorldConfig) -> tuple[pd.DataFrame, np.ndarray]:
    """The world's contacts table and, per campaign (in order), the organic (counterfactual) revenue of its rows."""
    counterfactual: list[float] = []
    draw = sim_campaigns.draw_outcomes_ns
    end_ns = config.end_ts.value

    def recording(*args, organic_ns=None, organic_revenue=None, **kwargs):
        cf = np.where((organic_ns != NAT) & (organic_ns < end_ns), organic_revenue, 0.0)
        counterfactual.append(float(cf.sum()))
        return draw(*args, organic_ns=organic_ns, organic_revenue=organic_revenue, **kwargs)

    sim_campaigns.draw_outcomes_ns = recording
    try:
        world = simulate(config)
    finally:
        sim_campaigns.draw_outcomes_ns = draw
    return world.tables["contacts"], np.asarray(counterfactual)


def coverage(contacts: pd.DataFrame, counterfactual: np.ndarray) -> pd.DataFrame:
    """Per campaign: the reported estimate and interval against the simulated truth."""
    inc = incremental(report_frame(contacts, {}))
    inc = inc[(inc["against"] == "control") & (inc["campaign_id"] != "(all)")].set_index("campaign_id")
    c = contacts.assign(revenue=contacts["revenue"].fillna(0.0))
    treated_rev = c[c["variant"] == "treatment"].groupby("campaign_id", observed=True)["revenue"].sum()
    control_rev = c[c["variant"] == "control"].groupby("campaign_id", observed=True)["revenue"].sum()
    index = [int(cid.removeprefix("cmp")) for cid in inc.index]
    truth = treated_rev.reindex(inc.index).fillna(0) - (counterfactual[index] - control_rev.reindex(inc.index).fillna(0))
    out = inc[["treated_units", "control_units", "incremental_revenue", "incremental_revenue_low",
               "incremental_revenue_high"]].assign(truth=truth)
    out["covered"] = (out["incremental_revenue_low"] <= out["truth"]) & (out["truth"] <= out["incremental_revenue_high"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--days", type=int, default=60)
    args = ap.parse_args()
    started = time.perf_counter()
    rows = []
    for seed in range(1, args.seeds + 1):
        contacts, cf = world_with_truth(WorldConfig(n_users=args.users, days=args.days, seed=seed))
        cov = coverage(contacts, cf).assign(seed=seed)
        rows.append(cov)
        print(f"seed {seed}: {len(cov)} campaigns, interval holds the truth in {cov['covered'].mean():.1%}; "
              f"mean |estimate - truth| {np.abs(cov['incremental_revenue'] - cov['truth']).mean():.1f}, "
              f"mean half-width {((cov['incremental_revenue_high'] - cov['incremental_revenue_low']) / 2).mean():.1f}")
    allc = pd.concat(rows)
    print(f"all: {len(allc)} campaign intervals, {allc['covered'].mean():.1%} hold the simulated truth "
          f"(target >= 90 %); {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
