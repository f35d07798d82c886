"""The whole gap between the NBA and the history oracle, in parts: whom to contact, send hour, channel, offer, and
the caps and spacing (issue 16 item 1, seventh session).

Usage (after `make demo`, on a copy of its home): python benchmarks/bench_gap_parts.py --home DIR [--users 3000]

Both policies are replayed as `nextbest evaluate` replays them, under the home's operator caps with its spacing rule
(the yardstick of bench_long_term.py). The gap is the history oracle's incremental revenue in its own replay minus the
NBA's in its own. It splits, exactly, into:

- **caps and spacing (trajectory)**: the history oracle's own replay minus what it would choose on the NBA's daily
  situations (shadow replay, bench_history_gap.py): which days and users its earlier contacts leave open, the
  fatigue they leave, the per-offer cap's memory of its own offers;
- on the NBA's situations (the same users allowed, the same offers eligible, the same fatigue):
  - **whom: the history oracle contacts, the NBA does not** (the history oracle's value of those sends), and
    **whom: the NBA contacts, the history oracle does not** (minus the NBA's value of them);
  - on the users both contact, a chain of swaps, each valued by the truth (expected incremental revenue of the send,
    at half past the hour): the NBA's (offer, channel, hour) -> the history oracle's best hour for the NBA's channel
    (**send hour**) -> the history oracle's channel at its hour (**channel**) -> the history oracle's offer (**offer**);
    and the other order (offer first, then hour, then channel) to show how much the parts depend on it;
- the half-past valuation against the replays' own random minute (a residual, reported).

The history oracle's best hour per channel is its own rule (simulation/policies.py OraclePolicy: the believed P(open)
at each allowed hour). The truth is read only here, to measure.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from bench_history_gap import arguments, sampled, true_value

from nextbest.features.settings import Settings
from nextbest.pipelines.evaluate import HISTORY_ORACLE, model_policies, operator_rules
from nextbest.simulation import response
from nextbest.simulation.beliefs import history_beliefs
from nextbest.simulation.catalog import CHANNELS
from nextbest.simulation.clock import HOUR_NS, utc_offset_ns
from nextbest.simulation.policies import OraclePolicy
from nextbest.simulation.replay import Period, ReplayConfig, Situation, replay


def believed_hours(beliefs, s: Situation) -> np.ndarray:
    """(n, C) the history oracle's best allowed local hour per channel (its own rule, OraclePolicy)."""
    n = len(s.recent)
    u = np.arange(n)
    offset = utc_offset_ns(beliefs.tz, np.full(n, s.at.value))
    best = np.zeros((n, len(CHANNELS)), dtype=np.int64)
    for c in range(len(CHANNELS)):
        hours = np.flatnonzero(s.hour_ok[c])
        p = np.stack([response.p_open(beliefs, u, np.full(n, c), np.full(n, float(h)), s.recent,
                                      np.full(n, s.at.value + h * HOUR_NS - offset)) for h in hours], axis=1)
        best[:, c] = hours[p.argmax(axis=1)]
    return best


@dataclass
class Recorder:
    """Acts as `lead`, values its sends by the truth at half past; with `other`, also what `other` would choose."""

    period: Period
    lead: object
    other: object | None = None
    beliefs: object = None
    name: str = "recorded"
    log: list = field(default_factory=list)

    def choose(self, s: Situation, rng: np.random.Generator):
        a = self.lead.choose(s, rng)
        v = lambda rows, o, c, h: true_value(self.period, s, rows, o, c, h)  # noqa: E731
        if self.other is None:
            rows = np.flatnonzero(a.offer >= 0)
            self.log.append(pd.DataFrame({"day": s.day, "value": v(rows, a.offer[rows], a.channel[rows], a.hour[rows])}))
            return a
        b = self.other.choose(s, np.random.default_rng(0))
        hours = believed_hours(self.beliefs, s)
        sa, sb = a.offer >= 0, b.offer >= 0
        only_b = np.flatnonzero(sb & ~sa)
        only_a = np.flatnonzero(sa & ~sb)
        both = np.flatnonzero(sa & sb)
        ao, ac, ah = a.offer[both], a.channel[both], a.hour[both]
        bo, bc, bh = b.offer[both], b.channel[both], b.hour[both]
        oracle_hour_at_ac = hours[both, ac]
        frame = pd.DataFrame({
            "day": s.day,
            "nba": v(both, ao, ac, ah),
            "nba_oracle_hour": v(both, ao, ac, oracle_hour_at_ac),
            "nba_offer_oracle_channel_hour": v(both, ao, bc, bh),
            "history_oracle": v(both, bo, bc, bh),
            "oracle_offer_nba_channel_hour": v(both, bo, ac, ah),
            "oracle_offer_nba_channel_oracle_hour": v(both, bo, ac, oracle_hour_at_ac),
            "same_offer": ao == bo, "same_channel": ac == bc, "same_hour": ah == oracle_hour_at_ac})
        self.log.append(("both", frame))
        self.log.append(("oracle only", pd.DataFrame({"day": s.day, "user": only_b, "value": v(
            only_b, b.offer[only_b], b.channel[only_b], b.hour[only_b])})))
        self.log.append(("nba only", pd.DataFrame({"day": s.day, "user": only_a, "value": v(
            only_a, a.offer[only_a], a.channel[only_a], a.hour[only_a])})))
        return a


def main() -> None:
    args = arguments()
    started, cpu0 = time.perf_counter(), time.process_time()
    settings = Settings(home=args.home)
    config = ReplayConfig(rules=operator_rules(settings))
    tables, period = sampled(settings, config, args.users)
    nba, propensity_only = model_policies(settings, period)
    beliefs = history_beliefs(period.truth, tables, period.user_ids, period.start)
    oracle = OraclePolicy(period, name=HISTORY_ORACLE, beliefs=beliefs)

    own = {}
    for policy in (nba, oracle, propensity_only):
        rec = Recorder(period, policy)
        result = replay(period, rec, config)
        own[policy.name] = (float(pd.concat(rec.log)["value"].sum()), result.metrics)
    shadow = Recorder(period, nba, oracle, beliefs)
    result = replay(period, shadow, config)
    parts = {k: pd.concat([f for key, f in shadow.log if key == k], ignore_index=True)
             for k in ("both", "oracle only", "nba only")}
    both = parts["both"]
    s = both.sum(numeric_only=True)
    nba_own, nba_metrics = own[nba.name]
    ho_own, ho_metrics = own[HISTORY_ORACLE]
    ho_shadow = s["history_oracle"] + parts["oracle only"]["value"].sum()
    nba_shadow = s["nba"] + parts["nba only"]["value"].sum()
    rows = [
        ("caps and spacing: the history oracle's own days and users against the NBA's", ho_own - ho_shadow),
        ("whom: the history oracle contacts, the NBA does not", parts["oracle only"]["value"].sum()),
        ("whom: the NBA contacts, the history oracle does not", -parts["nba only"]["value"].sum()),
        ("send hour (the history oracle's best hour on the NBA's channel)", s["nba_oracle_hour"] - s["nba"]),
        ("channel (the history oracle's channel at its hour)", s["nba_offer_oracle_channel_hour"] - s["nba_oracle_hour"]),
        ("offer (the history oracle's offer)", s["history_oracle"] - s["nba_offer_oracle_channel_hour"]),
        ("check: the NBA's shadow replay against its own (0: the same sends)", nba_shadow - nba_own),
    ]
    gap = ho_own - nba_own
    table = pd.DataFrame(rows, columns=["part", "revenue"])
    table["share_of_gap"] = table["revenue"] / gap
    table.loc[len(table)] = ["gap (history oracle - NBA, own replays, half past)", gap, 1.0]
    other_order = pd.DataFrame([
        ("offer first (the history oracle's offer at the NBA's channel and hour)", s["oracle_offer_nba_channel_hour"] - s["nba"]),
        ("then send hour", s["oracle_offer_nba_channel_oracle_hour"] - s["oracle_offer_nba_channel_hour"]),
        ("then channel", s["history_oracle"] - s["oracle_offer_nba_channel_oracle_hour"])], columns=["part", "revenue"])
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
    load = " ".join(open("/proc/loadavg").read().split()[:3])
    print(f"{platform.node()} {pd.Timestamp.now(tz='UTC'):%Y-%m-%d %H:%M}, {args.users} users, 14 days, {config.rules}; "
          f"wall {wall:.0f} s, CPU {cpu:.0f} s, load {load}")
    print("\nown replays (expected incremental revenue, the replay's random minute / half past):")
    for name, (half, m) in own.items():
        print(f"  {name}: {m['incremental_revenue']:,.0f} / {half:,.0f}, {m['contacts']:,} contacts, "
              f"{m['opt_outs_per_1k']:.2f} opt-outs /1k")
    print(f"  NBA {nba_metrics['incremental_revenue'] / ho_metrics['incremental_revenue']:.1%} of the history oracle, "
          f"{nba_metrics['incremental_revenue'] / own[propensity_only.name][1]['incremental_revenue']:.3f}x propensity-only")
    print(f"\nthe NBA's situations: both contact {len(both):,}, only the history oracle {len(parts['oracle only']):,}, "
          f"only the NBA {len(parts['nba only']):,}; on both: same offer {both['same_offer'].mean():.0%}, same channel "
          f"{both['same_channel'].mean():.0%}, the NBA's hour = the history oracle's best on that channel "
          f"{both['same_hour'].mean():.0%}")
    print("\nthe gap in parts (chain: hour, then channel, then offer)")
    print(table.to_markdown(index=False, floatfmt=",.3f"))
    print("\nthe users both contact, the other order")
    print(other_order.to_markdown(index=False, floatfmt=",.1f"))
    both["week_send"] = np.where(both["day"] % 7 == 0, "first of the week", "later")
    by = both.groupby("week_send")[["nba", "nba_oracle_hour", "nba_offer_oracle_channel_hour", "history_oracle"]].sum()
    print("\nthe users both contact, by send of the week")
    print(by.assign(hour=by["nba_oracle_hour"] - by["nba"], channel=by["nba_offer_oracle_channel_hour"] - by["nba_oracle_hour"],
                    offer=by["history_oracle"] - by["nba_offer_oracle_channel_hour"]).to_markdown(floatfmt=",.0f"))


if __name__ == "__main__":
    main()
