"""In-process decide of one home's champions, for side-by-side runs (issue 16, eleventh session: what more fits per
uplift arm cost a decision).

Usage: for r in 1 2 3; do for h in A B; do NEXTBEST_HOME=$h python benchmarks/bench_decide_pair.py --home $h; done; done

One process per home and round, alternated by the caller so the machine's load falls on both homes alike (one
process never holds two homes' settings). Runs `bench_serving.in_process` (the service's `Runtime.decide`, dry run,
one user at a time, beside its floors: the online read and the models' own predict calls) on the home's first
`--decisions` users, and prints one line: decide p50 / p99 (wall ms) and the floors' p50 (the load average beside:
wall times on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from bench_serving import in_process

from nextbest.features.settings import Settings
from nextbest.features.store import read_table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--decisions", type=int, default=500)
    args = parser.parse_args()
    settings = Settings(home=args.home)
    users = read_table(settings, "profile")["user_id"].astype(str).tolist()
    wall = time.perf_counter()
    out = in_process(settings, users, n=args.decisions)
    print(json.dumps({"home": str(args.home), "decide_p50_ms": round(out["decide"]["p50_ms"], 3),
                      "decide_p99_ms": round(out["decide"]["p99_ms"], 3),
                      "read_p50_ms": round(out["online_read"]["p50_ms"], 3),
                      "predict_p50_ms": round(out["predict"]["p50_ms"], 3),
                      "wall_s": round(time.perf_counter() - wall, 1),
                      "load": [round(x, 1) for x in os.getloadavg()]}), flush=True)


if __name__ == "__main__":
    main()
