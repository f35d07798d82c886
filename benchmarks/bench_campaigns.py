"""Benchmark: counting a segment over N users (DuckDB over the feature Parquet), latest and point-in-time.

Feature tables are generated synthetically in the shape `nextbest features build` writes (profile: one row per
user; tags and behaviour: one row per user and snapshot), so 1M users need no simulation. The reference measured
in the same run is a bare DuckDB `count(*)` of users with the newest snapshot's value over the same tags file.

    flock /tmp/nextbest-bigbench.lock .venv/bin/python benchmarks/bench_campaigns.py --users 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd


def write_tables(folder: Path, users: int, snapshots: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ids = np.char.add("u", np.arange(users).astype(str)).astype(object)
    start = pd.Timestamp("2026-06-01", tz="UTC")
    pd.DataFrame({"user_id": ids, "event_timestamp": start - pd.to_timedelta(rng.integers(1, 900, users), "D"),
                  "country": rng.choice(np.array(["de", "fr", "it", "es"], dtype=object), users),
                  "consent_email": rng.random(users) < 0.6}).to_parquet(folder / "profile.parquet", index=False)
    snaps = [start + pd.Timedelta(days=14 * k) for k in range(snapshots)]
    stages = np.array(["first_contact", "lead", "intent_lead", "confirmed_lead", "customer"], dtype=object)
    tags, behaviour = [], []
    for t in snaps:
        tags.append(pd.DataFrame({"user_id": ids, "event_timestamp": t, "lifecycle_stage": rng.choice(stages, users),
                                  "value_tier": rng.integers(1, 4, users), "scorecard": rng.normal(10, 5, users)}))
        behaviour.append(pd.DataFrame({"user_id": ids, "event_timestamp": t,
                                       "recency_days": rng.integers(0, 120, users).astype(float),
                                       "purchases_90d": rng.poisson(1.0, users).astype(float)}))
    pd.concat(tags).to_parquet(folder / "tags.parquet", index=False)
    pd.concat(behaviour).to_parquet(folder / "behaviour.parquet", index=False)


def main() -> None:
    from nextbest.campaigns import segments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--snapshots", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        write_tables(folder, args.users, args.snapshots, args.seed)
        generate_s = time.perf_counter() - t
        saved = {"lapsed": "lifecycle_stage in [customer] and recency_days >= 30"}
        rules = {"one table": "lifecycle_stage in [customer, confirmed_lead]",
                 "two tables": "lifecycle_stage in [customer] and recency_days >= 30",
                 "three tables + segment": "segment in [lapsed] and consent_email == True and value_tier >= 2"}
        as_of = datetime(2026, 6, 20, tzinfo=UTC)
        out = {"machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
               "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "users": args.users,
               "snapshots": args.snapshots, "generate_s": round(generate_s, 1), "counts": {}}
        import duckdb

        con = duckdb.connect()
        t = time.perf_counter()
        con.execute(f"SELECT count(*) FROM (SELECT user_id, arg_max(lifecycle_stage, event_timestamp) AS s "
                    f"FROM read_parquet('{folder / 'tags.parquet'}') GROUP BY user_id) WHERE s = 'customer'").fetchone()
        out["reference_bare_duckdb_latest_s"] = round(time.perf_counter() - t, 2)
        con.close()
        for name, rule in rules.items():
            for when, at in (("latest", None), ("as_of", as_of)):
                t = time.perf_counter()
                n = segments.count(folder, rule, saved.get, at)
                out["counts"][f"{name}, {when}"] = {"users": n, "seconds": round(time.perf_counter() - t, 2)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
