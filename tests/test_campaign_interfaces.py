"""The marketer's interfaces: `nextbest segment|campaign ...` and the service's /campaigns/* endpoints, on one store;
mistakes are exit code 2 or a 4xx with a message, never a traceback."""

from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from nextbest.pipelines.cli import app
from tests.conftest import copy_home, service_app

runner = CliRunner()
BASE_URL = "http://127.0.0.1:3000"


@pytest.fixture(scope="module")
def home(built, tmp_path_factory):
    return copy_home(built, tmp_path_factory.mktemp("campaign-cli") / "home")


@pytest.fixture
def env(home, monkeypatch):
    monkeypatch.setenv("NEXTBEST_HOME", str(home.home))
    monkeypatch.setenv("COLUMNS", "200")
    return home


def _json(result) -> object:
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _spec(offer: str, **kw) -> dict:
    return {"name": "spring", "audience": "customers", "channels": ["email"],
            "offers": [{"offer_id": offer, "variants": [{"id": "A", "text": "Hi"}, {"id": "B", "text": "Hello"}]}],
            "experiment": {"mode": "fixed", "metric": "clicked", "mde": 0.3, "baseline": 0.05}, **kw}


def test_segments_from_the_command_line_offline_point_in_time_and_online(env, tmp_path):
    created = _json(runner.invoke(app, ["segment", "create", "customers", "lifecycle_stage in [customer, intent_lead]"]))
    assert created["users"] > 0
    latest = _json(runner.invoke(app, ["segment", "count", "customers"]))["users"]
    assert latest == created["users"]
    assert _json(runner.invoke(app, ["segment", "count", "customers", "--as-of", "2000-01-01"]))["users"] == 0
    assert _json(runner.invoke(app, ["segment", "count", "customers", "--online"]))["users"] == latest
    out = tmp_path / "customers.csv"
    assert _json(runner.invoke(app, ["segment", "export", "customers", "--out", str(out)]))["users"] == latest
    assert len(out.read_text().splitlines()) == latest + 1
    assert [s["name"] for s in _json(runner.invoke(app, ["segment", "list"]))] == ["customers"]
    for args, message in ((["segment", "create", "bad", "lifecycle_stage in customer"], "needs a list"),
                          (["segment", "create", "bad", "lifecycle_stag in [customer]"], "unknown feature"),
                          (["segment", "create", "Bad Name", "age > 3"], "segment name"),
                          (["segment", "count", "nope"], "no segment 'nope'"),
                          (["segment", "export", "customers", "--out", str(tmp_path / "x.xlsx")], ".parquet or .csv")):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output


def test_campaign_approval_from_the_command_line(env, tmp_path):
    from nextbest.serving.config import load_config

    offer = load_config(env.operator_yaml).offer_ids()[0]
    path = tmp_path / "spring.yaml"
    path.write_text(json.dumps(_spec(offer)))
    if "customers" not in runner.invoke(app, ["segment", "list"]).output:
        runner.invoke(app, ["segment", "create", "customers", "lifecycle_stage in [customer, intent_lead]"])
    c = _json(runner.invoke(app, ["campaign", "create", str(path), "--actor", "ann", "--id", "spring"]))
    assert c["state"] == "draft" and c["experiment_sample"][offer]["users_per_variant"] > 1000
    _json(runner.invoke(app, ["campaign", "submit", "spring", "--actor", "ann"]))
    refused = runner.invoke(app, ["campaign", "approve", "spring", "--actor", "ann"])
    assert refused.exit_code == 2 and "four eyes" in refused.output
    run = runner.invoke(app, ["campaign", "run", "spring"])
    assert run.exit_code == 2 and "approved and started" in run.output
    assert _json(runner.invoke(app, ["campaign", "approve", "spring", "--actor", "bob"]))["approved_by"] == "bob"
    shown = _json(runner.invoke(app, ["campaign", "show", "spring"]))
    assert [h["command"] for h in shown["history"]] == ["create", "submit", "approve"]
    path.write_text(json.dumps(_spec("no_such_offer")))
    bad = runner.invoke(app, ["campaign", "create", str(path), "--actor", "ann"])
    assert bad.exit_code == 2 and "unknown offer" in bad.output
    path.write_text(json.dumps({**_spec(offer), "trigger": "cart"}))
    bad = runner.invoke(app, ["campaign", "create", str(path), "--actor", "ann"])
    assert bad.exit_code == 2 and "exactly one of" in bad.output and "Traceback" not in bad.output


def test_campaign_endpoints_share_the_store_and_answer_mistakes_with_4xx(home, monkeypatch):
    from nextbest.serving.config import load_config

    monkeypatch.setenv("NEXTBEST_HOME", str(home.home))
    offer = load_config(home.operator_yaml).offer_ids()[0]
    runner.invoke(app, ["segment", "create", "customers", "lifecycle_stage in [customer, intent_lead]"])
    with TestClient(service_app(), base_url=BASE_URL) as client:
        r = client.post("/campaigns/create", json={"spec": _spec(offer), "actor": "ann", "campaign_id": "web"})
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "draft"
        for command, actor, status in (("start", "ann", 409), ("submit", "ann", 200), ("approve", "ann", 409),
                                       ("approve", "bob", 200), ("start", "bob", 200)):
            r = client.post("/campaigns/command", json={"campaign_id": "web", "command": command, "actor": actor})
            assert r.status_code == status, (command, r.text)
        assert r.json()["state"] == "running"
        edited = client.post("/campaigns/edit", json={"campaign_id": "web", "actor": "carl",
                                                      "spec": {**_spec(offer), "priority": 3}})
        assert edited.status_code == 200 and edited.json()["state"] == "submitted" and edited.json()["version"] == 2
        dry = client.post("/campaigns/dry_run", json={"campaign_id": "web"})
        assert dry.status_code == 200 and dry.json()["audience"] > 0
        assert client.post("/campaigns/show", json={"campaign_id": "nope"}).status_code == 404
        assert client.post("/campaigns/create", json={"spec": _spec("nope"), "actor": "ann"}).status_code == 400
        assert client.post("/campaigns/command", json={"campaign_id": "web", "command": "launch",
                                                       "actor": "ann"}).status_code == 400
    cli = _json(runner.invoke(app, ["campaign", "show", "web"]))  # the CLI reads what the service wrote
    assert cli["version"] == 2 and cli["spec"]["priority"] == 3


def test_campaign_changes_count_as_writes_for_the_api_key_on_loopback():
    from nextbest.serving.guard import GuardPolicy

    writes = GuardPolicy(api_key="k" * 16, api_key_on_loopback="writes")
    for path in ("/campaigns/create", "/campaigns/edit", "/campaigns/command", "/campaigns/run"):
        assert writes.key_required(path, remote=False), path
    assert not writes.key_required("/campaigns/show", remote=False)


def test_simulate_empties_the_campaign_store_of_the_old_world(tmp_path, monkeypatch):
    """A new world reuses the old one's user ids: its campaigns (audiences, approvals, sends) must not run on it."""
    from nextbest.campaigns.model import CampaignOffer, CampaignSpec
    from nextbest.campaigns.segments import Segment
    from nextbest.campaigns.store import CampaignStore, store_path

    monkeypatch.setenv("NEXTBEST_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "200")
    store = CampaignStore(store_path(tmp_path / "home"))  # open, as a running service holds it
    store.save_segment(Segment("old", "age > 30"))
    c = store.create(CampaignSpec(name="old", audience="old", offers=[CampaignOffer(offer_id="o1")]), "ann", "old")
    store.start_run(c.id, c.version, ["u00001"])
    store.add_sends(c.id, [("d1", "u00001", "o1", "email", "A", 1.0, "2026-09-01T10:00:00+00:00", 0.1)])
    result = runner.invoke(app, ["simulate", "--users", "30", "--days", "14"])
    assert result.exit_code == 0, result.output
    assert "1 campaign(s) and 1 segment(s) of the old one removed" in result.output
    assert (store.list(), store.segments(), store.run_state("old"), store.sends("old")) == ([], [], None, [])
    again = runner.invoke(app, ["simulate", "--users", "30", "--days", "14"])
    assert again.exit_code == 0 and "campaign store reset" not in again.output
