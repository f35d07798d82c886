"""The long-term cost in the objective: policies with and without the expected loss of an unsubscribe or complaint.

Usage (after `make demo`, on a copy of its home): python benchmarks/bench_long_term.py --home DIR [--users 5000]
  [--costs 0,10,learned] [--spacing 2/168,0] [--seed 11]
For each opt-out cost (currency per unsubscribe or complaint, the same on every channel; `learned`: each channel's
value per user as the contact log shows it, serving.config.observed_channel_values) the operator config of
the home is rewritten (with each channel's opt-out rate as the contact log shows it) and every policy is replayed over the same fresh period (`nextbest evaluate`'s replay):
contacts, incremental revenue, share of the history oracle, and unsubscribes and complaints per 1,000 contacts.
`--spacing`: the caps' spacing rule for each set (N/H: no contact after N contacts in the last H hours; 0: off), applied
to every policy (an operator cap); with both an "on" and "off" setting, a last table puts the NBA with spacing beside
the other policies without it (each policy's replay is its own, so the two sets combine). `--seed`: the replay's seed
(the sampled users and the fresh period's draws; `nextbest evaluate`'s default 11).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import pandas as pd

from nextbest.features.ingest import read_raw
from nextbest.features.settings import Settings
from nextbest.pipelines.evaluate import evaluate_policies
from nextbest.serving.config import load_config, observed_channel_values, observed_opt_out_rates, write_config
from nextbest.simulation.replay import ReplayConfig, Rules

# Unsubscribes and complaints are the truth's expected counts (the replay's sum of each send's probability).
SHOWN = ["contacts", "incremental_revenue", "share_of_history_oracle", "unsubscribes_per_1k", "complaints_per_1k",
         "opt_outs_per_1k", "violations"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--costs", default="0,10,30,learned")
    parser.add_argument("--spacing", default="", help="comma-separated N/H or 0 (default: the home's caps)")
    parser.add_argument("--seed", type=int, default=ReplayConfig().seed, help="the replay's seed (sampled users, draws)")
    args = parser.parse_args()
    settings = Settings(home=args.home)
    path = settings.home / "operator.yaml"
    base = load_config(path)
    contacts = read_raw(settings.raw_dir, "contacts")
    learned, values = observed_opt_out_rates(contacts), observed_channel_values(contacts)
    print("opt-out rates the contact log shows, per channel:", {k: round(v, 4) for k, v in learned.items()})
    print("what an opt-out loses, per channel (revenue per user reached, 90 days):", values)
    rows = []
    spacings = [(base.caps.spacing_contacts, base.caps.spacing_hours)] if not args.spacing else [
        (int(x.split("/")[0]), int(x.split("/")[1]) if "/" in x else base.caps.spacing_hours) for x in args.spacing.split(",")]
    for cost in args.costs.split(","):
        for n, hours in spacings:
            config = base.model_copy(update={"channels": [c.model_copy(update={
                "opt_out_cost": values.get(c.channel, 0.0) if cost == "learned" else float(cost),
                "opt_out_rate": learned.get(c.channel, c.opt_out_rate)}) for c in base.channels],
                "caps": base.caps.model_copy(update={"spacing_contacts": n, "spacing_hours": hours})})
            write_config(config, path, note=f"bench_long_term.py: opt_out_cost {cost} on every channel, spacing {n}/{hours}")
            started, cpu = time.perf_counter(), time.process_time()
            table, _ = evaluate_policies(settings, ReplayConfig(rules=Rules.of(config.caps), seed=args.seed), users=args.users, ope_users=2_000)
            base_revenue = table.loc["propensity only", "incremental_revenue"]
            for policy in ("nba (uplift)", "propensity only", "history oracle", "oracle", "blast"):
                rows.append({"opt_out_cost": cost, "spacing": f"{n}/{hours}" if n else "off", "policy": policy,
                             **table.loc[policy, SHOWN].to_dict(),
                             "x_propensity_only": table.loc[policy, "incremental_revenue"] / base_revenue,
                             "seconds": time.perf_counter() - started, "cpu_s": time.process_time() - cpu})
    write_config(base, path, note="restored by bench_long_term.py")
    out = pd.DataFrame(rows)
    print(f"{platform.node()} {platform.processor() or platform.machine()} {pd.Timestamp.now(tz='UTC'):%Y-%m-%d}, "
          f"{args.users} users, 14 days, replay seed {args.seed}, load average {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(out.to_markdown(index=False, floatfmt=".3f"))
    off, on = out[out["spacing"] == "off"], out[out["spacing"] != "off"]
    for cost in args.costs.split(",") if len(off) and len(on) else []:
        a, b = off[off["opt_out_cost"] == cost].set_index("policy"), on[on["opt_out_cost"] == cost].set_index("policy")
        nba = b.loc["nba (uplift)", "incremental_revenue"]
        print(f"\nopt_out_cost {cost}: the NBA with spacing ({nba:,.0f}, {b.loc['nba (uplift)', 'contacts']:,.0f} contacts, "
              f"{b.loc['nba (uplift)', 'opt_outs_per_1k']:.2f} opt-outs /1k) against the others without it: "
              f"{nba / a.loc['history oracle', 'incremental_revenue']:.1%} of the history oracle "
              f"({a.loc['history oracle', 'opt_outs_per_1k']:.2f} /1k), "
              f"{nba / a.loc['propensity only', 'incremental_revenue']:.2f}x propensity-only "
              f"({a.loc['propensity only', 'opt_outs_per_1k']:.2f} /1k)")


if __name__ == "__main__":
    main()
