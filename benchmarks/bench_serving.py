"""Decision service latency and throughput over HTTP on localhost, beside the bare Feast online fetch.

Runs `bentoml serve` on 127.0.0.1, then: single-user decide at a fixed rate (p50/p99), saturation
throughput with a few concurrent clients, a batch of 1,000 users in one request, and, as the
reference measured in the same run, Feast `get_online_features` for the same users. Every phase is
bounded in time. Usage: python benchmarks/bench_serving.py [--home DIR] [--rate 100] [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
from nextbest.features.settings import Settings


def build_demo_store(folder: Path, users: int) -> Settings:
    """A small store from random contract tables when no --home is given (12 offers x 5 channels still apply)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.conftest import build_store, make_raw

    settings = Settings(home=folder / "home")
    build_store(settings, make_raw(n_users=users, n_events=users * 20, n_contacts=users * 6), folder / "csv")
    return settings


def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"n": len(a), "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99))}


def fixed_rate(url: str, users: list[str], rate: float, seconds: float, threads: int = 4) -> dict:
    """Open loop: request k is due at k / rate; latency is measured from when it was due."""
    total = int(rate * seconds)
    lat: list[float] = []
    errors = [0]
    start = time.perf_counter() + 0.2
    lock = threading.Lock()
    counter = iter(range(total))

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=10) as c:
            for k in counter:
                due = start + k / rate
                time.sleep(max(0.0, due - time.perf_counter()))
                r = c.post("/decide", json={"user_id": users[k % len(users)], "dry_run": True})
                with lock:
                    lat.append((time.perf_counter() - due) * 1000)
                    errors[0] += r.status_code != 200

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return percentiles(lat) | {"rate_per_s": rate, "errors": errors[0]}


def saturation(url: str, users: list[str], seconds: float, clients: int = 4) -> dict:
    done = [0]
    stop = time.perf_counter() + seconds
    lock = threading.Lock()

    def worker(k: int) -> None:
        with httpx.Client(base_url=url, timeout=10) as c:
            i = k
            while time.perf_counter() < stop:
                c.post("/decide", json={"user_id": users[i % len(users)], "dry_run": True}).raise_for_status()
                i += clients
                with lock:
                    done[0] += 1

    t0 = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return {"decisions_per_s": done[0] / (time.perf_counter() - t0), "clients": clients}


def batch(url: str, users: list[str], repeats: int = 5) -> dict:
    ms = []
    with httpx.Client(base_url=url, timeout=60) as c:
        for _ in range(repeats):
            t = time.perf_counter()
            c.post("/decide_batch", json={"user_ids": users, "dry_run": True}).raise_for_status()
            ms.append((time.perf_counter() - t) * 1000)
    return percentiles(ms) | {"users": len(users)}


def feast_reference(settings: Settings, users: list[str], single: int = 300) -> dict:
    from nextbest.features.store import feature_store

    store = feature_store(settings)
    service = store.get_feature_service("decision_v1")
    one = []
    for k in range(single):
        t = time.perf_counter()
        store.get_online_features(features=service, entity_rows=[{"user_id": users[k % len(users)]}]).to_dict()
        one.append((time.perf_counter() - t) * 1000)
    t = time.perf_counter()
    store.get_online_features(features=service, entity_rows=[{"user_id": u} for u in users[:1000]]).to_dict()
    return {"single": percentiles(one), "batch_1000_ms": (time.perf_counter() - t) * 1000,
            "features": sum(len(p.features) for p in service.feature_view_projections)}


def reader_reference(settings: Settings, users: list[str], single: int = 300) -> dict:
    """The bulk SQLite reader the service uses (features/online_sqlite.py), on the same users."""
    from nextbest.features.online_sqlite import OnlineReader
    from nextbest.features.store import feature_store

    reader = OnlineReader(feature_store(settings), "decision_v1")
    one = []
    for k in range(single):
        t = time.perf_counter()
        reader.read([users[k % len(users)]])
        one.append((time.perf_counter() - t) * 1000)
    batch_ms = []
    for _ in range(3):
        t = time.perf_counter()
        reader.read(users[:1000])
        batch_ms.append((time.perf_counter() - t) * 1000)
    return {"single": percentiles(one), "batch_1000_ms": float(np.median(batch_ms))}


def cpu_check() -> float:
    """Seconds for a fixed pure-Python loop: a yardstick for how busy the shared machine was."""
    t = time.perf_counter()
    sum(range(10_000_000))
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="NEXTBEST home with a built Feast store (default: build a small one)")
    parser.add_argument("--users", type=int, default=2000, help="users in the generated store")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second in the fixed-rate phase")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the fixed-rate phase")
    parser.add_argument("--saturation-seconds", type=float, default=15.0)
    args = parser.parse_args()

    from nextbest.features.store import read_table
    from nextbest.pipelines.serve_commands import running_service

    tmp = tempfile.TemporaryDirectory()
    settings = Settings(home=args.home) if args.home else build_demo_store(Path(tmp.name), args.users)
    users = read_table(settings, "profile")["user_id"].astype(str).tolist()
    load_before, cpu_before = os.getloadavg(), cpu_check()
    reference = feast_reference(settings, users)
    reader = reader_reference(settings, users)
    with running_service(settings) as url:
        with httpx.Client(base_url=url) as c:  # warm up: imports, registry cache, first predictions
            for u in users[:50]:
                c.post("/decide", json={"user_id": u, "dry_run": True})
        result = {
            "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "fixed_rate": fixed_rate(url, users, args.rate, args.seconds),
            "saturation": saturation(url, users, args.saturation_seconds),
            "batch": batch(url, users[:1000]),
            "feast_reference": reference,
            "bulk_reader": reader,
        }
    result["machine_load"] = {"loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                              "cpu_check_s_before": cpu_before, "cpu_check_s_after": cpu_check()}
    result["ratio_p50_decide_to_feast"] = result["fixed_rate"]["p50_ms"] / reference["single"]["p50_ms"]
    result["ratio_batch_to_feast_batch"] = result["batch"]["p50_ms"] / reference["batch_1000_ms"]
    print(json.dumps(result, indent=2))
    tmp.cleanup()


if __name__ == "__main__":
    main()
