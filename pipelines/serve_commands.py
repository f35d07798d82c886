"""`nextbest serve`, the supervisor of the BentoML server, and the demo's sample requests against it."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import httpx
import psutil
import typer
from pydantic import SecretStr, ValidationError

from nextbest.features.settings import Settings
from nextbest.serving.guard import UnsafeStart, check_start

__all__ = ["register", "serve_command", "running_service", "demo_requests", "port_problem", "supervise",
           "EXIT_STOPPED", "EXIT_FAILED", "EXIT_REFUSED", "EXIT_KILLED"]

# How `nextbest serve` ends (its exit code).
EXIT_STOPPED = 0  # stopped by SIGTERM/SIGINT/SIGHUP: drained, every process gone
EXIT_FAILED = 1  # the server stopped by itself (failed to start or crashed)
EXIT_REFUSED = 2  # did not start: the port is taken, the address is not this machine's, a setting is invalid
EXIT_KILLED = 3  # stopped, but the server outlived the grace period (or a second Ctrl-C) and was killed

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
CUT_S = 2  # after the grace period uvicorn gives requests still running this long, then cuts them
KILL_MARGIN_S = 15.0  # past the grace period: time for the cut, the on_shutdown hook and process exit


def serve_command(settings: Settings, host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "bentoml", "serve", "nextbest.serving.service:NextBest", "--host", host, "--port", str(port),
            "--timeout-graceful-shutdown", str(CUT_S)]


def _env(settings: Settings) -> dict[str, str]:
    """The settings as NEXTBEST_* variables, so the service process sees exactly these."""
    env = dict(os.environ)
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value is not None:
            env[f"NEXTBEST_{name.upper()}"] = str(Path(value).resolve()) if isinstance(value, Path) else str(value)
    return env


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_problem(host: str, port: int) -> str | None:
    """Why the service could not listen on host:port (a message naming both), or None when it can."""
    if not 1 <= port <= 65535:
        return f"port {port} is not a TCP port: choose one from 1 to 65535 with --port or NEXTBEST_PORT"
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return f"host {host!r} is not an IP address: set --host or NEXTBEST_HOST to one, e.g. 127.0.0.1"
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: a port in TIME_WAIT is free
        try:
            s.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return (f"port {port} on {host} is already in use (another nextbest serve?): stop that process "
                        f"(`ss -ltnp 'sport = :{port}'` shows it) or choose another port with --port or NEXTBEST_PORT")
            if err.errno == errno.EACCES:
                return f"port {port} needs privileges to bind: choose a port above 1023 with --port or NEXTBEST_PORT"
            return f"cannot listen on {host}:{port}: {err.strerror}: set --host or NEXTBEST_HOST to an address of this machine"
    return None


def _tree(pid: int) -> dict[int, psutil.Process]:
    """The process and its descendants now (an empty dict once it is gone)."""
    try:
        root = psutil.Process(pid)
        return {p.pid: p for p in [root, *root.children(recursive=True)]}
    except psutil.NoSuchProcess:
        return {}


def _kill(processes: dict[int, psutil.Process]) -> None:
    for p in processes.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(list(processes.values()), timeout=5)


def supervise(cmd: list[str], env: dict[str, str], grace_s: float, echo=typer.echo) -> int:
    """Run the server until it stops; forward stop signals to it; return an EXIT_* code.

    The server runs in its own session, so only what this process forwards reaches it: SIGTERM, SIGINT and
    SIGHUP all become SIGTERM (BentoML's arbiter would take SIGHUP as "restart the workers"). The arbiter
    then stops its workers, each of which drains (serving/shutdown.py). This process exits only when every
    process of the server is gone: after `grace_s` plus a margin, or at a second SIGINT, it kills them.
    """
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    received: list[int] = []

    def forward(sig: int, frame) -> None:
        received.append(sig)
        if len(received) == 1:
            echo(f"{signal.Signals(sig).name}: stopping the decision service (in-flight requests get {grace_s:.0f} s)",
                 err=True)
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS}
    seen: dict[int, psutil.Process] = {}
    killed = False
    try:
        deadline = None
        while proc.poll() is None:
            seen.update(_tree(proc.pid))
            if received and deadline is None:
                deadline = time.monotonic() + grace_s + KILL_MARGIN_S
            forced = received.count(signal.SIGINT) > 1
            if deadline is not None and (forced or time.monotonic() > deadline):
                echo("the decision service did not stop in time: killing it" if not forced else
                     "second Ctrl-C: killing the decision service", err=True)
                _kill(_tree(proc.pid) | seen)
                killed = True
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    left = {pid: p for pid, p in seen.items() if pid != proc.pid and _alive(p)}
    if left:  # workers whose arbiter died without stopping them
        echo(f"killing {len(left)} process(es) the server left behind: {sorted(left)}", err=True)
        _kill(left)
        killed = True
    if not received:
        echo(f"the decision service stopped by itself (exit code {proc.returncode})", err=True)
        return EXIT_FAILED
    return EXIT_KILLED if killed else EXIT_STOPPED


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@contextlib.contextmanager
def running_service(settings: Settings, port: int | None = None, timeout_s: float = 90) -> Iterator[str]:
    """Start `bentoml serve` on the settings' host (127.0.0.1 by default); yield its URL; stop it."""
    port = port or _free_port(settings.host)
    proc = subprocess.Popen(serve_command(settings, settings.host, port), env=_env(settings),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://{settings.host}:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the decision service exited with {proc.returncode}:\n{proc.stderr.read().decode()[-3000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the decision service was not ready within {timeout_s:.0f} s")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()  # the arbiter stops its workers, which drain first
        try:
            proc.wait(timeout=settings.shutdown_grace_s + KILL_MARGIN_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the workers are in its process group
            proc.wait()


def demo_requests(settings: Settings, users: int = 5, client: httpx.Client | None = None) -> list[dict]:
    """Decide for a few users and send one event through `client`, or through a service started and stopped for it;
    rows for a table."""
    if client is None:
        with running_service(settings) as url, httpx.Client(base_url=url, timeout=30) as own:
            return demo_requests(settings, users, own)
    from nextbest.features.store import read_table

    ids = read_table(settings, "profile")["user_id"].astype(str).head(users).tolist()
    rows = []
    batch = client.post("/decide_batch", json={"user_ids": ids, "context": {"campaign_id": "demo"}}).raise_for_status().json()
    for d in batch["decisions"]:
        a = d["actions"][0] if d["actions"] else None
        rows.append({"user": d["user_id"], "offer": a["offer_id"] if a else "(no action)", "channel": a["channel"] if a else "",
                     "send_at": a["send_at"] if a else "", "EV": f"{a['expected_value']:.2f}" if a else "",
                     "filtered": len(d["filtered"]), "degraded": ",".join(d["degraded_reasons"]) or "no"})
    ev = client.post("/events", json={"events": [{"user_id": ids[0], "type": "add_to_cart"}]}).raise_for_status().json()
    for d in ev["triggered"]:
        a = d["actions"][0] if d["actions"] else None
        rows.append({"user": d["user_id"], "offer": a["offer_id"] if a else "(no action)", "channel": a["channel"] if a else "",
                     "send_at": a["send_at"] if a else "", "EV": f"{a['expected_value']:.2f}" if a else "",
                     "filtered": len(d["filtered"]), "degraded": "trigger: add_to_cart"})
    return rows


def register(app: typer.Typer) -> None:
    """Add `nextbest serve` to the CLI."""

    @app.command("serve")
    def serve(host: Annotated[str | None, typer.Option(help="bind address (default 127.0.0.1)")] = None,
              port: Annotated[int | None, typer.Option(help="port (default 3000)")] = None) -> None:
        """Run the decision service (BentoML) until SIGTERM or Ctrl-C; OpenAPI docs at /docs.

        On SIGTERM/SIGINT/SIGHUP it drains (new requests 503, in-flight ones get NEXTBEST_SHUTDOWN_GRACE_S)
        and exits when every process of the service is gone: 0 stopped, 1 the server failed, 2 refused to
        start, 3 had to be killed.
        """
        try:
            settings = Settings()
        except ValidationError as err:
            typer.echo(f"invalid setting: {err}", err=True)
            raise typer.Exit(EXIT_REFUSED) from None
        host, port = host or settings.host, port or settings.port
        problem = port_problem(host, port)
        if problem:
            typer.echo(f"nextbest serve: {problem}", err=True)
            raise typer.Exit(EXIT_REFUSED)
        try:
            check_start(settings, host)  # beyond loopback without an API key: refuse, before anything starts
        except UnsafeStart as err:
            typer.echo(f"nextbest serve: {err}", err=True)
            raise typer.Exit(EXIT_REFUSED) from None
        typer.echo(f"nextbest decision service on http://{host}:{port} (docs at /docs)")
        raise typer.Exit(supervise(serve_command(settings, host, port), _env(settings), settings.shutdown_grace_s))
