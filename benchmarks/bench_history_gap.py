"""Where the NBA loses against the history oracle under the operator config's caps, and what contact spacing is worth.

Usage (after `make demo`, on a copy of its home): python benchmarks/bench_history_gap.py --home DIR [--users 3000]

1. Shadow replay: the NBA policy is replayed as `nextbest evaluate` replays it; on every day's situation (the same
   caps, eligibility and fatigue the NBA's own sends made) the history oracle decides too, without acting. Each choice
   is valued by the truth (expected incremental revenue of the send), with the two halves swapped: the NBA's offer at
   the history oracle's channel and hour, and the history oracle's offer at the NBA's channel and hour. Per day of the
   period: the first send of a user's week (days 0 and 7) and the second and third ones.
2. Spacing: NBA, propensity-only and the history oracle under the operator caps without spacing, with the product's
   spacing rule (`caps.spacing_contacts` 2 in `spacing_hours` 168, the replay's `Rules`; the window the truth's
   fatigue counts), and under a weekly cap of 2 on the ledger's 7 local days.

The truth is read only here, to measure; no policy under evaluation sees it.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from nextbest.features.settings import Settings
from nextbest.pipelines.evaluate import HISTORY_ORACLE, load_period, model_policies, operator_rules
from nextbest.simulation import response
from nextbest.simulation.beliefs import history_beliefs
from nextbest.simulation.clock import DAY_NS, HOUR_NS, MINUTE_NS, utc_offset_ns
from nextbest.simulation.policies import OraclePolicy
from nextbest.simulation.replay import Period, ReplayConfig, Situation, replay


def half_past(period: Period, s: Situation, rows: np.ndarray, h: np.ndarray) -> np.ndarray:
    """UTC ns of half past local hour h on the day of `s` for users `rows` (the send time the truth values)."""
    at = s.at.value
    send = at + h * HOUR_NS + 30 * MINUTE_NS - utc_offset_ns(period.truth.tz[rows], np.full(len(rows), at))
    return np.where(send < at, send + DAY_NS, send)


def true_value(period: Period, s: Situation, rows: np.ndarray, o: np.ndarray, c: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Expected incremental revenue of sending offer o on channel c at local hour h (half past) on the day of `s`."""
    send = half_past(period, s, rows, h)
    value = period.offers["value"].to_numpy(dtype=float)
    return response.p_caused(period.truth, period.offers, rows, o, c, send, s.recent[rows]) * value[o]


def offer_values(period: Period, s: Situation, rows: np.ndarray, c: np.ndarray, h: np.ndarray) -> np.ndarray:
    """`true_value` of every offer (sends x offers) for the sends to users `rows` on channels c at local hours h."""
    return np.stack([true_value(period, s, rows, np.full(len(rows), o), c, h) for o in range(s.eligible.shape[1])],
                    axis=1)


@dataclass
class Recorded:
    """Chooses as `policy` does and hands each day's choice to `record(s, choice, rows)`, rows the users it sends to."""

    policy: object
    record: object
    name: str = "nba, recorded"

    def choose(self, s: Situation, rng: np.random.Generator):
        a = self.policy.choose(s, rng)
        self.record(s, a, np.flatnonzero(a.offer >= 0))
        return a


@dataclass
class Shadow:
    """Acts as `lead`; records what `other` would choose on the same situation and what each is worth."""

    period: Period
    lead: object
    other: object
    name: str = "shadow"
    log: list = field(default_factory=list)

    def choose(self, s: Situation, rng: np.random.Generator):
        a, b = self.lead.choose(s, rng), self.other.choose(s, np.random.default_rng(0))
        rows = np.flatnonzero((a.offer >= 0) & (b.offer >= 0))
        ao, ac, ah, bo, bc, bh = a.offer[rows], a.channel[rows], a.hour[rows], b.offer[rows], b.channel[rows], b.hour[rows]
        v = lambda o, c, h: true_value(self.period, s, rows, o, c, h)  # noqa: E731
        self.log.append(pd.DataFrame({
            "day": s.day, "nba": v(ao, ac, ah), "history_oracle": v(bo, bc, bh),
            "nba_offer_oracle_channel_hour": v(ao, bc, bh), "oracle_offer_nba_channel_hour": v(bo, ac, ah),
            "same_offer": ao == bo, "same_channel": ac == bc, "same_channel_hour": (ac == bc) & (ah == bh)}))
        return a


def arguments() -> argparse.Namespace:
    """--home (a trained home) and --users (how many to sample): the inputs of every history-oracle bench."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", required=True)
    parser.add_argument("--users", type=int, default=3_000)
    return parser.parse_args()


def sampled(settings: Settings, config: ReplayConfig, users: int):
    """The home's fresh period and its logged tables, `users` sampled with the replay's seed: (tables, period)."""
    world, tables = load_period(settings)
    return tables, world.sample(users, seed=config.seed)


def main() -> None:
    args = arguments()
    settings = Settings(home=args.home)
    caps = operator_rules(settings)  # the operator caps without spacing; spacing is the rows' second rule
    config = ReplayConfig(rules=dataclasses.replace(caps, spacing_contacts=0))
    tables, period = sampled(settings, config, args.users)
    nba, propensity_only = model_policies(settings, period)
    oracle = OraclePolicy(period, name=HISTORY_ORACLE,
                          beliefs=history_beliefs(period.truth, tables, period.user_ids, period.start))
    print(f"{platform.node()} {pd.Timestamp.now(tz='UTC'):%Y-%m-%d %H:%M}, {args.users} users, 14 days, {config.rules}")

    shadow = Shadow(period, nba, oracle)
    replay(period, shadow, config)
    sends = pd.concat(shadow.log, ignore_index=True)
    sends["week_send"] = np.where(sends["day"] % 7 == 0, "first of the week", "second or third")
    values = ["nba", "history_oracle", "nba_offer_oracle_channel_hour", "oracle_offer_nba_channel_hour"]
    table = sends.groupby("week_send")[values].sum()
    table.loc["all"] = sends[values].sum()
    agree = sends.groupby("week_send")[["same_offer", "same_channel", "same_channel_hour"]].mean()
    agree.loc["all"] = sends[["same_offer", "same_channel", "same_channel_hour"]].mean()
    print("\nsends both make on the NBA's situations: expected incremental revenue under the truth")
    print(table.join(agree).to_markdown(floatfmt=",.2f"))

    rows = []
    weekly2 = dataclasses.replace(config, rules=dataclasses.replace(config.rules, per_user_per_week=2))
    spaced = dataclasses.replace(config, rules=dataclasses.replace(config.rules, spacing_contacts=caps.spacing_contacts or 2,
                                                                   spacing_hours=caps.spacing_hours))
    for policy in (nba, propensity_only, oracle):
        for label, p, c in (("operator caps", policy, config), ("+ spacing (no contact after 2 in 168 h)", policy, spaced),
                            ("weekly cap 2 (ledger's local days)", policy, weekly2)):
            m = replay(period, p, c).metrics
            rows.append({"policy": policy.name, "rule": label, "contacts": m["contacts"],
                         "incremental_revenue": m["incremental_revenue"], "opt_outs_per_1k": m["opt_outs_per_1k"],
                         "violations": m["violations"]})
    out = pd.DataFrame(rows)
    base = out[out["rule"] == "operator caps"].set_index("policy")["incremental_revenue"]
    out["of_history_oracle"] = out["incremental_revenue"] / base[HISTORY_ORACLE]
    out["x_propensity_only"] = out["incremental_revenue"] / base["propensity only"]
    print("\nspacing (shares and multiples against the history oracle and propensity-only under the operator caps)")
    print(out.to_markdown(index=False, floatfmt=",.3f"))


if __name__ == "__main__":
    main()
