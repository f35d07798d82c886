"""Stopping the decision service: drain (503, readiness false), in-flight requests finish, nothing orphaned."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
from typer.testing import CliRunner

from nextbest.features.settings import Settings
from nextbest.pipelines.cli import app
from nextbest.pipelines.serve_commands import EXIT_REFUSED, EXIT_STOPPED, port_problem
from nextbest.serving import shutdown
from tests.conftest import copy_home

NEXTBEST = Path(sys.executable).parent / "nextbest"


@pytest.fixture
def home(built, tmp_path) -> Settings:
    return copy_home(built, tmp_path / "home", fresh_ledger=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _committed(home: Settings) -> set[str]:
    with contextlib.closing(sqlite3.connect(home.ledger_path)) as c:
        return {r[0] for r in c.execute("SELECT decision_id FROM decisions")}


def _logged(home: Settings) -> set[str]:
    path = home.log_dir / "decisions.jsonl"
    return {json.loads(line)["decision_id"] for line in path.read_text().splitlines()} if path.exists() else set()


def _gone(p: psutil.Process) -> bool:
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_wait_idle_waits_for_requests_in_flight_and_gives_up_after_the_grace_period():
    d = shutdown.Drain()
    assert d.wait_idle(0.0)  # nothing in flight: idle at once
    d.in_flight = 1
    started = time.monotonic()
    assert not d.wait_idle(0.1)
    assert time.monotonic() - started >= 0.1
    threading.Timer(0.05, lambda: setattr(d, "in_flight", 0)).start()
    assert d.wait_idle(10.0)


def test_serve_refuses_a_taken_port_with_exit_2_naming_it(home, monkeypatch):
    monkeypatch.setenv("NEXTBEST_HOME", str(home.home))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", "--port", str(port)])
        assert result.exit_code == EXIT_REFUSED, result.output
        assert f"port {port} on 127.0.0.1 is already in use" in result.output and "--port" in result.output
        assert "Traceback" not in result.output
    assert port_problem("127.0.0.1", port) is None  # the check itself holds nothing: the port is free again
    for host, words in (("localhost", "not an IP address"), ("192.0.2.1", "address of this machine")):
        result = CliRunner().invoke(app, ["serve", "--host", host, "--port", str(port)])
        assert result.exit_code == EXIT_REFUSED and words in result.output, result.output


def _start(home: Settings, port: int, grace_s: float) -> subprocess.Popen:
    env = {**os.environ, "NEXTBEST_HOME": str(home.home), "NEXTBEST_SHUTDOWN_GRACE_S": str(grace_s)}
    proc = subprocess.Popen([str(NEXTBEST), "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the service was not ready within 120 s"
        time.sleep(0.25)


@pytest.mark.slow
def test_sigterm_to_nextbest_serve_drains_in_flight_requests_and_leaves_nothing_behind(home):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start(home, port, grace_s=30)
    users = [f"u{i:04d}" for i in range(200)]  # a whole batch takes long enough to be in flight at the signal
    done: list[tuple[float, float, object, list[dict]]] = []  # (sent, answered, status or error, decisions)
    unready: list[float] = []  # when the poller first got a 503 from /readyz
    stop = threading.Event()

    def caller() -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            for _ in range(500):
                sent = time.time()
                try:
                    r = c.post("/decide_batch", json={"user_ids": users, "context": {"campaign_id": "drain"}})
                except httpx.TransportError as err:  # only after the server stopped listening
                    done.append((sent, time.time(), type(err).__name__, []))
                    return
                done.append((sent, time.time(), r.status_code, r.json()["decisions"] if r.status_code == 200 else []))
                if r.status_code != 200:
                    return

    def poller() -> None:
        with httpx.Client(base_url=url, timeout=5) as c:
            while not stop.is_set():
                try:
                    if c.get("/readyz").status_code == 503:
                        unready.append(time.time())
                        return
                except httpx.TransportError:
                    return
                time.sleep(0.01)

    threads = [threading.Thread(target=caller) for _ in range(4)] + [threading.Thread(target=poller)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while len(done) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    service = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    assert len(service) >= 3, "nextbest serve, the BentoML arbiter and at least one worker"
    signalled = time.time()
    os.kill(proc.pid, signal.SIGTERM)  # the nextbest process only, not its group
    try:
        rc = proc.wait(timeout=90)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    stderr = proc.stderr.read().decode()
    assert rc == EXIT_STOPPED, stderr[-3000:]
    assert all(_gone(p) for p in service), [p.pid for p in service if not _gone(p)]
    assert port_problem("127.0.0.1", port) is None
    assert not (home.home / "ledger.db-wal").exists()  # the ledger was closed: its WAL checkpointed away

    timeline = [(round(d[0] - signalled, 3), round(d[1] - signalled, 3), d[2]) for d in done]
    # In flight at the signal: finished and answered, not cut (one sent just before it may arrive after: 503).
    assert any(d[2] == 200 for d in done if d[0] < signalled < d[1]), timeline
    assert unready, "readiness never answered 503 while the service drained"
    after = [d for d in done if d[0] > unready[0]]
    assert all(d[2] != 200 for d in after), timeline  # nothing was decided once readiness had gone false
    # A request can fail without an answer only once the server stopped listening, long after readiness went false.
    assert all(d[2] in (200, 503) for d in done if d[0] < unready[0]), timeline
    answered = [d for r in done if r[2] == 200 for d in r[3]]
    committed = _committed(home)
    assert committed <= {d["decision_id"] for d in answered}  # no decision committed that nobody was answered
    # Every answer was committed, except "no contact" after losing three cap races in a row (nothing to store).
    assert {d["decision_id"] for d in answered if d["actions"]} <= committed
    assert _logged(home) == committed  # and the decision log has every one


@pytest.mark.slow
def test_sighup_stops_the_service_too_rather_than_restarting_its_workers(home):
    port = _free_port()
    proc = _start(home, port, grace_s=5)
    service = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    os.kill(proc.pid, signal.SIGHUP)  # BentoML's arbiter alone would take it as "reload the workers"
    assert proc.wait(timeout=60) == EXIT_STOPPED
    assert "SIGHUP: stopping the decision service" in proc.stderr.read().decode()
    assert all(_gone(p) for p in service) and port_problem("127.0.0.1", port) is None
