"""The closed loop through the decision service from a young world: value per round, as the loop learns.

Usage: python benchmarks/bench_loop.py --users 2000 --history-days 28 --rounds 4 --days 7 --home /tmp/bench-loop
Simulates a world with a short logged history (weak first models), trains the models the NBA policy uses, then
runs `rounds` rounds through the decision service (`bentoml serve` on 127.0.0.1 with the simulated clock, as
`nextbest loop` starts it): the world's events to /events, the campaign's /decide_batch each morning, the outcomes
to /feedback, retraining from the service's own logs between rounds, /reload. Prints the table per round (the
round's value next to the oracle's, and the fixed yardstick: what each round's champions earn on the first round's
users and days) and the wall and CPU time. The operator config is the catalog's default (its exploration and caps)
with a `--holdout` share for the campaign `loop`.
With --reference, the same loop runs a second time from the same start with the holdout gate only (no policy
gate), side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import time
from pathlib import Path

import httpx
import pandas as pd

from nextbest.features.ingest import write_raw
from nextbest.features.settings import Settings
from nextbest.pipelines.retrain import RetrainConfig, retrain
from nextbest.pipelines.serve_commands import running_service
from nextbest.pipelines.service_loop import ServiceLoopConfig, run_service_loop, simulated_clock
from nextbest.serving.config import Holdout, catalog_config, write_config
from nextbest.simulation import WorldConfig, simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--history-days", type=int, default=28)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--trials", type=int, default=1)
    parser.add_argument("--holdout", type=float, default=0.1, help="the campaign `loop`'s hold-out share")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--home", type=Path, default=Path("/tmp/bench-loop"))
    parser.add_argument("--reference", action="store_true", help="also run the loop with the holdout gate only")
    args = parser.parse_args()
    shutil.rmtree(args.home, ignore_errors=True)
    settings = Settings(home=args.home)
    config = ServiceLoopConfig(rounds=args.rounds, days=args.days, trials=args.trials, policy_gate=True)
    started = time.perf_counter()
    world = simulate(WorldConfig(n_users=args.users, days=args.history_days, seed=args.seed))
    write_raw(world.tables, settings.raw_dir)
    world.truth.save(settings.truth_dir)
    operator = catalog_config(world.tables["offers"], world.tables["channels"])
    write_config(operator.model_copy(update={"holdout": Holdout(campaigns={"loop": args.holdout})}),
                 settings.home / "operator.yaml", note="bench_loop.py")
    retrain(settings, RetrainConfig(trials=args.trials, evaluate=False, models=config.models), resume=False)
    setup = time.perf_counter() - started
    reference = args.home.with_name(args.home.name + "-holdout-gate")
    if args.reference:
        shutil.rmtree(reference, ignore_errors=True)
        shutil.copytree(args.home, reference)
    runs = [("policy gate", settings, config)]
    if args.reference:
        runs.append(("holdout gate only", Settings(home=reference), dataclasses.replace(config, policy_gate=False)))
    pd.set_option("display.width", 200)
    cols = ["start", "decisions", "controls", "contacts", "incremental_revenue", "oracle_revenue", "share_of_oracle",
            "yardstick_revenue", "yardstick_share", "unsubscribes_per_1k", "complaints_per_1k", "violations"]
    for label, home, cfg in runs:
        begun, cpu = time.perf_counter(), time.process_time()
        with running_service(simulated_clock(home)) as url, httpx.Client(base_url=url, timeout=120) as client:
            table = run_service_loop(home, client, cfg, progress=lambda m: print(f"{time.perf_counter() - started:6.0f} s  {m}",
                                                                                 flush=True))
        print(f"--- {label}: {time.perf_counter() - begun:.0f} s wall, {time.process_time() - cpu:.0f} CPU-s in this "
              "process (the service's own CPU not included)")
        print(table[cols].round(3).to_string())
        print(table["models"].to_string())
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}; setup {setup:.0f} s, "
          f"total {time.perf_counter() - started:.0f} s; load average {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
