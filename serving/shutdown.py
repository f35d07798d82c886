"""Graceful stop of a decision-service worker: drain, then let the server stop.

BentoML's arbiter (circus) answers SIGTERM by sending SIGTERM to each worker and waiting for it; the
worker's uvicorn would then close its listening socket at once and cut nothing but also answer nobody,
while a load balancer still sends traffic there. The handler installed here runs first: readiness turns
false and new requests get 503 at once, requests already in flight finish (at most `grace_s`), and only
then is uvicorn's own handler called, which stops the server and runs the service's on_shutdown hook
(ledger and decision log closed).
"""

from __future__ import annotations

import functools
import json
import logging
import signal
import threading
import time

__all__ = ["Drain", "drain", "install", "DrainMiddleware", "ALWAYS_ANSWERED"]

log = logging.getLogger("nextbest.serving")

# Answered while draining: liveness (the process is alive) and the final metrics for the scraper.
ALWAYS_ANSWERED = frozenset({"/livez", "/healthz", "/metrics"})
_REFUSAL = json.dumps({"error": "the decision service is shutting down; send the request to another replica"}).encode()


class Drain:
    """Whether this worker is draining, and how many requests are in flight (changed on the event loop only)."""

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0
        self.since: float | None = None  # time.time() when draining began

    def begin(self) -> None:
        if not self.draining:
            self.since = time.time()
            self.draining = True

    def wait_idle(self, grace_s: float, poll_s: float = 0.02) -> bool:
        """Block until no request is in flight (True) or `grace_s` has passed (False)."""
        deadline = time.monotonic() + grace_s
        while self.in_flight > 0:
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)
        return True


@functools.cache
def drain() -> Drain:
    """The one Drain of this process (the middleware and the signal handler share it)."""
    return Drain()


def install(grace_s: float) -> bool:
    """Put the drain in front of the server's SIGTERM/SIGINT handlers; False where there is no such handler.

    Only the main thread may set signal handlers, and only a server that handles the signal (uvicorn in a
    BentoML worker) has one to hand over to: in-process tests (ASGI test client) install nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    installed = False
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if callable(previous):
            signal.signal(sig, functools.partial(_on_signal, previous, grace_s))
            installed = True
    return installed


def _on_signal(previous, grace_s: float, sig: int, frame) -> None:
    d = drain()
    if d.draining:
        if sig == signal.SIGINT:  # a second Ctrl-C: stop now, as uvicorn would
            previous(sig, frame)
        return  # circus repeats SIGTERM to the worker it is stopping: one drain is enough
    d.begin()
    log.warning("%s: draining (readiness false, new requests 503), %d request(s) in flight, grace %.0f s",
                signal.Signals(sig).name, d.in_flight, grace_s)
    threading.Thread(target=_finish, args=(previous, sig, grace_s), name="drain", daemon=True).start()


def _finish(previous, sig: int, grace_s: float) -> None:
    d = drain()
    if d.wait_idle(grace_s):
        log.warning("drained in %.2f s; stopping", time.time() - (d.since or time.time()))
    else:
        log.error("grace period of %.0f s over with %d request(s) still running; stopping anyway", grace_s, d.in_flight)
    previous(sig, None)  # uvicorn's handler only sets flags, so it may run off the main thread


class DrainMiddleware:
    """ASGI middleware: counts requests in flight; while draining, answers 503 (readiness included)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in ALWAYS_ANSWERED:
            await self.app(scope, receive, send)
            return
        d = drain()
        if d.draining:
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"), (b"retry-after", b"1"),
                                    (b"connection", b"close"), (b"content-length", str(len(_REFUSAL)).encode())]})
            await send({"type": "http.response.body", "body": _REFUSAL})
            return
        d.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            d.in_flight -= 1
