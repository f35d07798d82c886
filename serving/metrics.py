"""Prometheus metrics of the decision service (served by BentoML at /metrics)."""

from __future__ import annotations

import functools

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
        self.latency.observe(seconds)
        for d in decisions:
            if d.get("replayed"):
                continue
            for a in d["actions"]:
                self.decisions.labels(a["offer_id"], a["channel"]).inc()
            if not d["actions"]:
                self.no_action.inc()
            for r in d["filtered"]:
                self.filtered.labels(r["reason"]).inc()
            for r in d["degraded_reasons"]:
                self.degraded.labels(r).inc()

    def models(self, versions: dict[str, str]) -> None:
        self.model.clear()
        for kind, version in versions.items():
            self.model.labels(kind, version).set(1)


@functools.cache
def metrics() -> Metrics:
    """One Metrics per process (prometheus refuses to register a metric name twice)."""
    return Metrics()
