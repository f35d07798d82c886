"""What re-scoring users on refreshed features during the period is worth, against scoring once at its start.

Usage (after `make demo`, on its world): python benchmarks/bench_rescoring.py [--days 14] [--every 7]
Copies the demo's home twice and runs the closed loop (pipelines/loop.py) from the same state with the same
champions, no retraining, no exploration and no control group:

- once: one round of `--days` days, every user scored on the features of the period's start (what
  `nextbest evaluate` replays);
- re-scored: rounds of `--every` days; after each, what happened (organic behaviour, the sends' opens,
  clicks and purchases, new suppressions) is fed back and the features are rebuilt, so the next round
  decides on the newest features, as a served policy does after each materialisation.

Both are the expected incremental revenue under the truth, next to the oracle's over the same days from
the same state. The truth is read only to measure.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import time
from pathlib import Path

from nextbest.features.settings import Settings
from nextbest.pipelines.loop import LoopConfig, run_loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path(".nextbest"), help="a `make demo` home (left untouched)")
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--every", type=int, default=7, help="days between re-scorings")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-rescoring"))
    args = parser.parse_args()
    if args.days % args.every:
        raise SystemExit("--days must be a multiple of --every")
    if not (args.home / "truth" / "truth.json").exists():
        raise SystemExit(f"no simulated world in {args.home}: run `make demo` first")
    started = time.perf_counter()
    rows = []
    for label, days, rounds in (("scored once", args.days, 1), (f"re-scored every {args.every} days", args.every,
                                                                 args.days // args.every)):
        home = args.work / label.replace(" ", "-")
        shutil.rmtree(home, ignore_errors=True)
        shutil.copytree(args.home, home, ignore=shutil.ignore_patterns("loop", "retrain", "ledger.*"))  # fresh ledger and identity
        config = LoopConfig(rounds=rounds, days=days, epsilon=0.0, control_share=0.0, models=(), policy_gate=False,
                            yardstick_users=1_000)
        begun = time.perf_counter()
        table = run_loop(Settings(home=home), config, progress=lambda m: print(f"{time.perf_counter() - started:6.0f} s  {m}",
                                                                               flush=True))
        nba, oracle = table["incremental_revenue"].sum(), table["oracle_revenue"].sum()
        rows.append((label, int(table["contacts"].sum()), nba, oracle, nba / oracle, time.perf_counter() - begun))
    print(f"{'policy':<28} {'contacts':>9} {'NBA revenue':>12} {'oracle':>10} {'share':>7} {'seconds':>8}")
    for label, contacts, nba, oracle, share, seconds in rows:
        print(f"{label:<28} {contacts:>9,} {nba:>12,.0f} {oracle:>10,.0f} {share:>7.1%} {seconds:>8.0f}")
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
