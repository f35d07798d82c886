"""Benchmark: `nextbest train all` on a large home, each model's wall time and peak RSS, with a reference.

Runs what `train all` runs (`training.jobs.train_models` over the default models, the default trials and
`NEXTBEST_TRAIN_SAMPLE_ROWS`), in this process, with a thread sampling the process's RSS every 0.2 s: the peak is
given per model (from its first step to the next model's) and for the whole run. The reference, measured after
it in a fresh child process: reading the raw events and contacts into pandas as training did before it read them
through DuckDB (wall time and peak RSS). Homes above 100k users: hold the shared lock.

    NEXTBEST_HOME=/tmp/h100k python benchmarks/bench_train_scale.py
    NEXTBEST_HOME=/tmp/h1m flock /tmp/nextbest-bigbench.lock python benchmarks/bench_train_scale.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time

import psutil

from nextbest.training.datasets import Sampling


class Peaks:
    """Peak RSS of this process per named stage, sampled by a thread."""

    def __init__(self, every_s: float = 0.2):
        self.proc, self.every_s = psutil.Process(), every_s
        self.stage, self.peaks, self.started, self.cpu = "start", {}, {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self.proc.memory_info().rss
            self.peaks[self.stage] = max(self.peaks.get(self.stage, 0), rss)
            self._stop.wait(self.every_s)

    def enter(self, stage: str) -> None:
        if stage not in self.started:  # CPU seconds (all threads) are the steadier figure on a shared machine
            self.started[stage], self.cpu[stage] = time.perf_counter(), time.process_time()
            self.stage = stage
            print(json.dumps({"stage": stage, "at_s": round(self.started[stage] - self.t0, 1),
                              "cpu_s": round(self.cpu[stage] - self.c0, 1), "load": os.getloadavg()[0]}), flush=True)

    def __enter__(self):
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def reference() -> dict:
    """Read the raw events and contacts into pandas, as training did before (child process)."""
    from nextbest.features.settings import Settings
    from nextbest.training.jobs import read_raw_tables

    started = time.perf_counter()
    raw = read_raw_tables(Settings())
    return {"reference_read_raw_pandas_s": round(time.perf_counter() - started, 1),
            "events": len(raw["events"]), "contacts": len(raw["contacts"])}


def row_sets() -> dict:
    """The part of `train all` that grows with users, without the feature join or the fits (child process): the
    contact log's labels and stratified sample, the snapshot rows' purchase and churn labels (DuckDB over the raw
    Parquet) and their stratified sample. Needs only the raw tables (no feature build)."""
    from nextbest.features.settings import Settings
    from nextbest.training.churn import ChurnConfig, churn_labels
    from nextbest.training.datasets import (
        SNAPSHOTS,
        STRATA,
        contact_row_set,
        snapshot_dates,
        snapshot_rows,
        stratified_sample,
    )
    from nextbest.training.jobs import ON_DISK, read_raw_tables
    from nextbest.training.purchase import purchase_labels

    settings, out, t = Settings(), {}, time.perf_counter()
    sampling = Sampling(settings.train_sample_rows, settings.seed)
    raw = read_raw_tables(settings, ON_DISK)
    out["read_users_etc_s"], t = round(time.perf_counter() - t, 1), time.perf_counter()
    rows, record = contact_row_set(raw, 7, sampling)
    out["contact_rows_s"], t = round(time.perf_counter() - t, 1), time.perf_counter()
    out["contacts"] = {k: record[k] for k in ("sample_of_rows", "sample_rows", "sample_rate")}
    dates = snapshot_dates(raw["events"], 30)
    snaps = snapshot_rows(raw["users"], dates)
    snaps["label"] = purchase_labels(snaps, raw["events"], 30)
    out["purchase_labels_s"], t = round(time.perf_counter() - t, 1), time.perf_counter()
    label, eligible = churn_labels(snaps, raw["events"], ChurnConfig())
    out["churn_labels_s"], t = round(time.perf_counter() - t, 1), time.perf_counter()
    _, record = stratified_sample(snaps, tuple(c for c in STRATA[SNAPSHOTS] if c in snaps), sampling.max_rows, sampling.seed)
    out["snapshot_sample_s"] = round(time.perf_counter() - t, 1)
    out["snapshots"] = {k: record[k] for k in ("sample_of_rows", "sample_rows", "sample_rate")}
    out["purchase_rate"], out["churn_rate_active"] = round(float(snaps["label"].mean()), 4), round(float(label[eligible].mean()), 4)
    out["cpu_s"] = round(time.process_time(), 1)
    return out


def in_child(flag: str) -> dict:
    """Run this script with `flag` in a child process: its JSON answer, wall time and peak RSS."""
    started = time.perf_counter()
    child = psutil.Popen([sys.executable, __file__, flag], stdout=subprocess.PIPE, text=True)
    peak = 0
    while child.poll() is None:
        try:
            peak = max(peak, child.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.2)
    out = json.loads(child.stdout.read().strip().splitlines()[-1])
    return {flag.strip("-"): out, "wall_s": round(time.perf_counter() - started, 1), "peak_rss_gb": round(peak / 1e9, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=None, help="default: `nextbest train`'s (10)")
    parser.add_argument("--reference", action="store_true", help="(internal) run the reference in this process")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--row-sets", action="store_true", help="only the row sets (raw tables only, no feature build), "
                        "each in a child process, then the reference")
    parser.add_argument("--row-sets-child", action="store_true", help="(internal)")
    args = parser.parse_args()
    if args.reference:
        print(json.dumps(reference()))
        return
    if args.row_sets_child:
        print(json.dumps(row_sets()))
        return
    if args.row_sets:
        print(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "load_before": os.getloadavg()}), flush=True)
        print(json.dumps(in_child("--row-sets-child")), flush=True)
        print(json.dumps({**in_child("--reference"), "load_after": os.getloadavg()}), flush=True)
        return
    from nextbest.features.settings import Settings
    from nextbest.training.jobs import DEFAULT_MODELS, TrainConfig, train_models

    settings = Settings()
    config = TrainConfig(seed=settings.seed, sample_rows=settings.train_sample_rows,
                         **({"trials": args.trials} if args.trials else {}))
    print(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M"),
                      "load_before": os.getloadavg(), "home": str(settings.home), "trials": config.trials,
                      "sample_rows": config.sample_rows}), flush=True)
    started = time.perf_counter()
    with Peaks() as peaks:
        results = train_models(settings, list(DEFAULT_MODELS), config,
                               progress=lambda text: peaks.enter(text.split(":")[0]))
    total = time.perf_counter() - started
    names = [r.name for r in results]
    cpu_end = {n: peaks.cpu.get(m, time.process_time()) for n, m in zip(names, [*names[1:], None], strict=True)}
    for r in results:
        print(json.dumps({"model": r.name, "seconds": round(r.seconds, 1),
                          "cpu_s": round(cpu_end[r.name] - peaks.cpu.get(r.name, 0.0), 1), "peak_rss_gb": round(peaks.peaks.get(r.name, 0) / 1e9, 2),
                          "rows": r.rows, "train_rows": r.train_rows, "auc": round(r.metrics.get("auc", float("nan")), 4),
                          "qini_auc": round(r.metrics.get("qini_auc", float("nan")), 4),
                          "promoted": r.decision.get("promoted")}), flush=True)
    before_first = peaks.started[results[0].name] - started if results else 0.0
    print(json.dumps({"all_models_seconds": round(total, 1), "before_first_model_s": round(before_first, 1),
                      "peak_rss_gb": round(max(peaks.peaks.values()) / 1e9, 2), "cpu_s": round(time.process_time(), 1),
                      "load_after": os.getloadavg()}), flush=True)
    if not args.no_reference:
        print(json.dumps(in_child("--reference")), flush=True)


if __name__ == "__main__":
    main()
