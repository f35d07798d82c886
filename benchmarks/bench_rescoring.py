"""What re-scoring users on refreshed features during the period is worth, against scoring once at its start.

Usage (after `make demo`, on its world): python benchmarks/bench_rescoring.py [--home .nextbest] [--days 14] [--every 7]
    [--users 3000]
Copies the demo's home twice (a fresh ledger each) and drives the decision service through the closed loop
(pipelines/service_loop.py, `bentoml serve` on 127.0.0.1 with the simulated clock) from the same state with the same
champions: no model retraining, no exploration, no hold-out (the copies' operator config says so):

- once: one round of `--days` days; the service decides every day on the feature snapshot of the period's start
  (plus the real-time view its /events feed updates);
- re-scored: rounds of `--every` days; after each, what happened (organic behaviour, the sends' opens, clicks and
  purchases, the service's own logs) is folded into the tables, the features are rebuilt and materialised
  (`nextbest retrain` with no models) and the service reloads, so the next round decides on the newest features.

Both are the expected incremental revenue under the truth, next to the oracle's over the same days and users under
the same caps. The truth is read only to measure.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import time
from pathlib import Path

import httpx

from nextbest.features.settings import Settings
from nextbest.pipelines.serve_commands import running_service
from nextbest.pipelines.service_loop import ServiceLoopConfig, run_service_loop, simulated_clock
from nextbest.serving.config import Exploration, Holdout, load_config, write_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path(".nextbest"), help="a `make demo` home (left untouched)")
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--every", type=int, default=7, help="days between re-scorings")
    parser.add_argument("--users", type=int, default=3_000, help="users the campaign addresses (a seeded sample)")
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
        home = Settings(home=args.work / label.replace(" ", "-"))
        shutil.rmtree(home.home, ignore_errors=True)
        # A fresh ledger and logs: a copied ledger identity without its store is a lost ledger (no contact, by design).
        shutil.copytree(args.home, home.home, ignore=shutil.ignore_patterns("service_loop", "retrain", "ledger.*", "logs"))
        operator = load_config(home.home / "operator.yaml")
        write_config(operator.model_copy(update={"exploration": Exploration(method="epsilon", rate=0.0),
                                                 "holdout": Holdout()}),
                     home.home / "operator.yaml", note="bench_rescoring.py: no exploration, no hold-out")
        config = ServiceLoopConfig(rounds=rounds, days=days, users=args.users, models=())
        begun, cpu = time.perf_counter(), time.process_time()
        with running_service(simulated_clock(home)) as url, httpx.Client(base_url=url, timeout=120) as client:
            table = run_service_loop(home, client, config, progress=lambda m: print(f"{time.perf_counter() - started:6.0f} s  {m}",
                                                                                     flush=True))
        nba, oracle = table["incremental_revenue"].sum(), table["oracle_revenue"].sum()
        rows.append((label, int(table["contacts"].sum()), nba, oracle, nba / oracle, time.perf_counter() - begun,
                     time.process_time() - cpu))
    print(f"{'policy':<28} {'contacts':>9} {'NBA revenue':>12} {'oracle':>10} {'share':>7} {'seconds':>8} {'CPU-s':>6}")
    for label, contacts, nba, oracle, share, seconds, cpu in rows:
        print(f"{label:<28} {contacts:>9,} {nba:>12,.0f} {oracle:>10,.0f} {share:>7.1%} {seconds:>8.0f} {cpu:>6.0f}")
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"total {time.perf_counter() - started:.0f} s; load average {' / '.join(f'{x:.1f}' for x in os.getloadavg())}; "
          "CPU-s: this process only (the service's own not included)")


if __name__ == "__main__":
    main()
