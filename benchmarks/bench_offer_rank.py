"""The NBA's offer choice against the truth's and the history oracle's, on the NBA's own sends (issue 16 item 3).

Usage (after `make demo`, on a copy of its home): python benchmarks/bench_offer_rank.py --home DIR [--users 3000]

The NBA policy is replayed as `nextbest evaluate` replays it (operator caps). On every send it makes, each eligible
offer is valued at the NBA's channel and hour three ways: by the truth (expected incremental revenue), by the
history oracle's beliefs (simulation/beliefs.py: interests and channel responses as the history tells them, every
other trait exact) and by the NBA's own expected value. Per first send of a user's week (days 0, 7) and per later
send: how often the NBA's offer is the truth's best, the within-user rank correlation of each valuation with the
truth's, what the history oracle's offer would have earned at the same channel and hour, and what a per-offer
calibration of the NBA's values (each offer's mean over-estimate, read from the truth: an upper bound) would earn.
Then, on the later sends, the history oracle's gain split by the kinds of the two offers. The truth is read only
here, to measure.

How much of the history oracle's coupon advantage could any policy on this history have (sixth session)? Two more
believers value every offer the same way with the one trait the history does not show replaced: each user's price
sensitivity (what moves a coupon's purchase) as the mean of the users with the same `city_tier` (a profile
column: the best any model reading the profile can know; the means come from the truth, so an upper bound), and
as the population's mean (knowing nothing of it).
"""

from __future__ import annotations

import dataclasses
import platform
import time

import numpy as np
import pandas as pd
from bench_history_gap import Recorded, arguments, offer_values, sampled
from scipy.stats import spearmanr

from nextbest.features.contract import STAGES
from nextbest.features.settings import Settings
from nextbest.pipelines.evaluate import model_policies, operator_rules
from nextbest.simulation.beliefs import history_beliefs
from nextbest.simulation.replay import ReplayConfig, replay


def main() -> None:
    args = arguments()
    started, cpu0 = time.perf_counter(), time.process_time()
    settings = Settings(home=args.home)
    config = ReplayConfig(rules=operator_rules(settings))
    tables, period = sampled(settings, config, args.users)
    nba, _ = model_policies(settings, period)
    believed = dataclasses.replace(period, truth=history_beliefs(period.truth, tables, period.user_ids, period.start))
    sensitivity = period.truth.price_sensitivity.astype(float)
    tier = tables["users"].set_index("user_id")["city_tier"].reindex(period.user_ids).to_numpy()
    by_tier = pd.Series(sensitivity).groupby(tier).transform("mean").to_numpy()
    knowable = {name: dataclasses.replace(believed, truth=dataclasses.replace(
        believed.truth, price_sensitivity=value.astype(np.float32)))
        for name, value in (("tier", by_tier), ("mean", np.full_like(sensitivity, sensitivity.mean())))}
    print(f"price sensitivity: Spearman with city_tier {spearmanr(sensitivity, tier).statistic:.3f}; variance explained "
          f"by the tier means {1 - np.var(sensitivity - by_tier) / np.var(sensitivity):.1%}")
    cost = period.channels["cost"].to_numpy(float)
    log = []

    def record(s, a, rows):
        c, h = a.channel[rows], a.hour[rows]
        truth, history = offer_values(period, s, rows, c, h), offer_values(believed, s, rows, c, h)
        known = {k: offer_values(b, s, rows, c, h) for k, b in knowable.items()}
        model = nba.ev[rows][np.arange(len(rows)), :, c] + cost[c][:, None]  # the NBA's value before the channel's cost
        log.append((s.day % 7 == 0, a.offer[rows], truth, history, model, s.eligible[rows], known, c, rows))

    replay(period, Recorded(nba, record), config)
    kind, names = period.offers["kind"].to_numpy(), period.offers["offer_id"].tolist()
    channel_names = period.channels.index.to_numpy() if period.channels.index.name == "channel" else \
        period.channels["channel"].to_numpy()
    stage_names = np.array(STAGES, dtype=object)
    # Each offer's mean model value over its mean true value, over every eligible (send, offer): the calibration bound.
    model_sum, truth_sum = np.zeros(len(names)), np.zeros(len(names))
    for _, _, truth, _, model, ok, *_ in log:
        model_sum += np.where(ok, model, 0).sum(0)
        truth_sum += np.where(ok, truth, 0).sum(0)
    ratio = np.divide(model_sum, truth_sum, out=np.ones(len(names)), where=truth_sum > 0)
    sends, kinds = [], []
    for first, o, truth, history, model, ok, known, c, rows in log:
        i = np.arange(len(o))
        masked = np.where(ok, truth, -np.inf)
        got = truth[i, o]
        hist = np.where(ok, history, -np.inf).argmax(1)
        pick = {k: np.where(ok, v, -np.inf).argmax(1) for k, v in known.items()}
        calibrated = np.where(ok, model / ratio, -np.inf).argmax(1)
        rho = [spearmanr(model[j, ok[j]], truth[j, ok[j]]).statistic if ok[j].sum() > 2 else np.nan for j in i]
        rho_h = [spearmanr(history[j, ok[j]], truth[j, ok[j]]).statistic if ok[j].sum() > 2 else np.nan for j in i]
        sends.append(pd.DataFrame({"send": np.where(first, "first of the week", "second or third"), "nba": got,
                                   "truth's best": masked.max(1), "history oracle's offer": truth[i, hist],
                                   "ps from tier": truth[i, pick["tier"]], "ps unknown": truth[i, pick["mean"]],
                                   "nba calibrated per offer": truth[i, calibrated],
                                   "nba offer = truth's best": (masked > got[:, None]).sum(1) == 0,
                                   "rank corr. nba": rho, "rank corr. history oracle": rho_h, "eligible": ok.sum(1),
                                   "channel": channel_names[c], "stage": stage_names[period.stage[rows]]}))
        if not first:
            kinds.append(pd.DataFrame({"nba offer": kind[o], "history oracle's offer": kind[hist], "nba": got,
                                       "history oracle": truth[i, hist], "ps from tier": truth[i, pick["tier"]],
                                       "ps unknown": truth[i, pick["mean"]]}))
    table = pd.concat(sends).groupby("send").agg(
        sends=("nba", "size"), nba=("nba", "sum"), history_oracles_offer=("history oracle's offer", "sum"),
        history_oracle_ps_from_tier=("ps from tier", "sum"), history_oracle_ps_unknown=("ps unknown", "sum"),
        calibrated=("nba calibrated per offer", "sum"), truths_best=("truth's best", "sum"),
        nba_is_truths_best=("nba offer = truth's best", "mean"), rank_corr_nba=("rank corr. nba", "mean"),
        rank_corr_history_oracle=("rank corr. history oracle", "mean"), eligible=("eligible", "mean"))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
    load = " ".join(open("/proc/loadavg").read().split()[:3])
    print(f"{platform.node()} {pd.Timestamp.now(tz='UTC'):%Y-%m-%d %H:%M}, {args.users} users, 14 days, {config.rules}; "
          f"wall {wall:.0f} s, CPU {cpu:.0f} s, load {load}")
    print("\nthe NBA's sends, each eligible offer valued at the NBA's channel and hour (truth: expected incremental revenue)")
    print(table.to_markdown(floatfmt=",.3f"))
    print("\nper offer: the NBA's mean value over the truth's, on the sends where it was eligible")
    print(pd.DataFrame({"offer": names, "kind": kind, "model / truth": ratio}).to_markdown(index=False, floatfmt=".3f"))
    print("\nlater sends: the history oracle's offer against the NBA's, by the two offers' kinds")
    k = pd.concat(kinds).groupby(["nba offer", "history oracle's offer"]).agg(
        sends=("nba", "size"), nba=("nba", "sum"), history_oracle=("history oracle", "sum"),
        ps_from_tier=("ps from tier", "sum"), ps_unknown=("ps unknown", "sum"))
    print(k.assign(gain=k["history_oracle"] - k["nba"]).to_markdown(floatfmt=",.0f"))
    every = pd.concat(sends)
    for by in ("channel", "stage"):
        what = "channel" if by == "channel" else "user's funnel stage at the period's start"
        print(f"\nall sends by the NBA's {what}: the history oracle's offer against the NBA's")
        t = every.groupby(by).agg(sends=("nba", "size"), nba=("nba", "sum"), history_oracle=("history oracle's offer", "sum"),
                                  ps_unknown=("ps unknown", "sum"), rank_corr_nba=("rank corr. nba", "mean"))
        print(t.assign(gain=t["history_oracle"] - t["nba"], gain_share=lambda x: x["gain"] / x["gain"].sum())
              .to_markdown(floatfmt=",.3f"))


if __name__ == "__main__":
    main()
