"""`nextbest serve` and the demo's sample requests against a running decision service."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import httpx
import typer
from nextbest.features.settings import Settings
from pydantic import SecretStr

__all__ = ["register", "serve_command", "running_service", "demo_requests"]



def serve_command(settings: Settings, host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "bentoml", "serve", "nextbest.serving.service:NextBest", "--host", host, "--port", str(port)]


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
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def demo_requests(settings: Settings, users: int = 5) -> list[dict]:
    """Start the service, decide for a few users and send one event, then stop it; rows for a table."""
    from nextbest.features.store import read_table

    ids = read_table(settings, "profile")["user_id"].astype(str).head(users).tolist()
    rows = []
    with running_service(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
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
        """Run the decision service (BentoML) until Ctrl-C; OpenAPI docs at /docs."""
        from nextbest.serving.guard import UnsafeStart, check_start

        settings = Settings()
        host, port = host or settings.host, port or settings.port
        try:
            check_start(settings, host)
        except UnsafeStart as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        typer.echo(f"nextbest decision service on http://{host}:{port} (docs at /docs)")
        raise typer.Exit(subprocess.call(serve_command(settings, host, port), env=_env(settings)))
