"""Shared fixtures: tiny hand-made raw tables (contract tests) and a built Feast store."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nextbest.features.settings import Settings

START = pd.Timestamp("2026-06-01", tz="UTC")


def make_raw(n_users: int = 200, n_events: int = 4000, n_contacts: int = 1200, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Small random raw tables in contract form (not the simulator: the contract must not depend on it)."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"u{i:04d}" for i in range(n_users)])
    users = pd.DataFrame({
        "user_id": ids,
        "signup_at": START - pd.to_timedelta(rng.integers(1, 60, n_users), unit="D"),
        "timezone": rng.choice(["Asia/Shanghai", "Europe/Berlin", "America/New_York"], n_users),
        "consent_email": rng.random(n_users) < 0.8,
        "consent_sms": rng.random(n_users) < 0.5,
        "consent_push": rng.random(n_users) < 0.6,
        "age": rng.integers(18, 70, n_users),
        "city_tier": rng.integers(1, 5, n_users),
    })
    events = pd.DataFrame({
        "user_id": rng.choice(ids, n_events),
        "ts": START + pd.to_timedelta(rng.integers(0, 60 * 86400, n_events), unit="s"),
        "type": rng.choice(["app_open", "view", "search", "add_to_cart", "purchase"], n_events, p=[.4, .3, .1, .1, .1]),
    })
    events["category"] = np.where(events["type"].isin(["view", "add_to_cart", "purchase"]), rng.choice(["books", "toys", "home"], n_events), None)
    events["amount"] = np.where(events["type"] == "purchase", rng.gamma(2.0, 20.0, n_events).round(2), np.nan)
    sent = START + pd.to_timedelta(rng.integers(0, 60 * 86400, n_contacts), unit="s")
    contacts = pd.DataFrame({
        "contact_id": [f"c{i:05d}" for i in range(n_contacts)],
        "user_id": rng.choice(ids, n_contacts),
        "sent_at": sent,
        "campaign_id": "spring",
        "offer_id": rng.choice(["o1", "o2"], n_contacts),
        "channel": rng.choice(["email", "sms", "push"], n_contacts),
        "variant": "treatment",
        "propensity": 1 / 6,
    })
    contacts["opened_at"] = sent.where(rng.random(n_contacts) < 0.3) + pd.Timedelta(hours=3)
    offers = pd.DataFrame({"offer_id": ["o1", "o2"], "category": ["books", "toys"], "value": [20.0, 35.0],
                           "eligibility": ["lifecycle_stage in [customer, confirmed_lead]", None]})
    channels = pd.DataFrame({"channel": ["email", "sms", "push"], "cost": [0.002, 0.05, 0.001], "quiet_hours": ["22-8", "21-9", None]})
    suppressions = pd.DataFrame({"user_id": ids[:3], "channel": ["sms", "*", "email"], "reason": ["complaint", "regulator", "opt_out"],
                                 "since": START})
    return {"users": users, "events": events, "contacts": contacts, "offers": offers, "channels": channels,
            "suppressions": suppressions}


def write_csvs(frames: dict[str, pd.DataFrame], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, df in frames.items():
        df.to_csv(folder / f"{name}.csv", index=False)
    return folder


@pytest.fixture
def raw_frames() -> dict[str, pd.DataFrame]:
    return make_raw()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


def service_app():
    """A new ASGI app of the decision service; each `TestClient(service_app())` block starts a service instance and
    stops it at the end. BentoML registers its request metrics in prometheus_client's global registry when an app
    starts, so a second app in one process would fail to start: the previous app's (its client has stopped) are
    removed first. prometheus_client is imported here, not at the top: it picks its value store when first
    imported, after Feast has set PROMETHEUS_MULTIPROC_DIR, which BentoML's /metrics reads."""
    from prometheus_client import REGISTRY

    from nextbest.serving.service import NextBest

    for collector, names in list(REGISTRY._collector_to_names.items()):
        if names and all(n.startswith("bentoml_") for n in names):
            REGISTRY.unregister(collector)
    return NextBest.to_asgi()


def copy_home(source: Settings, target: Path, fresh_ledger: bool = False) -> Settings:
    """A private copy of a home. With `fresh_ledger` the copy starts without the ledger, its identity file and the
    logs (a ledger's identity without its store is a lost ledger: no contact, by design)."""
    ignore = shutil.ignore_patterns("ledger.*", "logs") if fresh_ledger else None
    shutil.copytree(source.home, target, ignore=ignore)
    return Settings(home=target)


def build_store(settings: Settings, frames: dict[str, pd.DataFrame], folder: Path) -> None:
    """Ingest `frames` from CSV, build feature tables, apply and materialise."""
    from nextbest.features.build import build_all
    from nextbest.features.contract import TABLES
    from nextbest.features.ingest import ingest, plan_from_dir, read_raw
    from nextbest.features.store import apply, materialize, write_tables

    ingest(plan_from_dir(write_csvs(frames, folder)), settings.raw_dir)
    raw = {t: read_raw(settings.raw_dir, t) for t in TABLES}
    write_tables(build_all(raw), settings.feature_dir)
    apply(settings)
    materialize(settings)


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Settings:
    """A Feast store (SQLite online) built once from the hand-made tables."""
    home = tmp_path_factory.mktemp("built")
    settings = Settings(home=home / "home")
    build_store(settings, make_raw(), home / "csv")
    return settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(workdir: Path, port: int | None = None, persist: bool = False) -> tuple[subprocess.Popen, int]:
    """A real redis-server on loopback (a free port unless given), up and answering; `persist`: append-only file,
    fsync on every write, so a kill -9 loses nothing acknowledged."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: `make test` installs it (apt-get install redis-server)")
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    durability = ["--appendonly", "yes", "--appendfsync", "always"] if persist else ["--save", "", "--appendonly", "no"]
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", *durability, "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.05)
    proc.kill()
    pytest.fail("redis-server did not start within 10 s")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> str:
    """A real redis-server on a free loopback port, stopped after the session."""
    proc, port = start_redis(tmp_path_factory.mktemp("redis"))
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Settings:
    """A small simulated world with real champions of every model decisions use (conversion, funnel uplift,
    send time, churn) and one they do not (channel response), trained, registered and promoted through the
    retraining pipeline, features online."""
    from nextbest.features.ingest import write_raw
    from nextbest.pipelines.retrain import RetrainConfig, retrain
    from nextbest.serving.config import catalog_config, write_config
    from nextbest.simulation import WorldConfig, simulate

    settings = Settings(home=tmp_path_factory.mktemp("trained") / "home")
    world = simulate(WorldConfig(n_users=800, seed=2))
    write_raw(world.tables, settings.raw_dir)
    world.truth.save(settings.truth_dir)
    write_config(catalog_config(world.tables["offers"], world.tables["channels"]), settings.home / "operator.yaml")
    state = retrain(settings, RetrainConfig(trials=1, evaluate=False, models=("conversion", "uplift", "send_time", "churn",
                                                                               "channel"), uplift_learner="funnel"))
    assert state["status"] == "done", state
    return settings


TRAINED_NOW = datetime(2026, 9, 30, 9, 30, tzinfo=UTC)  # when decisions on the `trained` world are asked for


@pytest.fixture(scope="module")
def clock_at_trained_now():
    """The server clock stands at TRAINED_NOW for the module (serving/clock.py)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("nextbest.serving.clock.system_clock", lambda: TRAINED_NOW)
        yield TRAINED_NOW


@pytest.fixture(scope="module")
def trained_runtime(trained, clock_at_trained_now):
    """The decision runtime over the `trained` champions, shared by the module."""
    from nextbest.serving.runtime import Runtime

    return Runtime(trained)
