"""Prometheus metrics of the decision service (served by BentoML at /metrics)."""

from __future__ import annotations

import functools
from collections import Counter

__all__ = ["Metrics", "metrics"]


class Metrics:
    """Latency, decisions by offer and channel, filtered candidates by reason, degraded answers, model versions."""

    def __init__(self):
        # Imported here, not at module import: BentoML sets the multiprocess directory in the worker first.
        from prometheus_client import Counter, Gauge, Histogram

        self.latency = Histogram("nextbest_decide_seconds", "Time to decide one request (single or batch)",
                                 buckets=(0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0))
        self.decisions = Counter("nextbest_decisions_total", "Actions decided, by offer and channel", ["offer", "channel"])
        self.no_action = Counter("nextbest_no_action_total", "Decisions with no action")
        self.filtered = Counter("nextbest_filtered_total", "Candidates removed by the contact policy, by reason", ["reason"])
        self.degraded = Counter("nextbest_degraded_total", "Decisions answered with a fallback, by reason", ["reason"])
        self.model = Gauge("nextbest_model_loaded", "1 for each model version in force", ["kind", "version"],
                           multiprocess_mode="livemax")

    def decided(self, decisions: list[dict], seconds: float) -> None:
        """Count a request's decisions; labels are summed first, so a batch costs one update per label."""
        self.latency.observe(seconds)
        actions: Counter = Counter()
        filtered: Counter = Counter()
        degraded: Counter = Counter()
        no_action = 0
        for d in decisions:
            if d.get("replayed"):
                continue
            actions.update((a["offer_id"], a["channel"]) for a in d["actions"])
            no_action += not d["actions"]
            filtered.update(r["reason"] for r in d["filtered"])
            degraded.update(d["degraded_reasons"])
        for (offer, channel), n in actions.items():
            self.decisions.labels(offer, channel).inc(n)
        if no_action:
            self.no_action.inc(no_action)
        for reason, n in filtered.items():
            self.filtered.labels(reason).inc(n)
        for reason, n in degraded.items():
            self.degraded.labels(reason).inc(n)

    def models(self, versions: dict[str, str]) -> None:
        self.model.clear()
        for kind, version in versions.items():
            self.model.labels(kind, version).set(1)


@functools.cache
def metrics() -> Metrics:
    """One Metrics per process (prometheus refuses to register a metric name twice)."""
    return Metrics()
