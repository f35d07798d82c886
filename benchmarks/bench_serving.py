"""The decision service as shipped: trained champions, in process and over HTTP, beside the floors of the same run.

Runs on a home with trained champions (the demo's `.nextbest` by default: run `make demo` first) and refuses to
report when any answer was degraded (population defaults, a rule-based rung, a model error). In one run:
in-process decide p50/p99; the floors under it (the bulk online read of `decision_v1` for one user, and the
champions' own predict calls on the same candidate matrices); `bentoml serve` on 127.0.0.1 at a fixed rate
(p50/p99), saturation with concurrent clients, a batch of 1,000 users in one request; `nextbest score` for
`--score-users` decisions (the demo's users cycled) beside the bare LightGBM predict rate on the conversion
model's matrix of the same users.
Usage: python benchmarks/bench_serving.py [--home DIR] [--rate 100] [--seconds 60] [--score-users 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

from nextbest.features.settings import Settings


def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"n": len(a), "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99))}


class Degraded(RuntimeError):
    """An answer was not the product's best: the figures would describe something else."""


def _check(decisions: list[dict], where: str) -> None:
    bad = [d for d in decisions if d["degraded_reasons"]]
    if bad:
        raise Degraded(f"{len(bad)} of {len(decisions)} answers {where} were degraded "
                       f"({sorted({r for d in bad for r in d['degraded_reasons']})}); not reporting")


def in_process(settings: Settings, users: list[str], n: int = 500) -> dict:
    """`Runtime.decide` (dry run) per user, and the floors: the online read and the models' predict calls."""
    from nextbest.serving import engine
    from nextbest.serving.runtime import Runtime
    from nextbest.serving.schemas import DecideRequest

    rt = Runtime(settings)
    missing = {"conversion", "uplift", "send_time", "churn"} - set(rt.models.current.models)
    if missing:
        raise Degraded(f"no champion for {sorted(missing)} in {settings.home}: run `make demo` (or train) first")
    for u in users[:50]:  # warm-up
        rt.decide(DecideRequest(user_id=u, dry_run=True))
    decide_ms, read_ms, predict_ms, answers = [], [], [], []
    reader = rt.features.reader()
    config = rt.config.current(time.monotonic())
    for k in range(n):
        u = users[k % len(users)]
        t = time.perf_counter()
        answers.append(rt.decide(DecideRequest(user_id=u, dry_run=True)))
        decide_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        reader.read([u])
        read_ms.append((time.perf_counter() - t) * 1000)
        predict_ms.append(_predict_floor(rt.models.current, rt.features.fetch([u])[0], config, engine))
    _check(answers, "in process")
    out = {"decide": percentiles(decide_ms), "online_read": percentiles(read_ms), "predict": percentiles(predict_ms)}
    out["floor_p50_ms"] = out["online_read"]["p50_ms"] + out["predict"]["p50_ms"]
    out["ratio_decide_to_floor"] = out["decide"]["p50_ms"] / out["floor_p50_ms"]
    return out


def _predict_floor(models, users, config, engine) -> float:
    """Milliseconds of the champions' own predict calls for one decision, their inputs built beforehand."""
    from nextbest.training.compiled import Rows
    from nextbest.training.nets import predict_net

    ucols, grid = engine.user_columns(users), engine.request_grid(config)
    n_o, n_c = len(config.offers), len(config.channels)
    one = np.zeros(1, dtype="int64")
    hours = np.full(n_o * n_c, 12.0)
    calls = []
    send = models.compiled["send_time"]
    x = Rows(ucols, np.zeros(n_c * 24, dtype="int64"), np.repeat(np.arange(n_c), 24), np.tile(np.arange(24.0), n_c), grid)
    raw = send.plan.codes(x)
    channel, hour, share = send.inputs(x)  # the compiled scorer's own per-row inputs (the rhythm's shape included)
    inputs = {"x": send.plan.encoder.dense_codes(raw), "channel": channel, "hour": hour, "share": share}
    calls.append(lambda: predict_net(send.net, inputs))
    conv = models.compiled["conversion"]
    xc = conv.plan.codes(Rows(ucols, np.zeros(n_o * n_c, dtype="int64"), np.arange(n_o * n_c), hours, grid))
    calls.append(lambda: conv.booster.predict(xc, num_threads=1))
    uplift = models.compiled["uplift"]
    for arm, rows in (("engage", n_c), ("control", 1), ("convert", n_o), ("click", n_o)):
        if arm in uplift.fitted:
            b = uplift.fitted[arm]
            xa = b.plan.codes(Rows(ucols, np.zeros(rows, dtype="int64"), np.arange(rows), np.full(rows, 12.0), grid))
            calls.append(lambda b=b, xa=xa: b.predict_codes(xa))  # staged and averaged arms as serving scores them
    churn = models.compiled["churn"]
    xs = churn.plan.codes(Rows(ucols, one, one, None, grid))
    calls.append(lambda: churn.booster.predict(xs, num_threads=1))
    t = time.perf_counter()
    for call in calls:
        call()
    return (time.perf_counter() - t) * 1000


def score_rate(settings: Settings, users: list[str], n: int) -> dict:
    """`nextbest score` over n decisions (the users cycled), and the bare LightGBM predict rate on the conversion
    model's matrix for the same users (the offer x channel rows of each)."""
    import tempfile as tf

    from nextbest.pipelines.score import ScoreConfig, score
    from nextbest.serving import engine
    from nextbest.serving.runtime import Runtime
    from nextbest.training.compiled import Rows

    rt = Runtime(settings)
    ids = [users[k % len(users)] for k in range(n)]
    with tf.TemporaryDirectory() as tmp:
        # Cycled ids repeat within a chunk only if a chunk exceeds the user count.
        summary = score(settings, ScoreConfig(out=Path(tmp) / "s.parquet", user_ids=tuple(ids),
                                              chunk=min(1_000, len(users))), runtime=rt)
    if summary["degraded"]:
        raise Degraded(f"{summary['degraded']} scored decisions were degraded; not reporting")
    config = rt.config.current(time.monotonic())
    sample = users[:5_000]
    feats = rt.features.fetch(sample)[0]
    n_cells = len(config.offers) * len(config.channels)
    conv = rt.models.current.compiled["conversion"]
    x = conv.plan.codes(Rows(engine.user_columns(feats), np.repeat(np.arange(len(sample)), n_cells),
                             np.tile(np.arange(n_cells), len(sample)), np.full(len(sample) * n_cells, 12.0),
                             engine.request_grid(config)))
    t = time.perf_counter()
    conv.booster.predict(x, num_threads=1)
    bare_users_per_s = len(sample) / (time.perf_counter() - t)
    return {"decisions": summary["scored"], "seconds": summary["seconds"], "users_per_s": summary["users per second"],
            "bare_conversion_predict_users_per_s": bare_users_per_s,
            "score_share_of_bare_predict": summary["users per second"] / bare_users_per_s,
            "projected_1M_users_min": 1_000_000 / summary["users per second"] / 60}


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
                    errors[0] += r.status_code != 200 or bool(r.json()["degraded_reasons"])

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors[0]:
        raise Degraded(f"{errors[0]} of {total} answers at {rate}/s failed or were degraded; not reporting")
    return percentiles(lat) | {"rate_per_s": rate}


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
            answer = c.post("/decide_batch", json={"user_ids": users, "dry_run": True}).raise_for_status().json()
            ms.append((time.perf_counter() - t) * 1000)
            _check(answer["decisions"], "in the 1,000-user batch")
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
    parser.add_argument("--home", type=Path, default=Path(".nextbest"), help="NEXTBEST home with trained champions")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second in the fixed-rate phase")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the fixed-rate phase")
    parser.add_argument("--saturation-seconds", type=float, default=15.0)
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients in the saturation phase")
    parser.add_argument("--score-users", type=int, default=100_000, help="decisions for the score phase (0: skip)")
    parser.add_argument("--workers", type=int, default=1, help="decision service worker processes (NEXTBEST_WORKERS)")
    args = parser.parse_args()

    from nextbest.features.store import read_table
    from nextbest.pipelines.serve_commands import running_service

    settings = Settings(home=args.home, workers=args.workers)
    os.environ.setdefault("NEXTBEST_HOME", str(args.home))
    users = read_table(settings, "profile")["user_id"].astype(str).tolist()
    load_before, cpu_before = os.getloadavg(), cpu_check()
    result = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "date": datetime.now(UTC).isoformat(timespec="seconds"), "users_in_store": len(users),
              "workers": args.workers}
    try:
        result["in_process"] = in_process(settings, users)
        result["bulk_reader"] = reader_reference(settings, users)
        result["feast_reference"] = feast_reference(settings, users)
        with running_service(settings) as url:
            with httpx.Client(base_url=url) as c:  # warm up: imports, registry cache, first predictions
                for u in users[:50]:
                    c.post("/decide", json={"user_id": u, "dry_run": True})
            result["fixed_rate"] = fixed_rate(url, users, args.rate, args.seconds)
            result["saturation"] = saturation(url, users, args.saturation_seconds, args.clients)
            result["batch"] = batch(url, users[:1000])
        if args.score_users:
            result["score"] = score_rate(settings, users, args.score_users)
    except Degraded as err:
        print(json.dumps({**result, "refused": str(err)}, indent=2))
        raise SystemExit(1) from None
    result["machine_load"] = {"loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                              "cpu_check_s_before": cpu_before, "cpu_check_s_after": cpu_check()}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
