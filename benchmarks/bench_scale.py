"""Benchmark: simulate -> feature tables at scale, on DuckDB and on Spark, wall time and peak memory per stage.

Each stage runs in a fresh child process; its peak memory is the peak of the summed RSS of the child's whole
process tree (for Spark: the Python driver, the JVM and its Python workers), sampled every 0.2 s. The feature
build is the product's own (`features.build.build_features`, as `nextbest features build` runs it). The online
load (`--online`) is Feast apply + `materialize` (the bulk writer of the store: SQLite by default, or Redis with
`--online-store redis`, a redis-server of the benchmark's own whose peak RSS counts in the stage's peak; its RSS and
CPU seconds are also reported apart, as in production Redis is a separate service). With Redis the build and the
load run as one stage, `build+online` (`features.store.build_and_materialize`: each slice of users goes online while
the next is built); `--sequential` measures the build, then the load. Runs above
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


class _Steps(list):
    """The build's progress steps in order, each with the seconds since the stage began when it started (`at`)."""

    def __init__(self, names: list[str]):
        super().__init__(names)
        self.started, self.at = time.perf_counter(), {n: 0.0 for n in names}

    def append(self, name: str) -> None:
        self.at.setdefault(name, round(time.perf_counter() - self.started, 1))
        super().append(name)


def _step_peaks(steps: list[str], peaks: dict[str, int], done) -> None:
    """Sample this process' RSS every 0.1 s until `done` is set, keeping the peak per current build step (`steps[-1]`):
    which step holds the stage's peak (DuckDB's memory limit bounds only its buffer pool)."""
    import psutil

    me = psutil.Process()
    while not done.wait(0.1):
        rss = me.memory_info().rss
        peaks[steps[-1]] = max(peaks.get(steps[-1], 0), rss)


def stage(name: str, home: Path, args: argparse.Namespace) -> dict:
    """Run one stage in this process (called in a child) and return what it did."""
    import threading

    from nextbest.features.settings import Settings

    out: dict = {}
    steps, peaks, done = _Steps(["start"]), {}, threading.Event()
    sampler = threading.Thread(target=_step_peaks, args=(steps, peaks, done), daemon=True)
    sampler.start()
    started = time.perf_counter()
    if name == "simulate":  # the product's path (`nextbest simulate`): chunks of users written as they come
        from nextbest.simulation import CHUNK_USERS, WorldConfig, write_world

        settings = Settings(home=home)
        config = WorldConfig(n_users=args.users, seed=args.seed, chunk_users=args.chunk_users or CHUNK_USERS)
        out["chunks"] = config.n_chunks
        out["rows"] = write_world(config, settings.raw_dir, settings.truth_dir,
                                  progress=lambda step, done: steps.append(step.split(": ")[-1]))
    elif name.startswith("build:"):
        from nextbest.features.build import BuildConfig, build_features

        engine = name.split(":", 1)[1]
        settings = Settings(home=home, engine=engine, build_memory=args.duckdb_memory, spark_master=args.spark_master)
        out["rows"] = build_features(settings, BuildConfig(snapshot_every_days=args.every_days, snapshots=args.snapshots),
                                     progress=steps.append)
        if engine == "spark":  # keep the Spark-built tables beside the DuckDB ones for the comparison
            target = home / "feature_tables_spark"
            shutil.rmtree(target, ignore_errors=True)
            settings.feature_dir.rename(target)
    elif name == "build+online":  # the product's overlapped path: each slice goes online while the next is built
        from nextbest.features.build import BuildConfig, build_features
        from nextbest.features.store import build_and_materialize

        settings = Settings(home=home, engine="duckdb", build_memory=args.duckdb_memory, online_store=args.online_store,
                            redis_url=f"127.0.0.1:{args.redis_port}")
        config = BuildConfig(snapshot_every_days=args.every_days, snapshots=args.snapshots)
        marks: dict[str, float] = {}

        def build(written):
            rows = build_features(settings, config, progress=steps.append, written=written)
            steps.append("online tail (tags, realtime)")
            marks["build_seconds"] = round(time.perf_counter() - started, 2)  # tables published; loads may still run
            return rows

        out["rows"], out["online_rows"] = build_and_materialize(settings, build)
        out.update(marks)
    elif name == "online":
        from nextbest.features.store import apply, materialize

        settings = Settings(home=home, online_store=args.online_store, redis_url=f"127.0.0.1:{args.redis_port}")
        apply(settings)
        out["rows"] = materialize(settings)
    out["seconds"] = round(time.perf_counter() - started, 2)
    done.set()
    sampler.join()
    out["step_peak_rss_mb"] = {step: round(rss / 2**20) for step, rss in peaks.items()}  # this process only
    out["step_started_s"] = steps.at
    return out


def child(name: str, home: Path, args: argparse.Namespace, server=None) -> dict:
    """Run a stage in a child process; its result plus wall time and the peak RSS of its process tree (plus the
    redis-server's `server`, when given, for the online load)."""
    import psutil

    cmd = [sys.executable, __file__, "--stage", name, "--home", str(home), "--users", str(args.users), "--seed",
           str(args.seed), "--every-days", str(args.every_days), "--duckdb-memory", args.duckdb_memory,
           "--spark-master", args.spark_master, "--online-store", args.online_store, "--redis-port", str(args.redis_port)] + (["--snapshots", str(args.snapshots)] if args.snapshots else []) + (["--chunk-users", str(args.chunk_users)] if args.chunk_users else [])
    import resource

    started, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    if server:
        from bench_online import _redis_cpu

        server_before = _redis_cpu(args.redis_port)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    top, peak, own_peak, server_peak = psutil.Process(proc.pid), 0, 0, 0
    # CPU seconds per process of the stage's tree, as last sampled: the JVM that PySpark starts is never waited for,
    # so the rusage figure below misses it; this one counts it (less what a process spends after its last sample).
    spent: dict[int, float] = {}
    while proc.poll() is None:
        try:
            tree = [p for p in [top, *top.children(recursive=True)] if p.is_running()]
            own = sum(p.memory_info().rss for p in tree)
            held = psutil.Process(server.pid).memory_info().rss if server else 0
            peak, own_peak, server_peak = max(peak, own + held), max(own_peak, own), max(server_peak, held)
            for p in tree:
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
    if server:  # in production Redis is a separate service: the stage's own peak beside the server's
        result["peak_rss_mb_without_server"] = round(own_peak / 2**20)
        result["server_peak_rss_mb"] = round(server_peak / 2**20)
        result["server_cpu_seconds"] = round(_redis_cpu(args.redis_port) - server_before, 1)
    # CPU seconds of the stage's process tree (the redis-server's not included): steadier than wall time when
    # other jobs share the cores
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result["cpu_seconds"] = round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1)
    result["tree_cpu_seconds"] = round(max(sum(spent.values()), result["cpu_seconds"]), 1)
    return result


def _redis_stats(port: int, sample: int = 200) -> dict:
    """What the loaded redis-server holds: `used_memory`, its RSS, the key count, and the field count and encoding of
    `sample` user hashes (Feast's one hash per user; listpack while a hash has <= 256 fields, the bench's setting)."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    memory = client.info("memory")
    keys: list = []
    for key in client.scan_iter(count=1000):
        keys.append(key)
        if len(keys) >= sample:
            break
    pipe = client.pipeline()
    for key in keys:
        pipe.hlen(key)
        pipe.object("encoding", key)
    replies = pipe.execute()
    fields, encodings = replies[0::2], replies[1::2]
    return {"used_memory_mb": round(memory["used_memory"] / 2**20, 1),
            "used_memory_rss_mb": round(memory["used_memory_rss"] / 2**20, 1),
            "keys": client.dbsize(), "bytes_per_key": round(memory["used_memory"] / max(client.dbsize(), 1)),
            "fields_per_hash_min": min(fields, default=0), "fields_per_hash_max": max(fields, default=0),
            "encodings": sorted({e.decode() if isinstance(e, bytes) else str(e) for e in encodings}),
            "hashes_sampled": len(keys)}


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
    parser.add_argument("--sequential", action="store_true",
                        help="Redis: build, then apply + materialize (the reference), instead of loading each slice "
                             "online while the next is built (`build_and_materialize`)")
    parser.add_argument("--home", type=Path, default=ROOT / "benchmarks" / "out" / "scale")
    parser.add_argument("--raw-from", type=Path, default=None,
                        help="reuse the raw tables of this home (its raw/ folder) instead of simulating them")
    parser.add_argument("--chunk-users", type=int, default=None,
                        help="users simulated together (default: the simulator's CHUNK_USERS)")
    parser.add_argument("--simulate-only", action="store_true", help="stop after the simulate stage")
    parser.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(stage(args.stage, args.home, args)))
        return
    home = args.home / f"u{args.users}"
    shutil.rmtree(home, ignore_errors=True)
    overlap = args.online and args.online_store == "redis" and not args.sequential
    names = [*([] if args.raw_from else ["simulate"]), *(["build:spark"] if args.spark else []),
             *(["build+online"] if overlap else ["build:duckdb", *(["online"] if args.online else [])])]
    if args.simulate_only:
        if args.raw_from:
            sys.exit("error: --simulate-only and --raw-from exclude each other (nothing would be simulated)")
        names = ["simulate"]
    if args.raw_from:  # a copy: the build never writes into another home
        shutil.copytree((args.raw_from / "raw").resolve(), home / "raw")
    results = {}
    server, redis_stats = None, None
    if args.online and args.online_store == "redis":
        from bench_online import _redis

        server = _redis(args.redis_port, home.parent / f"redis-{args.users}")
    try:
        for name in names:
            results[name] = child(name, home, args, server if name in ("online", "build+online") else None)
            print(f"{name:<14} {results[name]['seconds']:>8.1f} s  wall {results[name]['wall_seconds']:>8.1f} s  "
                  f"peak {results[name]['peak_rss_mb']:>6} MB  cpu {results[name]['tree_cpu_seconds']:>8.1f} s  "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
        if server is not None:
            redis_stats = _redis_stats(args.redis_port)
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
        "peak_rss_mb_without_server": max(results[n].get("peak_rss_mb_without_server", results[n]["peak_rss_mb"])
                                          for n in path),
        "total_cpu_seconds": round(sum(results[n]["cpu_seconds"] for n in path), 1),
        "stages": results,
    }
    if redis_stats:
        summary["redis"] = redis_stats
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
