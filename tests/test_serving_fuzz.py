"""Schema fuzzing of every endpoint over the real HTTP stack: >= 5,000 requests, not one answer >= 500.

Bodies are drawn from the service's own OpenAPI document (/docs.json): mostly values of the declared
type (known user and decision ids, times near and far from the server clock, the enums), sometimes any
JSON value, an unknown key or a body that is not an object; then hostile raw bodies on every endpoint.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from nextbest.features.settings import Settings
from tests.conftest import copy_home
from tests.test_serving_http import service_client
from tests.test_serving_runtime import CLOCK, champions, consenting_user

pytestmark = pytest.mark.slow

# Requests per endpoint (>= 5,000 in all with the hostile bodies), weighted by cost: an /events request
# pushes to the online store and decides its triggers (~40 ms here), a /feedback one costs ~4 ms.
EXAMPLES = {"/decide": 1500, "/decide_batch": 500, "/events": 300, "/feedback": 2000, "/profile": 500, "/reload": 150,
            "/status": 150, "/campaigns/create": 100, "/campaigns/edit": 60, "/campaigns/show": 40, "/campaigns/command": 100,
            "/campaigns/dry_run": 30, "/campaigns/run": 30, "/campaigns/experiment": 30, "/report": 30}
GETS = ("/livez", "/readyz", "/healthz", "/metrics", "/docs.json", "/")

ANY = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                   | st.text(max_size=10), lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                                       max_size=3), max_leaves=6)
TIMES = st.one_of(
    st.integers(-23 * 3600, 240).map(lambda s: (CLOCK + timedelta(seconds=s)).isoformat()),  # inside the window
    st.integers(-23 * 3600, 240).map(lambda s: (CLOCK + timedelta(seconds=s)).isoformat()),
    st.integers(-10**6, 10**7).map(lambda s: (CLOCK + timedelta(seconds=s)).isoformat()),
    st.sampled_from(["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00", "1970-01-01T00:00:00Z",
                    "2026-11-23T13:00:00", "2026-13-45T99:00:00Z", "yesterday", ""]),
    st.integers(-10**12, 10**12))

HOSTILE = [
    (b"", "application/json"), (b"{not json", "application/json"), (b"null", "application/json"), (b"[]", "application/json"),
    (b'{"user_id": NaN}', "application/json"), (b'{"n_actions": Infinity}', "application/json"),
    (b'{"amount": -Infinity}', "application/json"), (b'{"x": 1e999}', "application/json"),
    (b'{"user_id": "u0003", "user_id": "u0004"}', "application/json"), (b'{"user_id": "\xff"}', "application/json"),
    (b'{"user_id": "\\udfff"}', "application/json"), (b"[" * 100_000 + b"]" * 100_000, "application/json"),
    (b'{"user_id": "' + b"x" * 2_000_000 + b'"}', "application/json"),
    (b'{"user_id": "u0003"}', "text/plain"), (b"user_id=u0003", "application/x-www-form-urlencoded"),
    (b'--b\r\nContent-Disposition: form-data; name="user_id"\r\n\r\nu0003\r\n--b', "multipart/form-data; boundary=b"),
    (b'--b\r\nContent-Disposition: form-data; name="request"\r\n\r\n{}\r\n', "multipart/form-data"),
    (b'{"user_id": "u0003"}', None), (b"\x80\x04\x95", "application/vnd.bentoml+pickle"),
    (b'{"user_id": "u0003", "now": "0001-01-01T00:00:00+05:00"}', "application/json"),
    (b'{"user_ids": ["u0003"], "now": "9999-12-31T23:59:59-05:00"}', "application/json"),
    (b'{"events": [{"user_id": "u0003", "type": "add_to_cart", "ts": "9999-12-31T23:59:59-05:00"}]}', "application/json"),
    (b'{"decision_id": "x", "outcome": "opened", "at": "0001-01-01T00:00:00+05:00"}', "application/json"),
    (b'{"user_id": "u0003", "n_actions": 100000000000000000000000000000000000000}', "application/json"),
    (b'{"user_id": "\\u0000"}', "application/json"), (b'{"user_id": "u0003", "dry_run": "yes"}', "application/json"),
]


@pytest.fixture(scope="module")
def fuzz_home(built, tmp_path_factory) -> Settings:
    return copy_home(built, tmp_path_factory.mktemp("fuzz") / "home")


@pytest.fixture(scope="module")
def fuzz_client(fuzz_home):
    with service_client(fuzz_home, champions("email", "1")) as c:
        yield c


def _resolve(doc: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].split("/")[-1]]
    return schema


def mostly(typed: st.SearchStrategy, other: st.SearchStrategy = ANY, one_in: int = 12) -> st.SearchStrategy:
    """`typed`, except one time in `one_in` `other`."""
    # Not st.integers: Hypothesis favours the ends of a range, which would make `other` far more common.
    return st.sampled_from(range(one_in)).flatmap(lambda k: other if k == one_in // 2 else typed)


def strategy(doc: dict, schema: dict, known: dict[str, list[str]], name: str = "") -> st.SearchStrategy:
    """Values of the schema's type (known ids and names by field, times near the clock), now and then anything."""
    schema = _resolve(doc, schema)
    if "anyOf" in schema:
        return st.one_of([strategy(doc, s, known, name) for s in schema["anyOf"]])
    kind = schema.get("type")
    if "enum" in schema:
        typed = mostly(st.sampled_from(schema["enum"]), st.text(max_size=10), 8)
    elif kind == "string" and schema.get("format") == "date-time":
        typed = TIMES
    elif kind == "string":
        typed = mostly(st.sampled_from(known.get(name) or known["*"]), st.text(min_size=1, max_size=schema.get("maxLength", 30) + 3), 6)
    elif kind == "integer":
        lo, hi = schema.get("minimum", -5), schema.get("maximum", 10**6)
        typed = mostly(st.integers(lo, hi), st.integers(lo - 3, hi + 3), 6)
    elif kind == "number":
        typed = mostly(st.floats(0, 1000, allow_nan=False), st.floats(allow_nan=False, allow_infinity=False), 6)
    elif kind == "boolean":
        typed = st.booleans()
    elif kind == "null":
        typed = st.none()
    elif kind == "array":
        items = strategy(doc, schema.get("items", {}), known, name)
        typed = mostly(st.lists(items, min_size=schema.get("minItems", 0), max_size=4), st.lists(items, max_size=4), 6)
    elif kind == "object" and schema.get("properties"):
        typed = _object(doc, schema, known)
    else:
        return ANY
    return mostly(typed, ANY, 25)


def _object(doc: dict, schema: dict, known: dict[str, list[str]]) -> st.SearchStrategy:
    props, required = schema.get("properties", {}), set(schema.get("required", []))
    return st.fixed_dictionaries({k: strategy(doc, v, known, k) for k, v in props.items() if k in required},
                                 optional={k: strategy(doc, v, known, k) for k, v in props.items() if k not in required})


def body_strategy(doc: dict, path: str, known: dict[str, list[str]]) -> st.SearchStrategy:
    """The request object; one time in twelve with an unknown key, one in twelve not an object at all."""
    obj = _object(doc, _resolve(doc, doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]), known)
    extra = st.tuples(obj, st.text(min_size=1, max_size=8), ANY).map(lambda t: {**t[0], t[1]: t[2]})
    return mostly(mostly(obj, extra), ANY)


def test_every_endpoint_survives_5000_fuzzed_and_hostile_requests(fuzz_client, fuzz_home):
    client, sent = fuzz_client, []
    doc = client.get("/docs.json").json()
    posts = [p for p, item in doc["paths"].items() if "post" in item]
    assert sorted(posts) == sorted(EXAMPLES)  # every endpoint is fuzzed; a new one must be added here
    users = [f"u{i:04d}" for i in range(12)] + [consenting_user(fuzz_home, c) for c in ("email", "push", "sms")]
    decided = [client.post("/decide", json={"user_id": u}).json() for u in users[3:9]]
    ids = users + ["nobody", "jane@example.com", "u0003 "]
    offers = ["welcome_gift", "payment_reminder", "winback_coupon", "free_lunch"]
    channels = ["email", "push", "sms", "inapp", "wechat", "fax"]
    known = {"user_id": ids, "user_ids": ids, "decision_id": [d["decision_id"] for d in decided] + ["nope"],
             "offers": offers, "offer_id": offers, "channels": channels, "channel": channels,
             "type": ["add_to_cart", "purchase", "view", "app_open", "register"],
             "campaign_id": ["spring", "nope"], "actor": ["ann", "bob"], "audience": ["customers", "nope"],
             "*": ["spring", "cart_abandonment", "wave-1", "x", "books"]}

    def check(path: str, r) -> None:
        sent.append(r.status_code)
        assert r.status_code < 500, (path, r.status_code, r.text[:300])
        if r.status_code >= 400:  # a message that says what is wrong (BentoML wraps its own 4xx in a list)
            answer = r.json()
            assert (answer[0] if isinstance(answer, list) else answer)["error"], (path, r.text[:300])

    def fuzzer(path: str, n: int):
        @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate, Phase.shrink],
                  suppress_health_check=list(HealthCheck))
        @given(body=body_strategy(doc, path, known))
        def fuzz(body):
            check(path, client.post(path, content=json.dumps(body, ensure_ascii=False).encode(),
                                    headers={"content-type": "application/json"}))
        return fuzz

    for path, n in EXAMPLES.items():
        fuzzer(path, n)()
    for body, content_type in HOSTILE:
        for path in posts:
            check(path, client.post(path, content=body, headers={"content-type": content_type} if content_type else {}))
    for path in GETS:
        check(path, client.get(path))
    assert len(sent) >= 5000, len(sent)
    assert sum(s == 200 for s in sent) >= 500  # the fuzz reached the decisions, not only the validators
