"""Benchmark: online load and training sets at 100k / 1M users, wall time and peak RSS, today's code beside the reference.

The home is tiled from a small built one (benchmarks/tile_world.py: copies with new user ids, not a
simulation). Each stage runs in a fresh child process so its peak RSS is its own; a redis-server of the
benchmark's own is started for the Redis stages and its peak RSS is reported too.

Stages:
  online:sqlite-old   reference: the previous materialise (whole tables in pandas, newest row by groupby) + SQLite bulk writer
  online:sqlite       newest rows read by DuckDB + the SQLite bulk writer
  online:redis        newest rows read by DuckDB + the Redis bulk writer (features/online_redis.py)
  online:feast-write  reference: Feast's own write_to_online_store to Redis, on `--reference-users` users
  sets:all            every model's training set (shared joins), no sampling (the previous code)
  sets:sampled        the same, each row set sampled to `--sample-rows` (stratified)

    flock /tmp/nextbest-bigbench.lock .venv/bin/python benchmarks/bench_online.py --source <built home> --users 100000
    flock /tmp/nextbest-bigbench.lock .venv/bin/python benchmarks/bench_online.py --source <built home> --users 1000000 \\
        --stages online:redis,online:sqlite,sets:sampled
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("online:sqlite-old", "online:sqlite", "online:redis", "online:feast-write", "sets:all", "sets:sampled")


def _online(method: str, settings, args) -> dict:
    import pandas as pd

    from nextbest.features.online_sqlite import write_view
    from nextbest.features.store import feature_store, materialize, read_table

    if method == "sqlite-old":  # the materialise of main before this change, verbatim in what it does
        store = feature_store(settings)
        rows = {}
        for view in store.list_feature_views():
            df = read_table(settings, view.name)
            df = df[df["event_timestamp"] <= pd.Timestamp.now(tz="UTC")]
            latest = df.sort_values("event_timestamp").groupby("user_id", sort=False).tail(1)
            write_view(store, view, latest)
            rows[view.name] = len(latest)
        return {"rows": rows}
    if method == "feast-write":  # a copy of the home limited to the first users
        import pyarrow.parquet as pq

        from nextbest.features.settings import Settings
        from nextbest.features.store import apply

        ref = Settings(home=settings.home.parent / f"{settings.home.name}-ref", online_store="redis",
                       redis_url=settings.redis_url)
        shutil.rmtree(ref.home, ignore_errors=True)
        ref.feature_dir.mkdir(parents=True)
        keep = None
        for path in sorted(settings.feature_dir.glob("*.parquet")):
            df = pq.read_table(path).to_pandas()
            if keep is None:
                keep = set(df["user_id"].drop_duplicates().sort_values().head(args.reference_users))
            df[df["user_id"].isin(keep)].to_parquet(ref.feature_dir / path.name, index=False)
        apply(ref)
        started = time.perf_counter()
        rows = materialize(ref, method="feast-write")
        return {"rows": rows, "users": args.reference_users, "seconds_load": round(time.perf_counter() - started, 2)}
    return {"rows": materialize(settings)}


def _sets(sampled: bool, settings, args) -> dict:
    from nextbest.features.store import feature_store
    from nextbest.training.datasets import Sampling
    from nextbest.training.jobs import (
        MODELS,
        TrainConfig,
        _module,
        model_config,
        read_raw_tables,
        shared_joins,
    )

    raw = read_raw_tables(settings)
    store = feature_store(settings)
    shared = shared_joins(store, list(MODELS), Sampling(args.sample_rows if sampled else 10**12, 7))
    rows = {}
    for name in MODELS:
        data = _module(name).build_frame(store, raw, model_config(name, TrainConfig()), shared)
        rows[name] = len(data.frame)
    return {"rows": rows, "sampling": shared.sampled}


def stage(name: str, args: argparse.Namespace) -> dict:
    """Run one stage in this process (called in a child) and return its timing."""
    sys.path.insert(0, str(ROOT))
    from nextbest.features.settings import Settings

    kind, method = name.split(":")
    store = "redis" if method in ("redis", "feast-write") else "sqlite"
    settings = Settings(home=args.home, online_store=store, redis_url=f"127.0.0.1:{args.redis_port}")
    if kind == "online" and store == "sqlite":
        (settings.feast_dir / "online.db").unlink(missing_ok=True)
        from nextbest.features.store import apply

        apply(settings)  # recreates the empty online tables
    started = time.perf_counter()
    out = _online(method, settings, args) if kind == "online" else _sets(method == "sampled", settings, args)
    out["seconds"] = round(time.perf_counter() - started, 2)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["peak_rss_mb"] = round(usage.ru_maxrss / 1024)
    out["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 1)  # this process, all its threads (and DuckDB's)
    if store == "sqlite" and kind == "online":
        out["online_db_mb"] = round((settings.feast_dir / "online.db").stat().st_size / 2**20)
    return out


def child(name: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--stage", name, "--home", str(args.home), "--redis-port", str(args.redis_port),
           "--sample-rows", str(args.sample_rows), "--reference-users", str(args.reference_users), "--source", "-",
           "--users", str(args.users)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        return {"error": proc.stderr[-1500:]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_seconds"] = round(time.perf_counter() - started, 2)  # includes interpreter + imports
    return result


def _redis(port: int, workdir: Path) -> subprocess.Popen:
    workdir.mkdir(parents=True, exist_ok=True)
    # listpack up to 256 fields: a user's hash (~140 online features) stays compact (README, "Online store")
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--hash-max-listpack-entries", "256", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not start")


def _redis_cpu(port: int) -> float:
    """CPU seconds the redis-server has used so far (user + system)."""
    info = subprocess.run(["redis-cli", "-p", str(port), "info", "cpu"], capture_output=True, text=True).stdout
    fields = dict(ln.split(":", 1) for ln in info.splitlines() if ":" in ln)
    return float(fields.get("used_cpu_user", 0)) + float(fields.get("used_cpu_sys", 0))


def _peak_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="a small built home to tile from (raw + feature tables)")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--sample-rows", type=int, default=500_000)
    parser.add_argument("--reference-users", type=int, default=20_000, help="users for the Feast-write reference")
    parser.add_argument("--home", type=Path, default=None, help="the tiled home (default benchmarks/out/online-<users>)")
    parser.add_argument("--redis-port", type=int, default=6391)
    parser.add_argument("--keep", action="store_true", help="reuse a tiled home from an earlier run")
    parser.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.home = args.home or ROOT / "benchmarks" / "out" / f"online-{args.users}"
    if args.stage:
        print(json.dumps(stage(args.stage, args)))
        return
    results: dict[str, dict] = {}
    if not (args.keep and (args.home / "feast" / "registry.db").exists()):
        started = time.perf_counter()
        tiled = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tile_world.py"), "--source", args.source,
                                "--home", str(args.home), "--users", str(args.users)], capture_output=True, text=True)
        if tiled.returncode != 0:
            raise SystemExit(tiled.stderr[-3000:])
        results["tile"] = {**json.loads(tiled.stdout.strip().splitlines()[-1]),
                           "wall_seconds": round(time.perf_counter() - started, 1)}
        print(f"tile {results['tile']}", flush=True)
    server = _redis(args.redis_port, args.home.parent / f"redis-{args.users}")
    try:
        for name in args.stages.split(","):
            if name.startswith("online:") and name != "online:sqlite-old":
                subprocess.run(["redis-cli", "-p", str(args.redis_port), "flushall"], capture_output=True)
            redis_cpu = _redis_cpu(args.redis_port)
            results[name] = child(name, args)
            if name in ("online:redis", "online:feast-write"):
                results[name]["redis_cpu_seconds"] = round(_redis_cpu(args.redis_port) - redis_cpu, 1)
                info = subprocess.run(["redis-cli", "-p", str(args.redis_port), "info", "memory"], capture_output=True,
                                      text=True).stdout
                used = [ln.split(":")[1] for ln in info.splitlines() if ln.startswith("used_memory_human:")]
                results[name]["redis_used_memory"] = used[0].strip() if used else "?"
                results[name]["redis_peak_rss_mb"] = _peak_mb(server.pid)
            r = results[name]
            print(f"{name:<20} {r.get('seconds', float('nan')):>8.1f} s  peak {r.get('peak_rss_mb', -1):>6} MB  "
                  f"{ {k: v for k, v in r.items() if k not in ('seconds', 'peak_rss_mb')} }", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    summary = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
               "machine": f"{platform.node()} {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
               "users": args.users, "stages": results}
    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"online-{args.users}.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
