"""Fault injection: the contact ledger and the state decisions depend on fail closed (issue 14, items 1-7).

Every fault is real: a redis-server killed with SIGKILL and restarted, ledger files deleted under a running
service, files removed or corrupted, an opt-out raced against concurrent decisions on threads. Each scenario
checks that nobody is contacted who must not be and that no acknowledged opt-out is lost.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sqlite3
import threading
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from starlette.testclient import TestClient

from nextbest.features.settings import Settings
from nextbest.serving.config import Caps, Exploration, default_config, write_config
from nextbest.serving.ledger import RedisLedger, SQLiteLedger
from nextbest.serving.runtime import ConflictError, Runtime
from nextbest.serving.schemas import DecideRequest, FeedbackRequest
from tests.conftest import copy_home, service_app, start_redis
from tests.test_serving_runtime import CLOCK, NOW, champions

pytestmark = pytest.mark.faults

EMAIL = {"channels": ["email"]}
TODAY = {**EMAIL, "deadline": (NOW + pd.Timedelta(hours=6)).isoformat()}  # slots on NOW's day only: one e-mail at most


_SERVER_CLOCK = [CLOCK]


@pytest.fixture(autouse=True)
def server_clock(monkeypatch):
    """The service's clock stands still at CLOCK (just after NOW), unless `decide` moves it to a later day."""
    _SERVER_CLOCK[0] = CLOCK
    monkeypatch.setattr("nextbest.serving.clock.system_clock", lambda: _SERVER_CLOCK[0])


@pytest.fixture(scope="module")
def models():
    return champions("email", "1")


@pytest.fixture
def home(built, tmp_path) -> Settings:
    """A private copy of the session's Feast store (no operator config, no ledger yet)."""
    return copy_home(built, tmp_path / "home")


def email_users(settings: Settings, n: int) -> list[str]:
    """Users who consent to e-mail and are on no suppression list of the hand-made tables."""
    users = pd.read_parquet(settings.feature_dir / "profile.parquet")
    ok = users["consent_email"].astype(bool) & ~users["user_id"].isin(["u0000", "u0001", "u0002"])
    return users.loc[ok, "user_id"].astype(str).tolist()[:n]


def channels(decision: dict) -> list[str]:
    return [a["channel"] for a in decision["actions"]]


def decide(rt: Runtime, user: str, context: dict | None = None, now=NOW) -> dict:
    _SERVER_CLOCK[0] = max(_SERVER_CLOCK[0], now + (CLOCK - NOW))  # a later day: the server's clock has moved on too
    return rt.decide(DecideRequest(user_id=user, now=now, context=context or {}))


def assert_no_contact(decision: dict, reason: str) -> None:
    assert decision["actions"] == [], decision
    assert decision["degraded_reasons"] == [reason], decision


@contextlib.contextmanager
def serve(settings: Settings, models):
    """The BentoML service over HTTP (its ASGI app) on `settings.home`."""
    from nextbest.serving.service import NextBest

    mp = pytest.MonkeyPatch()
    mp.setenv("NEXTBEST_HOME", str(settings.home))
    mp.setattr(NextBest.inner, "loader", staticmethod(lambda s: models))
    try:
        with TestClient(service_app(), base_url="http://127.0.0.1:3000") as client:
            yield client
    finally:
        mp.undo()


def write_suppressions(settings: Settings, rows: list[tuple[str, str, str]]) -> Path:
    """Replace the raw suppressions table (as an ingest would) with (user, channel or *, reason) rows."""
    path = settings.raw_dir / "suppressions.parquet"
    pd.DataFrame({"user_id": [r[0] for r in rows], "channel": [r[1] for r in rows], "reason": [r[2] for r in rows],
                  "since": pd.Timestamp("2026-06-01", tz="UTC")}).to_parquet(path)
    return path


# --- item 1: Redis restart ---------------------------------------------------------------------------------

def test_redis_restart_without_persistence_means_no_contact_until_an_operator_acts(home, models, tmp_path):
    proc, port = start_redis(tmp_path / "redis")
    try:
        settings = Settings(home=home.home, ledger_backend="redis", redis_url=f"127.0.0.1:{port}")
        rt = Runtime(settings, loader=lambda s: models)
        opted_out, capped, fresh = email_users(settings, 3)
        assert channels(decide(rt, "u0001")) == []  # a regulator "*" suppression from the raw table
        first = decide(rt, opted_out, EMAIL)
        assert channels(first) == ["email"]
        assert rt.feedback(FeedbackRequest(decision_id=first["decision_id"], outcome="unsubscribed"))["suppressed"] == "email"
        assert channels(decide(rt, capped, TODAY)) == ["email"]
        assert channels(decide(rt, capped, TODAY)) == []  # one e-mail a day

        proc.kill()  # SIGKILL: no shutdown, and this server keeps nothing on disk
        proc.wait()
        proc, _ = start_redis(tmp_path / "redis", port=port)

        for user, context in (("u0001", None), (opted_out, EMAIL), (capped, TODAY), (fresh, EMAIL)):
            assert_no_contact(decide(rt, user, context), "ledger_unavailable")
        ready, status = rt.ready()
        assert not ready and not status["ledger"]
        assert any("wiped" in r or "no longer holds" in r for r in status["reasons"]), status
        # A restart of the service does not paper over it either: the home remembers its ledger's identity.
        again = Runtime(settings, loader=lambda s: models)
        assert_no_contact(decide(again, capped, TODAY), "ledger_unavailable")
        assert not again.ready()[0]

        # The operator accepts a new, empty ledger: the raw suppressions are imported into it again.
        settings.ledger_identity_path.unlink()
        fresh_start = Runtime(settings, loader=lambda s: models)
        assert fresh_start.ready()[0]
        assert channels(decide(fresh_start, "u0001")) == []
        assert channels(decide(fresh_start, fresh, EMAIL)) == ["email"]
    finally:
        proc.kill()
        proc.wait()


def test_redis_restart_with_persistence_keeps_every_acknowledged_opt_out(home, models, tmp_path):
    proc, port = start_redis(tmp_path / "redis", persist=True)
    try:
        settings = Settings(home=home.home, ledger_backend="redis", redis_url=f"127.0.0.1:{port}")
        rt = Runtime(settings, loader=lambda s: models)
        users = email_users(settings, 21)
        acked = []
        for user in users[:20]:
            d = decide(rt, user, EMAIL)
            assert channels(d) == ["email"]
            rt.feedback(FeedbackRequest(decision_id=d["decision_id"], outcome="unsubscribed"))
            acked.append(user)
        proc.kill()
        proc.wait()
        proc, _ = start_redis(tmp_path / "redis", port=port, persist=True)
        assert rt.ready()[0]  # the same store came back: nothing to refuse
        tomorrow = NOW + pd.Timedelta(days=1)
        assert [channels(decide(rt, u, EMAIL, now=tomorrow)) for u in acked] == [[]] * len(acked)
        assert channels(decide(rt, users[20], EMAIL, now=tomorrow)) == ["email"]
    finally:
        proc.kill()
        proc.wait()


# --- item 2: the SQLite ledger deleted while serving -------------------------------------------------------

def test_deleted_sqlite_ledger_means_no_contact_and_not_ready_until_restored(home, models, tmp_path):
    complained, capped, fresh = email_users(home, 3)
    with serve(home, models) as c:
        first = c.post("/decide", json={"user_id": complained, "now": NOW.isoformat(), "context": EMAIL}).json()
        assert channels(first) == ["email"]
        assert c.post("/feedback", json={"decision_id": first["decision_id"], "outcome": "complained"}).status_code == 200
        assert channels(c.post("/decide", json={"user_id": capped, "now": NOW.isoformat(), "context": TODAY}).json()) == ["email"]
        assert c.get("/readyz").status_code == 200
        with sqlite3.connect(home.ledger_path) as src, sqlite3.connect(tmp_path / "backup.db") as dst:
            src.backup(dst)
        for path in home.home.glob("ledger.db*"):
            path.unlink()
        for user in (complained, capped, fresh, "u0001"):
            d = c.post("/decide", json={"user_id": user, "now": NOW.isoformat(), "context": EMAIL}).json()
            assert_no_contact(d, "ledger_unavailable")
        assert c.get("/readyz").status_code == 503
        status = c.post("/status", json={}).json()
        assert not status["ready"] and any("deleted" in r for r in status["reasons"]), status
        # An opt-out that cannot be stored is not acknowledged: the caller retries.
        r = c.post("/feedback", json={"decision_id": first["decision_id"], "outcome": "unsubscribed"})
        assert r.status_code == 503, r.text

    with serve(home, models) as c:  # a restart does not create an empty ledger in its place
        assert not home.ledger_path.exists()
        assert c.get("/readyz").status_code == 503
        d = c.post("/decide", json={"user_id": complained, "now": NOW.isoformat(), "context": EMAIL}).json()
        assert_no_contact(d, "ledger_unavailable")

    shutil.copy(tmp_path / "backup.db", home.ledger_path)  # the operator restores the ledger
    with serve(home, models) as c:
        assert c.get("/readyz").status_code == 200
        for user, expected in ((complained, []), (capped, []), (fresh, ["email"])):
            d = c.post("/decide", json={"user_id": user, "now": NOW.isoformat(), "context": TODAY}).json()
            assert channels(d) == expected, (user, d)


def test_a_ledger_file_replaced_by_another_store_is_refused(home, models, tmp_path):
    rt = Runtime(home, loader=lambda s: models)
    user = email_users(home, 1)[0]
    assert channels(decide(rt, user, EMAIL)) == ["email"]
    other = SQLiteLedger(tmp_path / "other.db")  # a valid ledger, but not this home's
    other._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")  # all of it in the one file that is copied
    for path in home.home.glob("ledger.db*"):
        path.unlink()
    shutil.copy(tmp_path / "other.db", home.ledger_path)
    assert_no_contact(decide(rt, user, EMAIL, now=NOW + pd.Timedelta(days=1)), "ledger_unavailable")
    assert not rt.ready()[0]


# --- item 3: an opt-out raced against concurrent decisions -------------------------------------------------

class TracedLedger(SQLiteLedger):
    """The real SQLite ledger, recording the order in which decisions and suppressions are written.

    SQLite calls the trace hook as each statement runs, inside the transaction that holds the write lock,
    so the order of the records is the order of the commits.
    """

    def __init__(self, path: Path):
        self.writes: list[tuple[str, str]] = []
        super().__init__(path)

    def _conn(self):
        conn = super()._conn()
        if getattr(self._local, "traced", None) is not conn:
            conn.set_trace_callback(self._trace)
            self._local.traced = conn
        return conn

    def order(self) -> list[tuple[str, str]]:
        return list(self.writes)

    def forget_opt_out(self, user: str) -> None:
        with sqlite3.connect(self.path) as c:
            c.execute("DELETE FROM suppressions WHERE user_id = ?", (user,))

    def _trace(self, sql: str) -> None:
        if sql.startswith("INSERT INTO decisions"):
            self.writes.append(("decision", re.search(r"VALUES \('(\w+)'", sql)[1]))
        elif sql.startswith("INSERT OR IGNORE INTO suppressions"):
            self.writes.append(("suppression", re.search(r"VALUES \('([^']+)'", sql)[1]))


class MonitoredLedger(RedisLedger):
    """The real Redis ledger, recording the order in which redis-server ran decision and suppression writes.

    MONITOR lists every command the server runs, those inside Lua scripts included, in the order it ran them.
    """

    def __init__(self, url: str):
        super().__init__(url)
        self._r.flushdb()
        self.writes: list[tuple[str, str]] = []
        self._marks: set[str] = set()
        self._seen = threading.Condition()
        self._monitor = self._r.monitor()
        self._monitor.__enter__()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            command = self._monitor.next_command()["command"]
            if command.startswith("SET d:"):
                self.writes.append(("decision", command.split()[1][2:]))
            elif command.startswith("HSETNX s:"):
                self.writes.append(("suppression", command.split()[1][2:]))
            elif command.startswith("ECHO mark:"):
                with self._seen:
                    self._marks.add(command.split(":", 1)[1])
                    self._seen.notify_all()
                if command.endswith(":stop"):
                    return

    def order(self) -> list[tuple[str, str]]:
        """Every write so far: a marker sent now is seen after all of them."""
        mark = uuid.uuid4().hex
        self._r.echo(f"mark:{mark}")
        with self._seen:
            assert self._seen.wait_for(lambda: mark in self._marks, timeout=60)  # generous: under load the monitor thread can lag seconds
        return list(self.writes)

    def forget_opt_out(self, user: str) -> None:
        self._r.delete(f"s:{user}")

    def close(self) -> None:
        self._r.echo("mark:stop")
        self._monitor.__exit__(None, None, None)


def race_once(rt: Runtime, ledger: TracedLedger | MonitoredLedger, user: str, decision_id: str, n_deciders: int) -> tuple[bool, bool]:
    """Deciders for `user` (e-mail) on threads against one unsubscribe of `decision_id`, started together.

    Returns (an e-mail decision was committed after the opt-out, an e-mail was answered to a decide that
    started after the opt-out's answer).
    """
    ledger.order()
    ledger.writes.clear()
    start, acked = threading.Barrier(n_deciders + 1), threading.Event()
    answers: list[tuple[bool, dict]] = []
    errors: list[BaseException] = []

    def decider() -> None:
        start.wait()
        try:
            while True:
                after_ack = acked.is_set()
                answers.append((after_ack, decide(rt, user, EMAIL)))
                if after_ack:
                    return
        except BaseException as err:
            errors.append(err)

    def unsubscribe() -> None:
        start.wait()
        try:
            rt.feedback(FeedbackRequest(decision_id=decision_id, outcome="unsubscribed"))
        except BaseException as err:
            errors.append(err)
        acked.set()

    threads = [threading.Thread(target=decider) for _ in range(n_deciders)] + [threading.Thread(target=unsubscribe)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    order = ledger.order()
    at = order.index(("suppression", user))
    emailed = {d["decision_id"] for _, d in answers if channels(d)}
    return (any(kind == "decision" and ref in emailed for kind, ref in order[at + 1:]),
            any(after and channels(d) for after, d in answers))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_no_decision_commits_after_a_conflicting_opt_out_in_200_trials(backend, home, models, request):
    relaxed = default_config().model_copy(update={  # caps out of the way: only the opt-out may stop an e-mail
        "caps": Caps(per_channel_day=10_000, per_channel_week=10_000, per_user_day=10_000, per_user_week=10_000,
                     per_offer=10_000, spacing_contacts=0),
        "exploration": Exploration(method="none")})
    write_config(relaxed, home.home / "operator.yaml")
    if backend == "sqlite":
        ledger = TracedLedger(home.ledger_path)
    else:
        host, port = request.getfixturevalue("redis_url").split(":")
        ledger = MonitoredLedger(f"{host}:{port},db=13")
    try:
        rt = Runtime(home, loader=lambda s: models, ledger=ledger)
        pool = email_users(home, 40)
        trials = 200
        late_commits = late_answers = 0
        for trial in range(trials):
            user = pool[trial % len(pool)]
            ledger.forget_opt_out(user)  # the pool is reused: forget the last trial's opt-out
            first = decide(rt, user, EMAIL)
            assert channels(first) == ["email"]
            late_commit, late_answer = race_once(rt, ledger, user, first["decision_id"], n_deciders=4)
            late_commits += late_commit
            late_answers += late_answer
        assert (late_commits, late_answers) == (0, 0), f"{late_commits} late commits, {late_answers} late answers in {trials} trials"
    finally:
        if backend == "redis":
            ledger.close()


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_the_commit_rechecks_suppressions_atomically(backend, tmp_path, request):
    from nextbest.serving.ledger import Reservation
    from nextbest.serving.policy import constraints_for

    if backend == "sqlite":
        ledger = SQLiteLedger(tmp_path / "ledger.db")
    else:
        host, port = request.getfixturevalue("redis_url").split(":")
        ledger = RedisLedger(f"{host}:{port},db=15")
        ledger._r.flushdb()
    config = default_config()

    def planned(user: str, channel: str, n: int) -> Reservation:
        charges, cons = constraints_for(user, config, [("free_shipping", channel, NOW)], "UTC")
        return Reservation(f"{user}-{n}", user, charges, cons, {"decision_id": f"{user}-{n}", "user_id": user,
                                                               "actions": [{"offer_id": "free_shipping", "channel": channel}]})

    plans = [planned("a", "email", 0), planned("b", "push", 0), planned("c", "sms", 0)]  # planned on a clean snapshot
    ledger.suppress([("a", "email", "opt_out", "2026-11-23T09:00:00Z"), ("b", "*", "regulator", "2026-11-23T09:00:00Z")])
    assert [(c.status, c.rule) for c in ledger.commit(plans)] == [("refused", "suppressed"), ("refused", "suppressed"),
                                                                  ("ok", None)]
    assert ledger.decision("a-0") is None and ledger.decision("c-0") is not None
    assert ledger.read(["a", "b"]).user_counts == {"a": {}, "b": {}}  # nothing charged for the refused ones


# --- item 4: outcome ordering ------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_not_sent_after_sent_is_refused_and_gives_nothing_back(backend, home, models, request):
    kw = {}
    if backend == "redis":
        host, port = request.getfixturevalue("redis_url").split(":")
        import redis

        redis.Redis(host=host, port=int(port), db=14).flushdb()
        kw = {"ledger_backend": "redis", "redis_url": f"{host}:{port},db=14"}
    settings = Settings(home=home.home, **kw)
    rt = Runtime(settings, loader=lambda s: models)
    users = email_users(settings, 5)
    for user in users:
        d = decide(rt, user, TODAY)
        assert channels(d) == ["email"]
        assert rt.feedback(FeedbackRequest(decision_id=d["decision_id"], outcome="sent"))["recorded"]
        with pytest.raises(ConflictError, match="not_sent"):
            rt.feedback(FeedbackRequest(decision_id=d["decision_id"], outcome="not_sent"))
        again = decide(rt, user, TODAY)
        assert channels(again) == [], again  # the e-mail of the day is still charged
    # not_sent before any other outcome still gives the charge back (the message never went out)
    other = email_users(settings, 6)[5]
    d = decide(rt, other, TODAY)
    assert rt.feedback(FeedbackRequest(decision_id=d["decision_id"], outcome="not_sent"))["released"]
    assert channels(decide(rt, other, TODAY)) == ["email"]


def test_not_sent_after_sent_is_a_409_over_http(home, models):
    user = email_users(home, 1)[0]
    with serve(home, models) as c:
        d = c.post("/decide", json={"user_id": user, "now": NOW.isoformat(), "context": EMAIL}).json()
        assert c.post("/feedback", json={"decision_id": d["decision_id"], "outcome": "delivered"}).status_code == 200
        r = c.post("/feedback", json={"decision_id": d["decision_id"], "outcome": "not_sent"})
        assert r.status_code == 409 and "not_sent" in r.text, r.text


# --- item 5: suppressions that cannot be read; suppressions that change ---------------------------------------

def test_unreadable_suppressions_mean_no_contact_not_no_suppressions(home, models):
    user = email_users(home, 1)[0]
    good = (home.raw_dir / "suppressions.parquet").read_bytes()
    (home.raw_dir / "suppressions.parquet").write_bytes(b"PAR1 this is not a parquet file")
    rt = Runtime(home, loader=lambda s: models)
    for who, context in ((user, EMAIL), ("u0001", None), ("u0002", EMAIL)):
        assert_no_contact(decide(rt, who, context), "suppressions_unreadable")
    ready, status = rt.ready()
    assert not ready and any(r.startswith("suppressions_unreadable") for r in status["reasons"])
    (home.raw_dir / "suppressions.parquet").write_bytes(good)  # fixed: read on the next request, no restart
    assert channels(decide(rt, "u0001")) == []
    assert channels(decide(rt, user, EMAIL)) == ["email"]
    assert rt.ready()[0]


def test_suppressions_are_imported_again_when_the_raw_snapshot_changes(home, models):
    user, later = email_users(home, 2)
    rt = Runtime(home, loader=lambda s: models)
    assert channels(decide(rt, user, EMAIL)) == ["email"]
    write_suppressions(home, [("u0001", "*", "regulator"), (user, "email", "opt_out"), (later, "*", "vip")])
    tomorrow = NOW + pd.Timedelta(days=1)
    d = decide(rt, user, EMAIL, now=tomorrow)
    assert channels(d) == [] and {r["reason"] for r in d["filtered"] if r["channel"] == "email"} == {"suppressed"}
    assert channels(decide(rt, later, None, now=tomorrow)) == []


# --- item 6: the operator config ---------------------------------------------------------------------------

def test_a_missing_operator_config_is_an_error_state_never_the_built_in_catalog(home, models):
    path = write_config(default_config().model_copy(update={"exploration": Exploration(method="none")}),
                        home.home / "operator.yaml")
    users = email_users(home, 3)
    rt = Runtime(home, loader=lambda s: models)
    assert channels(decide(rt, users[0], EMAIL)) == ["email"]
    rt.config.check_every_s = 0  # notice the file's change on the next request
    kept = path.read_text()
    path.unlink()
    assert_no_contact(decide(rt, users[1]), "operator_config_missing")
    ready, status = rt.ready()
    assert not ready and any(r.startswith("operator_config_missing") for r in status["reasons"])
    restarted = Runtime(home, loader=lambda s: models)  # a restart does not switch to the built-in catalog
    assert not path.exists()
    for user in users:
        assert_no_contact(decide(restarted, user), "operator_config_missing")
    assert not restarted.ready()[0]
    path.write_text(kept)
    restarted.config.check_every_s = 0
    assert channels(decide(restarted, users[1], EMAIL)) == ["email"]
    assert restarted.ready()[0]


def test_a_home_serving_for_the_first_time_gets_the_built_in_catalog_written_down(home, models):
    path = home.home / "operator.yaml"
    assert not path.exists()
    rt = Runtime(home, loader=lambda s: models)
    assert path.exists() and rt.config.current(0) == default_config()
    user = email_users(home, 1)[0]
    assert channels(decide(rt, user, EMAIL)) == ["email"]
    path.unlink()
    assert_no_contact(decide(Runtime(home, loader=lambda s: models), user), "operator_config_missing")


# --- item 7: the model registry and the Feast registry --------------------------------------------------------

def register_conversion_model(settings: Settings) -> str:
    """A real LightGBM conversion model, logged, checksummed and promoted in the home's MLflow registry."""
    import lightgbm as lgb

    from nextbest.training.encoding import fit_encoder
    from nextbest.training.registry import log_model, promote
    from nextbest.training.tabular import BoosterScorer

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"offer_value": rng.uniform(5, 50, 300), "local_hour": rng.integers(0, 24, 300).astype(float)})
    y = (rng.random(300) < 0.1 + 0.3 * (frame["local_hour"] >= 18)).astype(int)
    encoder = fit_encoder(frame, list(frame.columns), matched=False)
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_leaves": 4, "seed": 0},
                        lgb.Dataset(encoder.codes(frame), y), num_boost_round=5)
    _, version = log_model(settings, "conversion", BoosterScorer(booster, encoder, "conversion_v1"), {"auc": 0.6}, {},
                           frame.head(3))
    promote(settings, "conversion", version)
    return version


@pytest.mark.slow
def test_a_copied_home_whose_original_is_gone_loads_its_own_models(home, tmp_path):
    version = register_conversion_model(home)
    moved = Settings(home=tmp_path / "moved")
    shutil.copytree(home.home, moved.home)
    shutil.rmtree(home.home)  # the original home is gone: every absolute artifact URI in the registry is stale
    rt = Runtime(moved)
    assert rt.models.current.versions() == {"conversion": f"conversion/{version}"}, rt.models.error
    assert rt.ready()[0]


@pytest.mark.slow
def test_a_copied_home_trains_into_its_own_folder_and_leaves_the_original_alone(home, tmp_path):
    register_conversion_model(home)
    copy = Settings(home=tmp_path / "copy")
    shutil.copytree(home.home, copy.home)
    original = sorted(p.relative_to(home.home) for p in home.artifact_dir.rglob("*"))
    version = register_conversion_model(copy)  # MLflow's experiment still names the original's folder
    assert sorted(p.relative_to(home.home) for p in home.artifact_dir.rglob("*")) == original
    shutil.rmtree(home.home)
    rt = Runtime(copy)
    assert rt.models.current.versions() == {"conversion": f"conversion/{version}"}, rt.models.error


@pytest.mark.slow
def test_a_missing_registry_file_at_reload_keeps_the_last_good_models_and_says_so(home):
    version = register_conversion_model(home)
    rt = Runtime(home)
    assert rt.models.current.versions() == {"conversion": f"conversion/{version}"}, rt.models.error
    (home.home / "mlflow.db").unlink()
    rt.models.refresh()
    assert rt.models.current.versions() == {"conversion": f"conversion/{version}"}
    assert "registry" in rt.models.error and rt.ready()[1]["model_error"] == rt.models.error


def test_a_corrupt_feast_registry_at_cold_start_is_not_ready(home, models):
    (home.feast_dir / "registry.db").write_bytes(b"\x00not a feast registry\x00" * 64)
    rt = Runtime(home, loader=lambda s: models)
    ready, status = rt.ready()
    assert not ready and any(r.startswith("feature_registry_unreadable") for r in status["reasons"]), status
