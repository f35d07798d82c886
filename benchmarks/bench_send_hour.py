"""How good is the send hour: the send-time champion's hour against the truth and against plain baselines.

Usage (after `make demo`, on a copy of its home): python benchmarks/bench_send_hour.py --home DIR [--users 5000]
  [--bands-home DIR]

For every sampled user and consented channel, each rule picks a local hour among the channel's allowed hours:
- `model`: the send-time champion's best allowed hour (serving's and the replay's choice, `engine.send_time_scores`);
- `activity share`: the argmax of the user's smoothed activity share `open_share_hXX` (the time-profile features);
- `own history`: the user's own best hour in the logged sends (opens / sends per local hour, all channels pooled,
  smoothed over neighbouring hours and shrunk towards the population);
- `population`: the channel's best hour in the logged sends;
- `truth`: the best allowed hour under the simulator's truth (the yardstick).
Each hour is valued by the truth's P(open) of a send at a random minute of it (at the period start, no fatigue), as
a share of the truth's best allowed hour, and by its distance to the user's true peak hour. Broken down by how much
activity the user's rhythm features saw (`rhythm_events_365d`; `--bands-home`: as another home's features count it,
so two builds that count events differently, e.g. with and without the events a click caused, band the same users
alike). The truth is read only here, to measure; no rule under test sees it.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import pandas as pd

from nextbest.features.settings import Settings
from nextbest.pipelines.evaluate import champion_set, latest_features, load_period
from nextbest.serving import engine
from nextbest.serving.config import catalog_config, default_config, load_config
from nextbest.simulation import response
from nextbest.simulation.catalog import CHANNELS
from nextbest.simulation.clock import local_hour
from nextbest.simulation.replay import hour_ok_matrix

_MINUTES = np.arange(6) / 6 + 1 / 12  # six points inside each hour: a send at a random minute of it
_BANDWIDTH_H = 2.0  # circular smoothing of the per-hour open rates of the own-history baseline
_PRIOR_SENDS = 3.0  # the own-history rate shrinks towards the population's with the weight of this many sends


def true_open(period, hours_frac: np.ndarray) -> np.ndarray:
    """(U, C, 24): the truth's P(open) of a send in each local hour (mean over minutes), no fatigue, at the start."""
    t = period.truth
    n = t.n_users
    u = np.repeat(np.arange(n), len(CHANNELS) * 24 * len(hours_frac))
    c = np.tile(np.repeat(np.arange(len(CHANNELS)), 24 * len(hours_frac)), n)
    h = np.tile(np.repeat(np.arange(24), len(hours_frac)) + np.tile(hours_frac, 24), n * len(CHANNELS))
    p = response.p_open(t, u, c, h, np.zeros(len(u)), np.full(len(u), period.start.value))
    return p.reshape(n, len(CHANNELS), 24, len(hours_frac)).mean(axis=3)


def circular_smooth(counts: np.ndarray, bandwidth: float) -> np.ndarray:
    """Gaussian smoothing over the last axis (24 hours on a clock)."""
    gap = np.minimum(np.arange(24), 24 - np.arange(24))
    kernel = np.exp(-0.5 * (gap / bandwidth) ** 2)
    mat = np.stack([np.roll(kernel, h) for h in range(24)])  # mat[h, k] = kernel[(k - h) % 24]
    return counts @ mat.T


def logged_hour_rates(contacts: pd.DataFrame, users: pd.DataFrame, ids: np.ndarray, tz: np.ndarray,
                      before: pd.Timestamp) -> tuple[np.ndarray, np.ndarray]:
    """Own-history rates (U, 24) and the population's per channel (C, 24), from delivered sends before `before`."""
    ct = contacts[contacts["channel"].notna()]
    sent = pd.to_datetime(ct["sent_at"], utc=True)
    ct = ct[(sent < before).to_numpy() & pd.to_datetime(ct["delivered_at"], utc=True).notna().to_numpy()]
    index = pd.Index(users["user_id"].astype(str))
    row = index.get_indexer(ct["user_id"].astype(str))
    send_ns = pd.DatetimeIndex(pd.to_datetime(ct["sent_at"], utc=True)).asi8
    hour = np.floor(local_hour(tz[row], send_ns)).astype(int)
    opened = (pd.to_datetime(ct["opened_at"], utc=True) < before).to_numpy()
    c = pd.Index(CHANNELS).get_indexer(ct["channel"].astype(str))
    pop_sent, pop_open = np.zeros((len(CHANNELS), 24)), np.zeros((len(CHANNELS), 24))
    np.add.at(pop_sent, (c, hour), 1.0)
    np.add.at(pop_open, (c, hour), opened)
    population = pop_open / np.maximum(pop_sent, 1)
    sample = pd.Index(ids).get_indexer(ct["user_id"].astype(str))
    keep = sample >= 0
    own_sent, own_open = np.zeros((len(ids), 24)), np.zeros((len(ids), 24))
    np.add.at(own_sent, (sample[keep], hour[keep]), 1.0)
    np.add.at(own_open, (sample[keep], hour[keep]), opened[keep])
    pooled = pop_open.sum(0) / np.maximum(pop_sent.sum(0), 1)  # all channels, per hour
    own_sent, own_open = circular_smooth(own_sent, _BANDWIDTH_H), circular_smooth(own_open, _BANDWIDTH_H)
    own = (own_open + _PRIOR_SENDS * pooled) / (own_sent + _PRIOR_SENDS)
    return own, population


def pick(scores: np.ndarray, hour_ok: np.ndarray) -> np.ndarray:
    """(U, C): the best allowed hour of (U, C, 24) or (U, 24) scores."""
    if scores.ndim == 2:
        scores = np.broadcast_to(scores[:, None, :], (scores.shape[0], hour_ok.shape[0], 24))
    return np.where(hour_ok[None], scores, -np.inf).argmax(axis=2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", required=True)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bands-home", default=None, help="the home whose rhythm_events_365d bands the users "
                        "(default: --home)")
    args = parser.parse_args()
    started, cpu0 = time.perf_counter(), time.process_time()
    settings = Settings(home=args.home)
    world, tables = load_period(settings)
    period = world.sample(args.users, seed=args.seed)
    truth = period.truth
    operator = settings.operator_config or settings.home / "operator.yaml"
    config = catalog_config(period.offers, period.channels,
                            base=load_config(operator) if operator.exists() else default_config())
    assert list(config.channel_names()) == list(CHANNELS)
    hour_ok = hour_ok_matrix(period.channels)
    users = latest_features(settings, period.user_ids)
    models = champion_set(settings)
    p_model = engine.send_time_scores(models, engine.user_columns(users), config)
    shares = np.stack([np.nan_to_num(np.asarray(users.get(f"open_share_h{h:02d}", np.full(len(truth.tz), 1 / 24)),
                                                dtype=float), nan=1 / 24) for h in range(24)], axis=1)
    tz_all = world.truth.tz  # the users table's timezones, as indices (the same for every user row)
    own, population = logged_hour_rates(tables["contacts"], tables["users"], period.user_ids, tz_all, period.start)
    p_true = true_open(period, _MINUTES)
    rules = {"model": pick(p_model, hour_ok), "activity share": pick(shares, hour_ok), "own history": pick(own, hour_ok),
             "population": pick(np.broadcast_to(population[None], p_model.shape), hour_ok), "truth": pick(p_true, hour_ok)}
    n, n_c = len(truth.tz), len(CHANNELS)
    u = np.repeat(np.arange(n), n_c)
    c = np.tile(np.arange(n_c), n)
    consented = period.consent[u, c]
    best = p_true[u, c, rules["truth"][u, c]]
    banding = users if args.bands_home is None else latest_features(Settings(home=args.bands_home), period.user_ids)
    events = np.asarray(banding.get("rhythm_events_365d", np.zeros(n)), dtype=float)
    events = np.nan_to_num(events, nan=0.0)[u]
    band = pd.cut(events, [-1, 0, 10, 30, 100, np.inf], labels=["0", "1-10", "11-30", "31-100", ">100"])
    rows = []
    for name, hours in rules.items():
        h = hours[u, c]
        gap = np.abs(h + 0.5 - truth.preferred_hour[u]) % 24
        gap = np.minimum(gap, 24 - gap)
        frame = pd.DataFrame({"channel": np.asarray(CHANNELS)[c], "band": band, "p": p_true[u, c, h], "best": best,
                              "gap_h": gap, "same": h == rules["truth"][u, c]})[consented]
        for key, g in [("all", frame)] + [(f"events {b}", g) for b, g in frame.groupby("band", observed=True)]:
            rows.append({"rule": name, "users": key, "pairs": len(g), "P(open) of best": g["p"].sum() / g["best"].sum(),
                         "hours from true peak": g["gap_h"].mean(), "same hour as truth": g["same"].mean()})
        for ch, g in frame.groupby("channel"):
            rows.append({"rule": name, "users": f"channel {ch}", "pairs": len(g), "P(open) of best": g["p"].sum() / g["best"].sum(),
                         "hours from true peak": g["gap_h"].mean(), "same hour as truth": g["same"].mean()})
    out = pd.DataFrame(rows)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
    load = " ".join(open("/proc/loadavg").read().split()[:3])
    print(f"{platform.node()} {pd.Timestamp.now(tz='UTC'):%Y-%m-%d %H:%M}, {n} users, {int(consented.sum())} "
          f"consented pairs; wall {wall:.0f} s, CPU {cpu:.0f} s, load {load}")
    wide = out.pivot_table(index="users", columns="rule", values="P(open) of best", sort=False)
    print("\ntrue P(open) at the rule's hour, as a share of the best allowed hour's")
    print(wide[list(rules)].to_markdown(floatfmt=".3f"))
    print("\nhours from the user's true peak (a send at half past)")
    print(out.pivot_table(index="users", columns="rule", values="hours from true peak", sort=False)[list(rules)]
          .to_markdown(floatfmt=".2f"))
    print("\nsame hour as the truth's best allowed")
    print(out.pivot_table(index="users", columns="rule", values="same hour as truth", sort=False)[list(rules)]
          .to_markdown(floatfmt=".2f"))
    print("\npairs per row")
    print(out[out["rule"] == "model"].set_index("users")["pairs"].to_markdown())


if __name__ == "__main__":
    main()
