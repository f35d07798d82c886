"""CPU cost of `policy_values` (what `nextbest evaluate --logs` runs) with the judge's reward model scoring one
(action, policy) at a time and the policy grid in one piece (how it worked before), against the batched and chunked
scoring, on the same users of the current home's contact log, in one process; the tables must come out equal.

Usage: python benchmarks/bench_offpolicy_judge.py [--users 3000] [--folds 3] [--learners s,funnel]
Prints JSON lines (CPU seconds from `time.process_time`, so a loaded machine changes them less than wall time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import pandas as pd

from nextbest.features.settings import Settings
from nextbest.features.store import feature_store
from nextbest.pipelines import offpolicy
from nextbest.pipelines.offpolicy import LogsConfig, policy_values
from nextbest.training.jobs import read_raw_tables
from nextbest.training.uplift import UpliftConfig, build_frame


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=3_000)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--learners", default="s,funnel")
    args = parser.parse_args()
    settings = Settings()
    raw = read_raw_tables(settings)
    ids = raw["contacts"]["user_id"].astype(str)
    keep = np.random.default_rng(settings.seed).choice(np.sort(ids.unique()), size=args.users, replace=False)
    raw["contacts"] = raw["contacts"][ids.isin(set(keep)).to_numpy()]
    data = build_frame(feature_store(settings), raw, UpliftConfig())
    config = LogsConfig(folds=args.folds, learners=tuple(args.learners.split(",")), seed=settings.seed)
    tables = {}
    prepare, grid_rows = offpolicy._RewardModel.prepare, offpolicy._GRID_ROWS
    for how in ("one call per action and policy", "batched"):
        if how == "batched":
            offpolicy._RewardModel.prepare, offpolicy._GRID_ROWS = prepare, grid_rows
        else:
            offpolicy._RewardModel.prepare, offpolicy._GRID_ROWS = (lambda self, asked: None), 10**12
        cpu, wall = time.process_time(), time.perf_counter()
        tables[how] = policy_values(data, config)
        print(json.dumps({"scoring": how, "cpu_seconds": round(time.process_time() - cpu, 1),
                          "wall_seconds": round(time.perf_counter() - wall, 1), "rows": len(data.frame),
                          "users": args.users, "load": round(os.getloadavg()[0], 1),
                          "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                          "date": time.strftime("%Y-%m-%d %H:%M")}), flush=True)
    a, b = tables.values()
    pd.testing.assert_frame_equal(a, b)
    print(json.dumps({"tables_equal": True, "policies": len(a)}))


if __name__ == "__main__":
    main()
