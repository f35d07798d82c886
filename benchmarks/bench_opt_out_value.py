"""What an opt-out costs: the learned `opt_out_cost` beside the truth's loss of a channel, and the opt-out cost's
effect on the NBA's and propensity-only's revenue and opt-outs (issue 16 item 5, eighth session).

Usage (after `make demo`, on a copy of its home): python benchmarks/bench_opt_out_value.py --home DIR
  [--users 3000] [--seeds 11,5] [--scales 1,2,3,4]

For each seed (the replay's user sample and its draws, as `nextbest evaluate` replays them under the home's
operator caps with its spacing):

1. **Cost scales**: the NBA (uplift EV) and propensity-only, each channel's `opt_out_cost` (the home's operator
   config: learned from the contact log, serving.config.observed_channel_values) times each scale, replayed over the
   same fresh 14 days beside the history oracle: incremental revenue, contacts, opt-outs (unsubscribes + complaints,
   the truth's expected counts) per 1,000 contacts, sends per channel.
2. **The truth's loss of a channel** (`--channel-loss`): the NBA replayed with one channel closed for every user
   from the start (as if each had opted out of it) against the NBA with every channel; the loss per user is the
   difference of the truth's expected revenue, weighted by the user's sends on that channel in the open replay (an
   opt-out strikes in proportion to sends), per day, beside the learned cost per day of its horizon
   (CHANNEL_VALUE_DAYS). The other channels take over what they can: the loss is net of that.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd

from nextbest.features.settings import Settings
from nextbest.pipelines import evaluate
from nextbest.serving.config import CHANNEL_VALUE_DAYS, load_config
from nextbest.simulation.beliefs import history_beliefs
from nextbest.simulation.policies import OraclePolicy
from nextbest.simulation.replay import ReplayConfig, Rules, replay


def scaled(config, scale: float):
    """The operator config with every channel's opt-out cost times `scale`."""
    return config.model_copy(update={"channels": [
        c.model_copy(update={"opt_out_cost": c.opt_out_cost * scale}) for c in config.channels]})


def measured(seed: int, policy: str, scale: float, result) -> dict:
    m = result.metrics
    return {"seed": seed, "policy": policy, "cost scale": scale, "revenue": m["incremental_revenue"],
            "contacts": m["contacts"], "opt-outs /1k": m["opt_outs_per_1k"], "violations": m["violations"],
            **{f"{ch}": int(v) for ch, v in result.sends["channel"].value_counts().sort_index().items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--users", type=int, default=3_000)
    parser.add_argument("--seeds", default="11,5")
    parser.add_argument("--scales", default="1,2,3,4")
    parser.add_argument("--channel-loss", action="store_true")
    args = parser.parse_args()
    settings = Settings(home=args.home)
    world, tables = evaluate.load_period(settings)
    models = evaluate.champion_set(settings)
    base = load_config(settings.home / "operator.yaml")
    rows, losses = [], []
    for seed in (int(s) for s in args.seeds.split(",")):
        started, cpu = time.perf_counter(), time.process_time()
        config = ReplayConfig(rules=Rules.of(base.caps), seed=seed)
        period = world.sample(args.users, seed=seed)
        s = evaluate.policy_scores(settings, period, models)
        beliefs = history_beliefs(period.truth, tables, period.user_ids, period.start)
        rows.append(measured(seed, evaluate.HISTORY_ORACLE, np.nan, replay(
            period, OraclePolicy(period, name=evaluate.HISTORY_ORACLE, beliefs=beliefs), config)))
        for scale in (float(x) for x in args.scales.split(",")):
            for name, uplift in (("nba (uplift)", True), ("propensity only", False)):
                rows.append(measured(seed, name, scale, replay(period, s.policy(name, uplift, config=scaled(s.config, scale)),
                                                                config)))
        if args.channel_loss:
            full = replay(period, s.policy("nba (uplift)", True), config)
            revenue = evaluate.revenue_per_user(full, period.n_users)
            for c, channel in enumerate(s.config.channel_names()):
                closed = period.suppressed.copy()
                closed[:, c] = True
                without = replay(dataclasses.replace(period, suppressed=closed), s.policy("nba (uplift)", True), config)
                sends = full.sends[full.sends["channel"] == channel].groupby("user_idx").size().reindex(
                    range(period.n_users), fill_value=0).to_numpy()
                lost = revenue - evaluate.revenue_per_user(without, period.n_users)
                loss = float((sends * lost).sum() / max(int(sends.sum()), 1)) / config.days
                learned = s.config.channels[c].opt_out_cost / CHANNEL_VALUE_DAYS
                losses.append({"seed": seed, "channel": channel, "NBA sends": int(sends.sum()),
                               "users it reaches": int((sends > 0).sum()), "truth's loss per day": loss,
                               "learned cost per day": learned, "truth / learned": loss / learned if learned else np.nan})
        print(f"seed {seed}: {time.perf_counter() - started:.0f} s wall, {time.process_time() - cpu:.0f} CPU-s", flush=True)
    print(f"{platform.node()} {platform.processor() or platform.machine()} {pd.Timestamp.now(tz='UTC'):%Y-%m-%d %H:%M} "
          f"UTC, {args.users} users, 14 days, load average {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=",.3f"))
    if losses:
        print()
        print(pd.DataFrame(losses).to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
