"""Where the NBA policy loses against the oracle: true components swapped into the policy, each replayed.

Usage (after `make demo`, on its world): python benchmarks/bench_policy_losses.py [--users 4000]
Scores the evaluation sample with the champions exactly as `nextbest evaluate` does, then replays the same
14 days with policies that mix the models' parts with the simulated truth:

- the NBA's values at the true best send hours, and the true values at the NBA's hours (send-time loss);
- the true values fixed at the period start (what scoring once, not daily, costs);
- the funnel uplift's channel-and-hour arm with the true offer term, and the other way round;
- the truth with each user's interests, channel responses or both as the history tells them (the history
  oracle's beliefs, simulation/beliefs.py): what perfect models could reach on this history.

The truth is read only here, to measure; no policy under evaluation sees it.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time

import numpy as np
import pandas as pd

from nextbest.features.settings import Settings
from nextbest.pipelines.evaluate import (
    ModelPolicy,
    champion_set,
    latest_features,
    load_period,
    model_policies,
)
from nextbest.serving import engine
from nextbest.serving.config import catalog_config
from nextbest.simulation import response
from nextbest.simulation.beliefs import history_beliefs
from nextbest.simulation.catalog import CHANNELS
from nextbest.simulation.clock import HOUR_NS, utc_offset_ns
from nextbest.simulation.policies import OraclePolicy
from nextbest.simulation.replay import ReplayConfig, hour_ok_matrix, replay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=4_000)
    parser.add_argument("--days", type=int, default=14)
    args = parser.parse_args()
    started = time.perf_counter()
    settings, config = Settings(), ReplayConfig(days=args.days)
    world, tables = load_period(settings)
    period = world.sample(args.users, seed=config.seed)
    models = champion_set(settings)
    if "uplift" not in models.models or not hasattr(models.models["uplift"].model, "lift"):
        raise SystemExit("needs a funnel uplift champion: run `make demo` (or `nextbest train uplift`) first")
    nba, propensity = model_policies(settings, period, models=models)
    truth, offers = period.truth, period.offers
    n, n_o, n_c = period.n_users, len(offers), len(CHANNELS)
    u = np.arange(n)
    value, cost = offers["value"].to_numpy(float), period.channels["cost"].to_numpy(float)
    at = period.start.value
    offset = utc_offset_ns(truth.tz, np.full(n, at))
    none = np.zeros(n)

    def send_ns(hours: np.ndarray) -> np.ndarray:
        send = at + hours * HOUR_NS - offset
        return np.where(send < at, send + 24 * HOUR_NS, send)

    def true_open(hours: np.ndarray, t=truth) -> np.ndarray:  # delivered and opened, per (user, channel) at its hour
        return np.stack([response._DELIVERY[c] * response.p_open(t, u, np.full(n, c), hours[:, c].astype(float), none,
                                                                   send_ns(hours[:, c])) for c in range(n_c)], axis=1)

    # The true offer term: clicked and bought, times the offer's value (the oracle's EV is open x this - cost).
    def true_offer_term(t) -> np.ndarray:  # (U, O) under the traits `t`
        return np.stack([response.p_click(t, offers, u, np.full(n, o))
                         * response.p_buy(t, offers, u, np.full(n, o), none, np.full(n, at)) * value[o]
                         for o in range(n_o)], axis=1)

    offer_t = true_offer_term(truth)
    hour_ok = hour_ok_matrix(period.channels)
    best_hours = np.zeros((n, n_c), dtype=np.int64)
    for c in range(n_c):
        allowed = np.flatnonzero(hour_ok[c])
        p = np.stack([response.p_open(truth, u, np.full(n, c), np.full(n, float(h)), none, np.full(n, at + h * HOUR_NS - offset))
                      for h in allowed], axis=1)
        best_hours[:, c] = allowed[p.argmax(axis=1)]

    # The funnel's factors at the NBA's hours, as serving computes them.
    users = latest_features(settings, period.user_ids)
    op = catalog_config(period.offers, period.channels)
    value_op = np.array([o.value * o.lever for o in op.offers])
    p_open = engine.send_time_scores(models, users, op)  # the open factor reads the send-time champion too
    engage_m, lift_m = engine.funnel_factors(models, users, op, nba.hours)
    open_m = engine.open_factor(models, engage_m, p_open, nba.hours)
    offer_m = lift_m * value_op[None]
    _, uplift_at_best = engine.conversion_scores(models, users, op, best_hours, p_open=p_open)
    p_churn = engine.churn_scores(models, users, op)
    retention = np.array([o.kind == "retention" for o in op.offers])
    gain = (value_op[None] * (1 + op.churn_boost * p_churn[:, None] * retention[None]))[:, :, None]

    def ev(open_part: np.ndarray, offer_part: np.ndarray) -> np.ndarray:
        return open_part[:, None, :] * offer_part[:, :, None] - cost[None, None, :]

    # The truth, except each user's interests and channel responses: as well as the history tells them (the
    # history oracle's beliefs, simulation/beliefs.py), the most any learner can know of them.
    beliefs = history_beliefs(truth, tables, period.user_ids, period.start)
    offer_h = true_offer_term(dataclasses.replace(truth, interest=beliefs.interest))
    open_h = true_open(best_hours, dataclasses.replace(truth, channel_response=beliefs.channel_response))

    policies = [
        nba, propensity,
        ModelPolicy("NBA values at the true best hours", uplift_at_best * gain - cost, best_hours),
        ModelPolicy("true values at the NBA's hours", ev(true_open(nba.hours), offer_t), nba.hours),
        ModelPolicy("true values, scored once", ev(true_open(best_hours), offer_t), best_hours),
        ModelPolicy("NBA open arm x true offer term", ev(open_m, offer_t), nba.hours),
        ModelPolicy("true open x NBA offer arm", ev(true_open(nba.hours), offer_m), nba.hours),
        ModelPolicy("truth, interests from the history", ev(true_open(best_hours), offer_h), best_hours),
        ModelPolicy("true open x interests from the history", ev(true_open(nba.hours), offer_h), nba.hours),
        ModelPolicy("truth, channel response from the history", ev(open_h, offer_t), best_hours),
        ModelPolicy("truth, interests and channel response from the history", ev(open_h, offer_h), best_hours),
        OraclePolicy(period),
    ]
    rows = []
    for policy in policies:
        m = replay(period, policy, config).metrics
        rows.append({"policy": policy.name, "contacts": m["contacts"], "incremental_revenue": m["incremental_revenue"]})
    table = pd.DataFrame(rows).set_index("policy")
    table["share_of_oracle"] = table["incremental_revenue"] / table.loc["oracle", "incremental_revenue"]
    pd.set_option("display.width", 200)
    print(table.round(3).to_string())
    print(f"send hour = the true best hour for {np.mean(nba.hours == best_hours):.0%} of (user, channel); "
          f"best offer agreement {np.mean(offer_m.argmax(1) == offer_t.argmax(1)):.0%}, first-contact offer value "
          f"{offer_t[u, offer_m.argmax(1)].sum() / offer_t.max(axis=1).sum():.0%} of the best offer's")
    print(f"machine: {platform.machine()} {platform.python_version()}; {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
