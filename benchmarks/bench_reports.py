"""The week's report over a large contact log, as shipped: `nextbest report`'s write_report on a home whose raw
contacts table holds N rows (read Parquet, label, every table, HTML, CSVs), timed per stage, beside a bare pandas
group-by of the same rows (the floor: one pass over the data).

    flock /tmp/nextbest-bigbench.lock .venv/bin/python benchmarks/bench_reports.py --contacts 1000000
"""

from __future__ import annotations

import argparse
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from nextbest.features.ingest import write_raw
from nextbest.features.settings import Settings
from nextbest.monitoring.html import report_html
from nextbest.monitoring.reports import build_report
from nextbest.monitoring.sources import default_as_of, load_frame
from nextbest.pipelines.report_commands import write_report

END = pd.Timestamp("2026-11-29T00:00:00Z")


def contacts(n: int, seed: int = 0) -> pd.DataFrame:
    """N contacts over 7 days: 20 campaigns, 12 offers, 5 channels, 3 copies, 10 % control, outcomes."""
    rng = np.random.default_rng(seed)
    sent = END - pd.to_timedelta(rng.integers(60, 7 * 86400, n), unit="s")
    control = rng.random(n) < 0.1
    delivered = ~control & (rng.random(n) < 0.95)
    opened = delivered & (rng.random(n) < 0.3)
    clicked = opened & (rng.random(n) < 0.3)
    converted = rng.random(n) < np.where(control, 0.03, np.where(clicked, 0.4, 0.04))
    channels = np.array(["email", "sms", "push", "inapp", "wechat"], dtype=object)
    offers = np.array([f"o{i}" for i in range(12)], dtype=object)

    def at(mask, hours):
        return pd.Series(sent + pd.Timedelta(hours=hours)).where(mask)

    return pd.DataFrame({
        "contact_id": pd.Series(np.arange(n)).astype(str).radd("c"), "user_id": pd.Series(rng.integers(0, n // 3, n)).astype(str).radd("u"),
        "sent_at": sent, "campaign_id": pd.Series(rng.integers(0, 20, n)).astype(str).radd("cmp"),
        "offer_id": np.where(control, None, offers[rng.integers(0, 12, n)]),
        "channel": np.where(control, None, channels[rng.integers(0, 5, n)]),
        "variant": np.where(control, "control", np.array(["A", "B", "C"], dtype=object)[rng.integers(0, 3, n)]),
        "propensity": 0.5, "delivered_at": at(delivered, 0.1), "opened_at": at(opened, 2), "clicked_at": at(clicked, 2.5),
        "converted_at": at(converted, 20), "revenue": np.where(converted, rng.gamma(2.0, 25.0, n).round(2), 0.0),
    })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--contacts", type=int, default=1_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(home=Path(tmp) / "home")
        df = contacts(args.contacts)
        write_raw({"contacts": df}, settings.raw_dir)
        t0 = time.perf_counter()
        floor = df.groupby(["campaign_id", "channel"], dropna=False)["revenue"].agg(["sum", "count"])
        t_floor = time.perf_counter() - t0
        del df, floor
        stages = {}
        t = time.perf_counter()
        frame = load_frame(settings)
        stages["read + label (load_frame)"] = time.perf_counter() - t
        t = time.perf_counter()
        report = build_report(frame, "week", default_as_of(frame))
        stages["every table (build_report)"] = time.perf_counter() - t
        t = time.perf_counter()
        report_html(report)
        stages["HTML"] = time.perf_counter() - t
        t = time.perf_counter()
        write_report(settings, "week", None, Path(tmp) / "out")
        stages["nextbest report end to end (write_report)"] = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, "
          f"{__import__('os').cpu_count()} cores; {pd.Timestamp.now(tz='UTC'):%Y-%m-%d %H:%M} UTC")
    print(f"contacts: {args.contacts:,}")
    print(f"reference: bare pandas group-by (campaign, channel) sum+count of the same rows: {t_floor:.2f} s")
    for name, s in stages.items():
        print(f"{name}: {s:.2f} s")
    print(f"peak RSS: {peak:,.0f} MB")


if __name__ == "__main__":
    main()
