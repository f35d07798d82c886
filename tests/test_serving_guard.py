"""Hostile input over the real HTTP stack (BentoML's ASGI app with the guard): each gets a 4xx and writes nothing.

Issue 14 items 8 (caller times), 9 (key, Host, Origin, content type, size, parser failures) and 11 (leaks).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from nextbest.features.settings import Settings
from nextbest.serving.guard import Guard, GuardPolicy, UnsafeStart, check_start, is_loopback, listening_host
from tests.conftest import copy_home
from tests.test_serving_http import service_client
from tests.test_serving_runtime import CLOCK, champions, consenting_user

ROOT = Path(__file__).resolve().parents[1]
KEY = "k" * 8 + "-test-key-0123456789"
POSTS = ("/decide", "/decide_batch", "/events", "/feedback", "/profile", "/reload", "/status")


@pytest.fixture(scope="module")
def models():
    return champions("email", "1")


@pytest.fixture(scope="module")
def home(built, tmp_path_factory) -> Settings:
    return copy_home(built, tmp_path_factory.mktemp("guard") / "home")


@pytest.fixture(scope="module")
def client(home, models):
    with service_client(home, models) as c:
        yield c


@contextlib.contextmanager
def configured(client: TestClient, **settings):
    """The running service's guard as these settings make it (one BentoML app per process: its metrics are global)."""
    node = client.app.middleware_stack
    while not isinstance(node, Guard):
        node = node.app
    before = node.policy
    node.policy = GuardPolicy.from_settings(Settings(**settings))
    try:
        yield client
    finally:
        node.policy = before


@pytest.fixture
def keyed(client):
    """The same service asking for the key on writes even on loopback."""
    with configured(client, api_key=KEY, api_key_on_loopback="writes") as c:
        yield c


@pytest.fixture(scope="module")
def user(home) -> str:
    return consenting_user(home, "push")


def footprint(client, home: Settings, user: str) -> tuple:
    """Everything a request could write: every ledger table, both logs, and the user's real-time features."""
    with sqlite3.connect(home.ledger_path) as c:
        tables = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        rows = {t: c.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    logs = {p.name: len(p.read_text().splitlines()) for p in sorted(home.log_dir.glob("*.jsonl"))}
    features = client.post("/profile", json={"user_id": user}).json()["features"]
    realtime = {k: features.get(k) for k in ("last_event_type", "last_event_at", "events_1h", "cart_open")}
    return rows, logs, realtime


def post_raw(client, path: str, body: bytes, content_type: str | None = "application/json", **headers) -> httpx.Response:
    if content_type is not None:
        headers["content-type"] = content_type
    return client.post(path, content=body, headers=headers)


# --- item 8: the server clock decides -------------------------------------------------------------------

def _iso(delta: timedelta) -> str:
    return (CLOCK + delta).isoformat()


@pytest.mark.parametrize("path, body, field", [
    ("/decide", {"now": "0001-01-01T00:00:00+05:00"}, "now"),
    ("/decide", {"now": "9999-12-31T23:59:59-05:00"}, "now"),
    ("/decide", {"now": "1970-01-01T00:00:00Z"}, "now"),
    ("/decide", {"now": 0}, "now"),
    ("/decide", {"now": _iso(timedelta(days=-2))}, "now"),
    ("/decide", {"now": _iso(timedelta(hours=1))}, "now"),
    ("/decide", {"context": {"deadline": "9999-12-31T23:59:59-05:00"}}, "context.deadline"),
    ("/decide", {"context": {"not_before": _iso(timedelta(days=400))}}, "context.not_before"),
    ("/decide_batch", {"now": "0001-01-01T00:00:00+05:00"}, "now"),
    ("/events", {"events": [{"type": "add_to_cart", "ts": _iso(timedelta(days=-2))}]}, "events[0].ts"),
    ("/events", {"events": [{"type": "add_to_cart", "ts": "9999-12-31T23:59:59-05:00"}]}, "events[0].ts"),
    ("/events", {"events": [{"type": "view", "ts": _iso(timedelta(minutes=-5))},
                            {"type": "add_to_cart", "ts": "0001-01-01T00:00:00+05:00"}]}, "events[1].ts"),
    ("/feedback", {"outcome": "opened", "at": "9999-12-31T23:59:59-05:00"}, "at"),
    ("/feedback", {"outcome": "opened", "at": _iso(timedelta(days=-60))}, "at"),
    ("/profile", {"now": "0001-01-01T00:00:00+05:00"}, "now"),
])
def test_caller_times_far_from_the_server_clock_are_400_before_anything_is_written(client, home, user, path, body, field):
    decided = client.post("/decide", json={"user_id": user, "context": {"channels": ["push"]}, "dry_run": False}).json()
    ids = {"user_id": user} if path in ("/decide", "/profile") else {"user_ids": [user]} if path == "/decide_batch" else \
        {"decision_id": decided["decision_id"]} if path == "/feedback" else {}
    if path == "/events":
        body = {"events": [{**e, "user_id": user} for e in body["events"]]}
    before = footprint(client, home, user)
    r = client.post(path, json={**ids, **body})
    assert r.status_code == 400, r.text
    assert field in r.text
    assert footprint(client, home, user) == before  # not the first event, not a decision, not an outcome


def test_a_late_event_decides_as_of_the_server_clock_and_an_expired_trigger_sends_nothing(client, home):
    user = consenting_user(home, "email")
    late = client.post("/events", json={"events": [{"user_id": user, "type": "add_to_cart", "ts": _iso(timedelta(hours=-1))}]})
    assert late.status_code == 200 and late.json()["accepted"] == 1
    [decision] = late.json()["triggered"]
    assert all(datetime.fromisoformat(a["send_at"]) >= CLOCK for a in decision["actions"])  # never a send time in the past
    stale = client.post("/events", json={"events": [{"user_id": user, "type": "add_to_cart", "ts": _iso(timedelta(hours=-20))}]})
    assert stale.status_code == 200 and stale.json()["triggered"] == []  # the 3-hour cart window closed long ago


# --- item 9: the guard ----------------------------------------------------------------------------------

def test_state_changing_endpoints_need_the_key_when_configured(keyed, home, user):
    body = {"user_id": user, "dry_run": True}
    assert keyed.post("/decide", json=body).status_code == 401
    r = keyed.post("/decide", json=body, headers={"authorization": "Bearer wrong-key-0123456789"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and KEY not in r.text
    assert keyed.post("/decide", json=body, headers={"authorization": f"Bearer {KEY}"}).status_code == 200
    assert keyed.post("/decide", json=body, headers={"x-api-key": KEY}).status_code == 200
    for path in ("/events", "/feedback", "/reload", "/decide_batch"):
        assert keyed.post(path, json={}).status_code == 401, path
    assert keyed.post("/profile", json={"user_id": user}).status_code == 200  # a read, on loopback
    assert keyed.get("/livez").status_code == 200 and keyed.get("/readyz").status_code == 200


def test_a_request_that_arrives_beyond_loopback_needs_a_key_the_service_does_not_have(client, user):
    # The connection's local address is not loopback (bound to every interface), and no key is set.
    with configured(TestClient(client.app, base_url="http://10.20.30.40:3000"), allowed_hosts="nba.example.com") as remote:
        r = remote.post("/profile", json={"user_id": user}, headers={"host": "nba.example.com"})
        assert r.status_code == 403 and "NEXTBEST_API_KEY" in r.json()["error"]
        assert remote.get("/docs.json", headers={"host": "nba.example.com"}).status_code == 403
        assert remote.get("/livez", headers={"host": "10.20.30.40"}).status_code == 200  # probes stay open


@pytest.mark.parametrize("host", ["evil.example.com", "127.0.0.1.nip.io:3000", "localhost.evil.com", ""])
def test_a_foreign_host_header_is_refused_against_dns_rebinding(client, user, host):
    r = client.post("/profile", json={"user_id": user}, headers={"host": host})
    assert r.status_code == 400 and "NEXTBEST_ALLOWED_HOSTS" in r.json()["error"]
    assert client.post("/profile", json={"user_id": user}, headers={"host": "localhost:3000"}).status_code == 200


def test_a_cross_site_browser_request_is_refused(client, home, user):
    before = footprint(client, home, user)
    r = client.post("/feedback", json={"decision_id": "x", "outcome": "not_sent"}, headers={"origin": "https://evil.example.com"})
    assert r.status_code == 403
    assert client.post("/profile", json={"user_id": user}, headers={"origin": "http://127.0.0.1:3000"}).status_code == 200
    assert footprint(client, home, user) == before


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/vnd.bentoml+pickle",
                                          "application/jsonp", "application/json, text/plain"])
def test_only_json_bodies_are_parsed(client, home, user, content_type):
    before = footprint(client, home, user)
    body = json.dumps({"user_id": user}).encode()
    r = post_raw(client, "/decide", body, content_type)
    assert r.status_code == 415 and "application/json" in r.json()["error"]
    assert footprint(client, home, user) == before


def test_websocket_handshakes_are_refused(client):
    from starlette.websockets import WebSocketDisconnect

    with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect("/decide"):
        pass
    assert refused.value.code == 1008


def test_json_with_a_charset_is_json(client, user):
    r = post_raw(client, "/decide", json.dumps({"user_id": user, "dry_run": True}).encode(), "application/json; charset=utf-8")
    assert r.status_code == 200, r.text


def test_a_body_over_the_limit_is_refused_before_it_is_read(client, user):
    with configured(client, max_body_bytes=2000) as small:
        ids = [f"u{i:04d}" for i in range(400)]  # about 4,400 bytes of JSON
        r = small.post("/decide_batch", json={"user_ids": ids, "dry_run": True})
        assert r.status_code == 413 and "2000" in r.json()["error"]

        def chunks():  # no Content-Length: the guard counts while reading
            yield b'{"user_ids": ['
            for u in ids:
                yield json.dumps(u).encode() + b", "
            yield b'"u0001"]}'

        r = small.post("/decide_batch", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert small.post("/decide", json={"user_id": user, "dry_run": True}).status_code == 200


MULTIPART = (b'--x\r\nContent-Disposition: form-data; name="user_id"\r\n\r\nu0003\r\n--x'  # never closed
             b'\r\nContent-Disposition: form-data; name="f"; filename="a"\r\n')


@pytest.mark.parametrize("body, content_type, status", [
    (b"{not json", "application/json", 400),
    (b"[]", "application/json", 400),
    (b'"u0003"', "application/json", 400),
    (b'{"user_id": "u0003", "user_id": "u0004"}', "application/json", 400),
    (b'{"user_id": "\xff\xfe"}', "application/json", 400),
    (b'{"user_id": "\\ud800"}', "application/json", 400),
    (b"[" * 50_000 + b"]" * 50_000, "application/json", 400),
    (b'{"user_id": "u0003", "n_actions": 1e999}', "application/json", 400),
    (MULTIPART, "multipart/form-data; boundary=x", 415),
    (b"user_id=u0003", "application/x-www-form-urlencoded", 415),
])
def test_malformed_bodies_are_4xx_on_every_endpoint(client, home, user, body, content_type, status):
    before = footprint(client, home, user)
    for path in POSTS:
        r = post_raw(client, path, body, content_type)
        assert r.status_code == status, (path, r.status_code, r.text[:200])
        assert r.json()["error"]
    assert footprint(client, home, user) == before


def test_a_service_beyond_loopback_without_a_key_does_not_start():
    with pytest.raises(UnsafeStart, match="NEXTBEST_API_KEY"):
        check_start(Settings(), "0.0.0.0")
    with pytest.raises(UnsafeStart, match="too short"):
        check_start(Settings(api_key="short"), "127.0.0.1")
    with pytest.raises(UnsafeStart, match="NEXTBEST_API_KEY_ON_LOOPBACK"):
        check_start(Settings(api_key_on_loopback="writes"), "127.0.0.1")
    check_start(Settings(), "127.0.0.1")
    check_start(Settings(api_key=KEY), "0.0.0.0")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("10.0.0.1")


def test_which_paths_need_the_key():
    loopback = GuardPolicy(api_key=KEY)
    assert not loopback.key_required("/decide", remote=False) and loopback.key_required("/status", remote=True)
    writes = GuardPolicy(api_key=KEY, api_key_on_loopback="writes")
    assert writes.key_required("/feedback", remote=False) and not writes.key_required("/profile", remote=False)
    assert GuardPolicy(api_key=KEY, api_key_on_loopback="all").key_required("/status", remote=False)
    assert GuardPolicy(api_key=KEY, bound_beyond_loopback=True).key_required("/docs.json", remote=False)
    assert listening_host(["worker"]) is None and listening_host(["worker", "--fd", "999999"]) is None


# --- item 11: no paths, SQL or PII in answers and logs --------------------------------------------------

def test_status_and_errors_carry_no_paths_sql_or_ids(client, home, caplog):
    email = "jane.doe@example.com"
    with caplog.at_level(logging.INFO):
        r = client.post("/decide", json={"user_id": email})
        assert r.status_code == 404 and email in r.text  # the caller is told which id is unknown ...
        r = client.post("/profile", json={"user_id": email, "oops": 1})
        assert r.status_code == 400
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    assert "unknown user_id" in logged and email not in logged  # ... the log names a pseudonym only
    status = client.post("/status", json={}).text
    assert str(home.home) not in status and "SELECT" not in status and "/tmp" not in status


def test_a_broken_ledger_answers_no_contact_without_its_path(home, user, tmp_path, monkeypatch):
    from nextbest.serving.runtime import Runtime
    from nextbest.serving.schemas import DecideRequest

    monkeypatch.setattr("nextbest.serving.clock.system_clock", lambda: CLOCK)
    broken = copy_home(home, tmp_path / "home", fresh_ledger=True).home
    rt = Runtime(Settings(home=broken), loader=lambda s: {})
    for f in broken.glob("ledger.db*"):
        f.unlink()
    (broken / "ledger.db").mkdir()  # the ledger's file cannot be opened by a new connection (a new request thread)
    with ThreadPoolExecutor(1) as pool:
        d = pool.submit(rt.decide, DecideRequest(user_id=user)).result()
    assert d["actions"] == [] and d["degraded_reasons"] == ["ledger_unavailable"]
    assert str(tmp_path) not in json.dumps(d) and "ledger" in json.dumps(d["filtered"])


# --- the real server: refuses to listen beyond loopback without a key -----------------------------------

def test_nextbest_serve_refuses_beyond_loopback_without_a_key(home):
    from typer.testing import CliRunner

    from nextbest.pipelines.cli import app

    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0"], env={"NEXTBEST_HOME": str(home.home)})
    assert result.exit_code == 2 and "NEXTBEST_API_KEY" in result.output and result.exception is not None
    assert "Traceback" not in result.output



@pytest.mark.slow
def test_bentoml_serve_beyond_loopback_refuses_without_a_key_and_asks_for_it_with_one(home, tmp_path):
    from nextbest.pipelines.serve_commands import _env, _free_port, serve_command

    serve_home = copy_home(home, tmp_path / "home", fresh_ledger=True).home
    settings = Settings(home=serve_home, host="0.0.0.0")
    port = _free_port("127.0.0.1")
    refused = subprocess.run(serve_command(settings, "0.0.0.0", port), capture_output=True, text=True, env=_env(settings),
                             timeout=120)
    assert "refusing to listen on 0.0.0.0 without an API key" in refused.stderr
    keyed = Settings(home=serve_home, host="0.0.0.0", api_key=KEY)
    proc = subprocess.Popen(serve_command(keyed, "0.0.0.0", port), env=_env(keyed), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        # Bound to every interface: even a loopback caller needs the key, on every endpoint but the probes.
        assert httpx.post(f"{url}/status", json={}, timeout=10).status_code == 401
        assert httpx.get(f"{url}/metrics", timeout=10).status_code == 401
        ok = httpx.post(f"{url}/status", json={}, headers={"authorization": f"Bearer {KEY}"}, timeout=10)
        assert ok.status_code == 200 and ok.json()["ledger"]
        user = consenting_user(keyed)
        for key, code in ((KEY, 0), ("", 22)):  # the README's curl example sends NEXTBEST_API_KEY (curl: 22 = HTTP 4xx)
            curl = subprocess.run(["sh", str(ROOT / "examples/serving/decide.sh"), user], capture_output=True, text=True,
                                  env={"NEXTBEST_URL": url, "NEXTBEST_API_KEY": key, "PATH": "/usr/bin:/bin"}, timeout=30)
            assert curl.returncode == code, curl.stderr
        assert json.loads(curl.stdout)["error"].startswith("missing or wrong API key")
    finally:
        proc.terminate()
        proc.wait(timeout=30)

