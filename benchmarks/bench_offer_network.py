"""The offer network as a challenger ranking of the NBA's offers (issue 16 item 6, seventh session).

Usage (on a copy of a demo home where `nextbest train offer-net` has run; the offer network is not trained by default):
  python benchmarks/bench_offer_network.py --home DIR [--users 3000]

The NBA policy is replayed as `nextbest evaluate` replays it (operator caps, spacing). On each of its sends the
eligible offers at the NBA's channel and hour are ranked four ways, and the offer each puts first is valued by the
history oracle's beliefs (simulation/beliefs.py: interests and channel responses as the history tells them, every
other trait exact) and by the truth (expected incremental revenue): the NBA's own expected value (uplift-based), the
conversion champion's P(convert) x value (propensity-only's ranking), the offer network's P(convert) x value, and the
mean of the two P(convert)s x value. The truth is read only here, to measure.
"""

from __future__ import annotations

import dataclasses
import platform
import time

import numpy as np
import pandas as pd
from bench_history_gap import Recorded, arguments, offer_values, sampled

from nextbest.features.settings import Settings
from nextbest.features.store import feature_store
from nextbest.pipelines.evaluate import (
    _CHUNK,
    champion_set,
    latest_features,
    model_policies,
    operator_rules,
)
from nextbest.serving import engine
from nextbest.serving.config import catalog_config, load_config
from nextbest.simulation.beliefs import history_beliefs
from nextbest.simulation.replay import ReplayConfig, replay
from nextbest.training.compiled import RequestGrid
from nextbest.training.registry import load_champions
from nextbest.training.scorers import REQUEST_COLUMNS


def offer_net_scores(settings: Settings, users: engine.Users, config, hours: np.ndarray) -> np.ndarray:
    """(U, O, C) the offer network champion's P(convert) at each channel's hour, scored on pandas frames."""
    champion = load_champions(settings)["offer_net"]
    fs = feature_store(settings).get_feature_service(champion.model.feature_service)
    columns = [f.name for p in fs.feature_view_projections for f in p.features]
    grid = RequestGrid(config.offers, config.channel_names())
    n, n_o, n_c = len(hours), len(config.offers), len(config.channel_names())
    out = np.zeros((n, n_o, n_c))
    for start in range(0, n, _CHUNK):
        rows = np.repeat(np.arange(start, min(n, start + _CHUNK)), n_o * n_c)
        cells = np.tile(np.arange(n_o * n_c), len(rows) // (n_o * n_c))
        data = {c: users[c][rows] if c in users else np.full(len(rows), np.nan) for c in columns}
        data.update(grid.request(cells, hours[rows, cells % n_c].astype("float64"), REQUEST_COLUMNS["offer_net"]))
        out[start:start + len(rows) // (n_o * n_c)] = np.asarray(champion.model.predict(pd.DataFrame(data))).reshape(-1, n_o, n_c)
    return out


def main() -> None:
    args = arguments()
    started, cpu0 = time.perf_counter(), time.process_time()
    settings = Settings(home=args.home)
    rules = ReplayConfig(rules=operator_rules(settings))
    tables, period = sampled(settings, rules, args.users)
    models = champion_set(settings)
    nba, _ = model_policies(settings, period, models=models)
    config = catalog_config(period.offers, period.channels, base=load_config(settings.home / "operator.yaml"))
    users = latest_features(settings, period.user_ids)
    hours = nba.hours
    p_conv = np.concatenate([engine.conversion_scores(models, engine.user_columns({k: v[r] for k, v in users.items()}),
                                                      config, hours[r])[0]
                             for r in np.array_split(np.arange(period.n_users), max(1, period.n_users // _CHUNK))])
    p_net = offer_net_scores(settings, users, config, hours)
    value = np.array([o.value for o in config.offers])
    rankings = {"nba (uplift EV)": nba.ev, "conversion x value": p_conv * value[None, :, None],
                "offer network x value": p_net * value[None, :, None],
                "mean of the two x value": (p_conv + p_net) / 2 * value[None, :, None]}
    believed = dataclasses.replace(period, truth=history_beliefs(period.truth, tables, period.user_ids, period.start))
    log = []

    def record(s, a, rows):
        c, h, ok = a.channel[rows], a.hour[rows], s.eligible[rows]
        truth, history = offer_values(period, s, rows, c, h), offer_values(believed, s, rows, c, h)
        i = np.arange(len(rows))
        out = {"first of the week": np.full(len(rows), s.day % 7 == 0)}
        for name, score in rankings.items():
            pick = np.where(ok, score[rows][i, :, c] if score.ndim == 3 else score[rows], -np.inf).argmax(1)
            out[f"{name} | truth"] = truth[i, pick]
            out[f"{name} | history oracle"] = history[i, pick]
            out[f"{name} = nba"] = pick == a.offer[rows]
        out["history oracle's offer | truth"] = truth[i, np.where(ok, history, -np.inf).argmax(1)]
        log.append(pd.DataFrame(out))

    replay(period, Recorded(nba, record), rules)
    sends = pd.concat(log, ignore_index=True)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
    load = " ".join(open("/proc/loadavg").read().split()[:3])
    print(f"{platform.node()} {pd.Timestamp.now(tz='UTC'):%Y-%m-%d %H:%M}, {args.users} users, 14 days, {rules.rules}; "
          f"{len(sends):,} NBA sends; wall {wall:.0f} s, CPU {cpu:.0f} s, load {load}")
    rows = []
    for name in rankings:
        for part, mask in (("all", np.ones(len(sends), bool)), ("later sends", ~sends["first of the week"].to_numpy())):
            rows.append({"ranking": name, "sends": part, "truth": sends.loc[mask, f"{name} | truth"].sum(),
                         "history oracle's valuation": sends.loc[mask, f"{name} | history oracle"].sum(),
                         "same offer as the NBA": sends.loc[mask, f"{name} = nba"].mean()})
    for part, mask in (("all", np.ones(len(sends), bool)), ("later sends", ~sends["first of the week"].to_numpy())):
        rows.append({"ranking": "history oracle's offer (reference)", "sends": part,
                     "truth": sends.loc[mask, "history oracle's offer | truth"].sum()})
    print(pd.DataFrame(rows).sort_values(["sends", "ranking"]).to_markdown(index=False, floatfmt=",.3f"))


if __name__ == "__main__":
    main()
