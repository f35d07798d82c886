"""Benchmark: from nothing to online features (simulate -> build -> apply -> materialise), wall time and peak memory.

Each stage runs in a fresh child process so its peak RSS is its own. The reference measured in the same
run is Feast's own online write of the same rows (`--reference`), on a sample of users.

    .venv/bin/python benchmarks/bench_features.py --users 100000
    .venv/bin/python benchmarks/bench_features.py --users 1000000 --snapshots 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def stage(name: str, home: Path, args: argparse.Namespace) -> dict:
    """Run one stage in this process (called in a child) and return its timing."""
    sys.path.insert(0, str(ROOT))
    from nextbest.features.build import BuildConfig, build_all
    from nextbest.features.contract import TABLES
    from nextbest.features.ingest import read_raw, write_raw
    from nextbest.features.settings import Settings
    from nextbest.features.store import apply, materialize, write_tables

    settings = Settings(home=home)
    started = time.perf_counter()
    out: dict = {}
    if name == "simulate":
        from nextbest.simulation import WorldConfig, simulate

        world = simulate(WorldConfig(n_users=args.users, seed=args.seed))
        write_raw(world.tables, settings.raw_dir)
        out["rows"] = {k: len(v) for k, v in world.tables.items()}
    elif name == "build":
        raw = {t: read_raw(settings.raw_dir, t) for t in TABLES}
        tables = build_all(raw, BuildConfig(snapshot_every_days=args.every_days, snapshots=args.snapshots))
        out["rows"] = write_tables(tables, settings.feature_dir)
        out["features"] = sum(df.shape[1] - 2 for df in tables.values())
    elif name == "apply":
        apply(settings)
    elif name.startswith("materialize"):
        method = name.split(":", 1)[1]
        if method != "bulk":  # the reference: Feast's own path on a copy limited to a sample of users
            import shutil

            import pandas as pd

            ref = Settings(home=home.parent / f"ref-{method}")
            shutil.rmtree(ref.home, ignore_errors=True)
            shutil.copytree(settings.home, ref.home)
            (ref.feast_dir / "online.db").unlink(missing_ok=True)
            for path in ref.feature_dir.glob("*.parquet"):
                df = pd.read_parquet(path)
                keep = df["user_id"].drop_duplicates().sort_values().head(args.reference_users)
                df[df["user_id"].isin(keep)].to_parquet(path, index=False)
            apply(ref)
            settings = ref
            out["users"] = args.reference_users
        started = time.perf_counter()
        out["rows"] = materialize(settings, method=method)
    out["seconds"] = round(time.perf_counter() - started, 2)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def child(name: str, home: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--stage", name, "--home", str(home), "--users", str(args.users),
           "--seed", str(args.seed), "--every-days", str(args.every_days), "--reference-users", str(args.reference_users)]
    if args.snapshots:
        cmd += ["--snapshots", str(args.snapshots)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        raise SystemExit(f"stage {name} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_seconds"] = round(time.perf_counter() - started, 2)  # includes interpreter + imports
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--every-days", type=int, default=7)
    parser.add_argument("--snapshots", type=int, default=None)
    parser.add_argument("--reference-users", type=int, default=20_000, help="users for the Feast-write reference")
    parser.add_argument("--home", type=Path, default=ROOT / "benchmarks" / "out" / "features")
    parser.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(stage(args.stage, args.home, args)))
        return
    home = args.home / f"u{args.users}"
    import shutil

    shutil.rmtree(home, ignore_errors=True)
    results = {}
    for name in ("simulate", "build", "apply", "materialize:bulk", "materialize:feast-write"):
        results[name] = child(name, home, args)
        print(f"{name:<24} {results[name]['seconds']:>8.1f} s  peak {results[name]['peak_rss_mb']:>6} MB", flush=True)
    total = sum(results[n]["wall_seconds"] for n in ("simulate", "build", "apply", "materialize:bulk"))
    peak = max(results[n]["peak_rss_mb"] for n in ("simulate", "build", "apply", "materialize:bulk"))
    ref = results["materialize:feast-write"]
    bulk = results["materialize:bulk"]
    per_user_ref = ref["seconds"] / ref["users"]
    per_user_bulk = bulk["seconds"] / args.users
    summary = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.node()} {os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "users": args.users,
        "features_online": results["build"].get("features"),
        "total_wall_seconds": round(total, 1),
        "peak_rss_mb": peak,
        "bulk_seconds_per_1k_users": round(per_user_bulk * 1000, 3),
        "feast_write_seconds_per_1k_users": round(per_user_ref * 1000, 3),
        "speedup_vs_feast_write": round(per_user_ref / per_user_bulk, 2),
        "stages": results,
    }
    print(json.dumps(summary, indent=2))
    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"features-{args.users}.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
