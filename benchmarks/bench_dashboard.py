"""Dashboard page times on a home (after `make demo`: the demo world), in process over HTTP (Starlette's test
client), the app warmed as `nextbest dashboard` warms it (the logs read and each period's report built at start):
the first request of each page and the median of the next five (target <= 1 s each), beside `load_frame` +
`build_report` alone measured in the same run.

    .venv/bin/python benchmarks/bench_dashboard.py --home .nextbest
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

from starlette.testclient import TestClient

from nextbest.features.settings import Settings
from nextbest.monitoring.dashboard import create_app
from nextbest.monitoring.reports import build_report
from nextbest.monitoring.sources import default_as_of, load_frame

PAGES = ("/", "/report?period=week", "/report?period=month", "/health", "/api/report?period=week", "/metrics")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--home", type=Path, default=Path(".nextbest"))
    args = ap.parse_args()
    settings = Settings(home=args.home)
    t = time.perf_counter()
    frame = load_frame(settings)
    t_load = time.perf_counter() - t
    t = time.perf_counter()
    build_report(frame, "week", default_as_of(frame))
    t_build = time.perf_counter() - t
    print(f"machine: {platform.node()}, {__import__('os').cpu_count()} cores; "
          f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC; home {args.home} ({len(frame):,} report rows)")
    print(f"reference: load_frame {t_load:.2f} s, build_report(week) {t_build:.2f} s")
    t = time.perf_counter()
    app = create_app(settings, warm=True)
    print(f"start (warm: read the logs, build each period's report): {time.perf_counter() - t:.2f} s")
    with TestClient(app, base_url="http://127.0.0.1:8050") as client:
        for page in PAGES:
            times = []
            for _ in range(6):
                t = time.perf_counter()
                r = client.get(page)
                times.append(time.perf_counter() - t)
                assert r.status_code == 200, (page, r.status_code)
            print(f"{page:28s} first {times[0]:.3f} s, then median {statistics.median(times[1:]):.3f} s "
                  f"({len(r.content):,} bytes)")
        cid = next((c for c in client.get("/api/report").json()["tables"]["funnel_campaign"]), None)
        if cid:
            t = time.perf_counter()
            r = client.get(f"/campaigns/{cid['campaign_id']}")
            print(f"/campaigns/{cid['campaign_id']:18s} {time.perf_counter() - t:.3f} s (status {r.status_code})")


if __name__ == "__main__":
    main()
