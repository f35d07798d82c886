"""Benchmark: counting a segment over N users (DuckDB over the feature Parquet), latest and point-in-time; and a
campaign's dry run over a built home (`--dry-run HOME`).

Segment counts: feature tables are generated synthetically in the shape `nextbest features build` writes
(profile: one row per user; tags and behaviour: one row per user and snapshot), so 1M users need no simulation
(`--tables DIR` keeps them for the next run). The reference measured in the same run is a bare DuckDB `count(*)`
of users with the newest snapshot's value over the same tags file.

Dry run: a draft campaign (three offers with four copies each) over the segment `--rule` of a built home with
trained champions and online features; the reference measured in the same run is `Runtime.score` (the planner
the dry run calls, without the audience query, hold-outs and copies) over the same users.

    flock /tmp/nextbest-bigbench.lock .venv/bin/python benchmarks/bench_campaigns.py --users 1000000
    flock /tmp/nextbest-bigbench.lock .venv/bin/python benchmarks/bench_campaigns.py --dry-run <home> --rule '...'
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


def dry_run_bench(home: Path, rule: str, reference_users: int = 10_000) -> dict:
    """A draft campaign's dry run over `rule`'s members of a built home, and `Runtime.score` of the first
    `reference_users` of them (per user, the same planner without the campaign's layers)."""
    from nextbest.campaigns import segments
    from nextbest.campaigns.execution import dry_run
    from nextbest.campaigns.model import CampaignSpec
    from nextbest.features.settings import Settings
    from nextbest.pipelines.campaign_commands import open_store
    from nextbest.serving.runtime import Runtime
    from nextbest.serving.schemas import CampaignContext

    settings = Settings(home=home)
    store = open_store(settings)
    store.save_segment(segments.Segment("bench_audience", rule), set(segments.table_columns(settings.feature_dir)),
                       replace=True)
    rt = Runtime(settings)
    offers = rt.config.current(0).offer_ids()[:3]
    cid = f"bench-{time.time_ns()}"
    store.create(CampaignSpec(name="bench", audience="bench_audience", offers=[
        {"offer_id": o, "variants": [{"id": v} for v in "ABCD"]} for o in offers]), "bench", cid)
    rt.score(segments.member_ids(settings.feature_dir, rule, store.segment_rule)[:100], CampaignContext())  # warm-up
    t, cpu = time.perf_counter(), time.process_time()
    report = dry_run(settings, store, cid, rt)
    dry_s, dry_cpu = time.perf_counter() - t, time.process_time() - cpu  # CPU seconds: what an idle machine would take
    ids = segments.member_ids(settings.feature_dir, rule, store.segment_rule)[:reference_users]
    t = time.perf_counter()
    for start in range(0, len(ids), 1000):
        rt.score(ids[start:start + 1000], CampaignContext(offers=offers))
    reference_s = time.perf_counter() - t
    rt.close()
    return {"machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores", "load_average":
            [round(x, 1) for x in os.getloadavg()], "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "audience": report["audience"], "held_out": report["held_out"], "not_online": report["not_online"],
            "would_send": report["would_send"], "dry_run_s": round(dry_s, 1), "dry_run_cpu_s": round(dry_cpu, 1),
            "dry_run_ms_per_user": round(1000 * dry_s / max(1, report["audience"]), 2),
            "reference_users": len(ids), "reference_score_s": round(reference_s, 1),
            "reference_ms_per_user": round(1000 * reference_s / max(1, len(ids)), 2)}


def main() -> None:
    from nextbest.campaigns import segments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--snapshots", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tables", type=Path, help="keep the generated tables here (reused when present)")
    parser.add_argument("--dry-run", type=Path, help="a built home: time a campaign's dry run there instead")
    parser.add_argument("--rule", default="lifecycle_stage in [lead, intent_lead, confirmed_lead, customer]",
                        help="--dry-run: the audience rule")
    args = parser.parse_args()
    if args.dry_run:
        print(json.dumps(dry_run_bench(args.dry_run, args.rule), indent=2))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.tables or Path(tmp)
        t = time.perf_counter()
        if not (folder / "behaviour.parquet").exists():
            folder.mkdir(parents=True, exist_ok=True)
            write_tables(folder, args.users, args.snapshots, args.seed)
        generate_s = time.perf_counter() - t
        saved = {"lapsed": "lifecycle_stage in [customer] and recency_days >= 30"}
        rules = {"one table": "lifecycle_stage in [customer, confirmed_lead]",
                 "two tables": "lifecycle_stage in [customer] and recency_days >= 30",
                 "three tables + segment": "segment in [lapsed] and consent_email == True and value_tier >= 2"}
        as_of = datetime(2026, 6, 20, tzinfo=UTC)
        out = {"machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
               "load_average": [round(x, 1) for x in os.getloadavg()],
               "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "users": args.users,
               "snapshots": args.snapshots, "generate_s": round(generate_s, 1), "counts": {}}
        import duckdb

        def reference() -> float:  # before and after the counts: the machine's load drifts
            con = duckdb.connect()
            t = time.perf_counter()
            con.execute(f"SELECT count(*) FROM (SELECT user_id, arg_max(lifecycle_stage, event_timestamp) AS s FROM "
                        f"read_parquet('{folder / 'tags.parquet'}') GROUP BY user_id) WHERE s = 'customer'").fetchone()
            con.close()
            return round(time.perf_counter() - t, 2)

        out["reference_bare_duckdb_latest_s"] = [reference()]
        for name, rule in rules.items():
            for when, at in (("latest", None), ("as_of", as_of)):
                t = time.perf_counter()
                n = segments.count(folder, rule, saved.get, at)
                out["counts"][f"{name}, {when}"] = {"users": n, "seconds": round(time.perf_counter() - t, 2)}
        out["reference_bare_duckdb_latest_s"].append(reference())
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
