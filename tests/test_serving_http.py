"""The decision service over HTTP: BentoML's ASGI app in-process, a schema fuzz, and a real `bentoml serve`."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from nextbest.features.settings import Settings
from tests.conftest import copy_home, service_app
from tests.test_serving_runtime import CLOCK, champions, consenting_user

ROOT = Path(__file__).resolve().parents[1]
BASE_URL = "http://127.0.0.1:3000"  # the in-process client's Host and server address: loopback, as when served


@pytest.fixture(scope="module")
def models():
    return champions("email", "1")


@pytest.fixture(scope="module")
def home(built, tmp_path_factory) -> Settings:
    return copy_home(built, tmp_path_factory.mktemp("http") / "home")


@contextlib.contextmanager
def service_client(home: Settings, models, env: dict[str, str] | None = None, base_url: str = BASE_URL):
    """BentoML's ASGI app of NextBest (the guard included) on `home`, with NEXTBEST_* `env`, clock at CLOCK."""
    from nextbest.serving.service import NextBest

    mp = pytest.MonkeyPatch()
    mp.setenv("NEXTBEST_HOME", str(home.home))
    for k, v in (env or {}).items():
        mp.setenv(k, v)
    mp.setattr(NextBest.inner, "loader", staticmethod(lambda s: models))
    mp.setattr("nextbest.serving.clock.system_clock", lambda: CLOCK)
    try:
        with TestClient(service_app(), base_url=base_url) as c:
            yield c
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def client(home, models):
    with service_client(home, models) as c:
        yield c


def ledger_rows(home: Settings) -> int:
    import sqlite3

    with sqlite3.connect(home.ledger_path) as c:
        return c.execute("SELECT count(*) FROM decisions").fetchone()[0]


def test_decide_round_trip(client, home):
    user = consenting_user(home)
    r = client.post("/decide", json={"user_id": user, "now": "2026-11-23T09:30:00Z", "context": {"channels": ["email"]}})
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["user_id"] == user and d["model_versions"]["conversion"] == "nextbest-conversion/1"
    [a] = d["actions"]
    assert a["channel"] == "email" and a["send_at"][-6:] in ("+01:00", "+08:00", "-05:00")  # the user's own offset
    assert {"expected_value", "p_convert", "uplift", "score", "propensity"} <= set(a)


def test_batch_of_users_in_one_request(client, home):
    ids = [f"u{i:04d}" for i in range(3, 103)]
    r = client.post("/decide_batch", json={"user_ids": ids, "now": "2026-11-23T09:30:00Z", "dry_run": True})
    assert r.status_code == 200, r.text
    assert [d["user_id"] for d in r.json()["decisions"]] == ids


@pytest.mark.parametrize("body, status, words", [
    ({"user_id": 5}, 400, "user_id"),
    ({"user_id": "u0003", "colour": "red"}, 400, "colour"),
    ({"user_id": "u0003", "now": "yesterday"}, 400, "now"),
    ({"user_id": "u0003", "now": "2026-11-23T09:30:00"}, 400, "timezone"),  # no offset: ambiguous
    ({"user_id": "u0003", "n_actions": 50}, 400, "n_actions"),
    ({"user_id": "u0003", "n_actions": 10**40}, 400, "n_actions"),
    ({"user_id": "u0003", "n_actions": "2"}, 400, "n_actions"),  # strict types: no coercion from text ...
    ({"user_id": "u0003", "dry_run": "yes"}, 400, "dry_run"),
    ({"user_id": "u0003", "dry_run": 0}, 400, "dry_run"),  # ... nor from numbers
    ({"user_id": "u0003", "now": 0}, 400, "now"),  # not 1970
    ({"user_id": "u0003", "context": {"offers": ["free_lunch"]}}, 400, "free_lunch"),
    ({"user_id": "u0003", "context": {"channels": ["fax"]}}, 400, "fax"),
    ({"user_id": "u0003", "context": {"send_hours": "9-9"}}, 400, "send_hours"),  # a campaign's local send hours
    ({"user_id": "u0003", "context": {"send_hours": "25-3"}}, 400, "send_hours"),
    ({"user_id": "u0003", "context": {"variants": {"free_lunch": {"A": 1.0}}}}, 400, "context.variants"),  # copies
    ({"user_id": "u0003", "context": {"variants": {"x": {"A": 0.5, "B": 0.4}}}}, 400, "add up to 1"),
    ({"user_id": "nobody"}, 404, "nobody"),
])
def test_bad_input_is_a_4xx_with_a_message_and_writes_nothing(client, home, body, status, words):
    before = ledger_rows(home)
    r = client.post("/decide", json=body)
    assert r.status_code == status, r.text
    assert words in r.text
    assert ledger_rows(home) == before


def test_oversized_batch_and_malformed_json_are_rejected(client):
    r = client.post("/decide_batch", json={"user_ids": [f"u{i}" for i in range(1001)]})
    assert r.status_code == 400 and "1000" in r.text
    r = client.post("/decide", content=b"{not json", headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500


def test_feedback_events_and_profile_round_trips(client, home):
    user = consenting_user(home, "push")
    d = client.post("/decide", json={"user_id": user, "now": "2026-11-23T09:30:00Z"}).json()
    assert d["actions"]
    r = client.post("/feedback", json={"decision_id": d["decision_id"], "outcome": "unsubscribed"})
    assert r.status_code == 200 and r.json()["suppressed"] == d["actions"][0]["channel"]
    assert client.post("/feedback", json={"decision_id": "nope", "outcome": "opened"}).status_code == 404
    assert client.post("/feedback", json={"decision_id": d["decision_id"], "outcome": "exploded"}).status_code == 400
    ev = client.post("/events", json={"events": [{"user_id": user, "type": "add_to_cart", "ts": "2026-11-23T14:00:00Z"}]})
    assert ev.status_code == 200 and ev.json()["accepted"] == 1
    p = client.post("/profile", json={"user_id": user}).json()
    assert p["features"]["cart_open"] == 1 and p["suppressions"] == {d["actions"][0]["channel"]: "opt_out"}
    assert "lifecycle_stage" in p["tags"]


def test_reload_and_status(client):
    r = client.post("/reload", json={})
    assert r.status_code == 200 and r.json()["offers"] == 12 and r.json()["error"] is None
    s = client.post("/status", json={}).json()
    assert s["ledger"] and s["models"]["send_time"] == "nextbest-send_time/1"
    assert client.get("/readyz").status_code == 200 and client.get("/livez").status_code == 200


def _value_for(schema: dict) -> st.SearchStrategy:
    """Values that are usually of the declared type, sometimes of any JSON type."""
    # JSON has no NaN or Infinity (httpx refuses to encode them): those bodies are sent raw, below.
    anything = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                            | st.text(max_size=8),
                            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                            max_leaves=5)
    kinds = {s.get("type") for s in schema.get("anyOf", [schema])}
    typed = []
    if "string" in kinds:
        typed.append(st.sampled_from(["u0003", "u0004", "2026-11-23T09:30:00Z", "email", "add_to_cart", "opened", ""]) | st.text(max_size=12))
    if "integer" in kinds:
        typed.append(st.integers(-3, 2000))
    if "boolean" in kinds:
        typed.append(st.booleans())
    if "array" in kinds:
        typed.append(st.lists(st.sampled_from(["u0003", "email", "push", "welcome_gift", "x"]), max_size=4))
    return st.one_of(*typed, anything) if typed else anything


def _resolve(doc: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].split("/")[-1]]
    return schema


@pytest.fixture(scope="module")
def openapi(client) -> dict:
    return client.get("/docs.json").json()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_schema_fuzz_never_answers_5xx(client, openapi, data):
    paths = [p for p in ("/decide", "/decide_batch", "/events", "/feedback", "/profile") if p in openapi["paths"]]
    assert len(paths) == 5
    path = data.draw(st.sampled_from(paths))
    schema = _resolve(openapi, openapi["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"])
    props = {k: _resolve(openapi, v) for k, v in schema.get("properties", {}).items()}
    body = data.draw(st.fixed_dictionaries({}, optional={k: _value_for(v) for k, v in props.items()}))
    if data.draw(st.booleans()):
        body[data.draw(st.text(min_size=1, max_size=6))] = 1
    r = client.post(path, json=body)
    assert r.status_code < 500, (path, body, r.text)


@pytest.mark.parametrize("raw", [b'{"user_id": "u0003", "n_actions": Infinity}', b'{"user_id": NaN}',
                                 b'{"user_id": "u0003", "now": -Infinity}'])
def test_non_finite_numbers_are_not_json_and_get_a_400(client, home, raw):
    before = ledger_rows(home)
    r = client.post("/decide", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    assert ledger_rows(home) == before


def test_real_bentoml_serve_on_loopback_with_metrics_and_readme_examples(home, tmp_path):
    from nextbest.pipelines.serve_commands import running_service

    settings = copy_home(home, tmp_path / "home", fresh_ledger=True)  # a new ledger, identity and all
    user = consenting_user(settings)
    with running_service(settings) as url:
        assert url.startswith("http://127.0.0.1:")
        r = httpx.post(f"{url}/decide", json={"user_id": user, "context": {"campaign_id": "t"}}, timeout=10)
        assert r.status_code == 200 and r.json()["degraded_reasons"] == ["rule_based_conversion", "rule_based_send_time"]
        bad = httpx.post(f"{url}/decide", json={"user_id": user, "oops": 1}, timeout=10)
        assert bad.status_code == 400
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert "nextbest_decide_seconds_bucket" in metrics and "nextbest_degraded_total" in metrics
        env = {"NEXTBEST_URL": url, "PATH": "/usr/bin:/bin"}
        curl = subprocess.run(["sh", str(ROOT / "examples/serving/decide.sh"), user], capture_output=True, text=True, env=env, timeout=30)
        assert curl.returncode == 0, curl.stderr
        assert json.loads(curl.stdout)["user_id"] == user
        py = subprocess.run([sys.executable, str(ROOT / "examples/serving/client.py"), user], capture_output=True, text=True,
                            env=env, timeout=60)
        assert py.returncode == 0, py.stderr
        assert "lifecycle stage:" in py.stdout


def test_while_draining_requests_get_503_readiness_is_false_and_nothing_is_written(client, home):
    """SIGTERM's drain (serving/shutdown.py) seen over HTTP; the stop itself: tests/test_serving_shutdown.py."""
    from nextbest.serving import shutdown

    user = consenting_user(home)
    assert client.get("/readyz").status_code == 200
    before = ledger_rows(home)
    shutdown.drain.cache_clear()
    try:
        shutdown.drain().begin()
        assert client.get("/readyz").status_code == 503
        r = client.post("/decide", json={"user_id": user})
        assert r.status_code == 503 and "shutting down" in r.json()["error"] and r.headers["retry-after"] == "1"
        assert client.post("/status").status_code == 503
        assert client.get("/livez").status_code == 200  # alive, just not taking work
        assert "nextbest_decide_seconds" in client.get("/metrics").text  # the last scrape still works
        assert ledger_rows(home) == before
    finally:
        shutdown.drain.cache_clear()
    assert client.get("/readyz").status_code == 200

