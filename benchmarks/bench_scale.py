"""Benchmark: simulate -> feature tables at scale, on DuckDB and on Spark, wall time and peak memory per stage.

Each stage runs in a fresh child process; its peak memory is the peak of the summed RSS of the child's whole
process tree (for Spark: the Python driver, the JVM and its Python workers), sampled every 0.2 s. The feature
build is the product's own (`features.build.build_features`, as `nextbest features build` runs it). The online
load (`--online`) is Feast apply + `materialize` (the bulk writer of the store: SQLite by default, or Redis with
`--online-store redis`, a redis-server of the benchmark's own whose peak RSS counts in the stage's peak). Runs above
100k users take the shared lock so big runs of different people do not overlap:

    .venv/bin/python benchmarks/bench_scale.py --users 100000 --spark
    flock /tmp/nextbest-bigbench.lock .venv/bin/python benchmarks/bench_scale.py --users 1000000 --online --online-store redis
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def stage(name: str, home: Path, args: argparse.Namespace) -> dict:
    """Run one stage in this process (called in a child) and return what it did."""
    from nextbest.features.settings import Settings

    out: dict = {}
    started = time.perf_counter()
    if name == "simulate":
        from nextbest.features.ingest import write_raw
        from nextbest.simulation import WorldConfig, simulate

        world = simulate(WorldConfig(n_users=args.users, seed=args.seed))
        out["rows"] = {k: len(v) for k, v in world.tables.items()}
        write_raw(world.tables, Settings(home=home).raw_dir)
    elif name.startswith("build:"):
        from nextbest.features.build import BuildConfig, build_features

        engine = name.split(":", 1)[1]
        settings = Settings(home=home, engine=engine, build_memory=args.duckdb_memory, spark_master=args.spark_master)
        out["rows"] = build_features(settings, BuildConfig(snapshot_every_days=args.every_days, snapshots=args.snapshots))
        if engine == "spark":  # keep the Spark-built tables beside the DuckDB ones for the comparison
            target = home / "feature_tables_spark"
            shutil.rmtree(target, ignore_errors=True)
            settings.feature_dir.rename(target)
    elif name == "online":
        from nextbest.features.store import apply, materialize

        settings = Settings(home=home, online_store=args.online_store, redis_url=f"127.0.0.1:{args.redis_port}")
        apply(settings)
        out["rows"] = materialize(settings)
    out["seconds"] = round(time.perf_counter() - started, 2)
    return out


def child(name: str, home: Path, args: argparse.Namespace, server=None) -> dict:
    """Run a stage in a child process; its result plus wall time and the peak RSS of its process tree (plus the
    redis-server's `server`, when given, for the online load)."""
    import psutil

    cmd = [sys.executable, __file__, "--stage", name, "--home", str(home), "--users", str(args.users), "--seed",
           str(args.seed), "--every-days", str(args.every_days), "--duckdb-memory", args.duckdb_memory,
           "--spark-master", args.spark_master, "--online-store", args.online_store, "--redis-port", str(args.redis_port)] + (["--snapshots", str(args.snapshots)] if args.snapshots else [])
    import resource

    started, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    top, peak = psutil.Process(proc.pid), 0
    # CPU seconds per process of the stage's tree, as last sampled: the JVM that PySpark starts is never waited for,
    # so the rusage figure below misses it; this one counts it (less what a process spends after its last sample).
    spent: dict[int, float] = {}
    while proc.poll() is None:
        try:
            tree = [top, *top.children(recursive=True), *([psutil.Process(server.pid)] if server else [])]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            for p in tree[:len(tree) - (1 if server else 0)]:
                with p.oneshot():
                    t = p.cpu_times()
                    spent[p.pid] = t.user + t.system
        except psutil.Error:
            pass
        time.sleep(0.2)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"stage {name} failed:\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["wall_seconds"] = round(time.perf_counter() - started, 2)  # includes interpreter start and imports
    result["peak_rss_mb"] = round(peak / 2**20)
    # CPU seconds of the stage's process tree (the redis-server's not included): steadier than wall time when
    # other jobs share the cores
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result["cpu_seconds"] = round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1)
    result["tree_cpu_seconds"] = round(max(sum(spent.values()), result["cpu_seconds"]), 1)
    return result


def same_tables(home: Path) -> dict[str, bool]:
    """Row counts and column lists of the DuckDB- and Spark-built tables, per table (the values are held equal by
    tests/test_spark.py on a small world)."""
    import pyarrow.parquet as pq

    out = {}
    for path in sorted((home / "feature_tables").glob("*.parquet")):
        other = home / "feature_tables_spark" / path.name
        a, b = pq.ParquetFile(path), pq.ParquetFile(other)
        out[path.stem] = a.metadata.num_rows == b.metadata.num_rows and a.schema_arrow.names == b.schema_arrow.names
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--every-days", type=int, default=7)
    parser.add_argument("--snapshots", type=int, default=None)
    parser.add_argument("--duckdb-memory", default="2GB", help="NEXTBEST_BUILD_MEMORY of the DuckDB build")
    parser.add_argument("--spark", action="store_true", help="also build on Spark (side by side with DuckDB)")
    parser.add_argument("--spark-master", default="local[2]")
    parser.add_argument("--online", action="store_true", help="also load the online store (Feast apply + bulk writer)")
    parser.add_argument("--online-store", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--redis-port", type=int, default=6393)
    parser.add_argument("--home", type=Path, default=ROOT / "benchmarks" / "out" / "scale")
    parser.add_argument("--raw-from", type=Path, default=None,
                        help="reuse the raw tables of this home (its raw/ folder) instead of simulating them")
    parser.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(stage(args.stage, args.home, args)))
        return
    home = args.home / f"u{args.users}"
    shutil.rmtree(home, ignore_errors=True)
    names = [*([] if args.raw_from else ["simulate"]), *(["build:spark"] if args.spark else []), "build:duckdb",
             *(["online"] if args.online else [])]
    if args.raw_from:  # a copy: the build never writes into another home
        shutil.copytree((args.raw_from / "raw").resolve(), home / "raw")
    results = {}
    server = None
    if args.online and args.online_store == "redis":
        from bench_online import _redis

        server = _redis(args.redis_port, home.parent / f"redis-{args.users}")
    try:
        for name in names:
            results[name] = child(name, home, args, server if name == "online" else None)
            print(f"{name:<14} {results[name]['seconds']:>8.1f} s  wall {results[name]['wall_seconds']:>8.1f} s  "
                  f"peak {results[name]['peak_rss_mb']:>6} MB  cpu {results[name]['tree_cpu_seconds']:>8.1f} s  "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        if server is not None:
            server.terminate()
            server.wait()
    path = [n for n in names if n != "build:spark"]
    summary = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()} {os.cpu_count()} cores, {platform.machine()}, load average "
                   f"{os.getloadavg()[0]:.1f} at the end",
        "users": args.users,
        "duckdb_memory_limit": args.duckdb_memory,
        "online_store": args.online_store if args.online else None,
        "path": " -> ".join(path) + (f" (raw tables from {args.raw_from})" if args.raw_from else ""),
        "total_wall_seconds": round(sum(results[n]["wall_seconds"] for n in path), 1),
        "peak_rss_mb": max(results[n]["peak_rss_mb"] for n in path),
        "total_cpu_seconds": round(sum(results[n]["cpu_seconds"] for n in path), 1),
        "stages": results,
    }
    if args.spark:
        summary["spark_over_duckdb"] = round(results["build:spark"]["wall_seconds"] / results["build:duckdb"]["wall_seconds"], 2)
        summary["spark_over_duckdb_cpu"] = round(results["build:spark"]["tree_cpu_seconds"]
                                                 / results["build:duckdb"]["tree_cpu_seconds"], 2)
        summary["spark_tables_match"] = same_tables(home)
    print(json.dumps(summary, indent=2))
    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"scale-{args.users}.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
