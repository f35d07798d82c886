"""The closed loop from a young world: value per round, as the loop learns.

Usage: python benchmarks/bench_loop.py --users 2000 --history-days 28 --rounds 4 --home /tmp/bench-loop
Simulates a world with a short logged history (weak first models), trains the models the NBA policy uses,
then runs `rounds` rounds of decide -> outcomes -> feedback -> retrain (pipelines/loop.py) and prints the
table per round and the wall time; the chart lands in <home>/reports/closed_loop.png.
With --reference, the same loop runs a second time from the same start with the holdout gate only (no
policy gate), side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import time
from pathlib import Path

import pandas as pd

from nextbest.features.ingest import write_raw
from nextbest.features.settings import Settings
from nextbest.pipelines.loop import LoopConfig, run_loop, write_loop_chart
from nextbest.pipelines.retrain import RetrainConfig, retrain
from nextbest.simulation import WorldConfig, simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--history-days", type=int, default=28)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--trials", type=int, default=1)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--home", type=Path, default=Path("/tmp/bench-loop"))
    parser.add_argument("--reference", action="store_true", help="also run the loop with the holdout gate only")
    args = parser.parse_args()
    shutil.rmtree(args.home, ignore_errors=True)
    settings = Settings(home=args.home)
    config = LoopConfig(rounds=args.rounds, days=args.days, trials=args.trials)
    started = time.perf_counter()
    world = simulate(WorldConfig(n_users=args.users, days=args.history_days, seed=args.seed))
    write_raw(world.tables, settings.raw_dir)
    world.truth.save(settings.truth_dir)
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
    cols = ["start", "contacts", "controls", "incremental_revenue", "oracle_revenue", "share_of_oracle",
            "yardstick_revenue", "yardstick_share", "unsubscribes", "complaints", "violations"]
    for label, home, cfg in runs:
        begun = time.perf_counter()
        table = run_loop(home, cfg, progress=lambda m: print(f"{time.perf_counter() - started:6.0f} s  {m}", flush=True))
        chart = write_loop_chart(table, home.home / "reports")
        print(f"--- {label}: {time.perf_counter() - begun:.0f} s; chart {chart}")
        print(table[cols].round(3).to_string())
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"setup {setup:.0f} s, total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
