"""The closed loop through the decision service over HTTP: events, decide_batch, feedback; retraining learns from the
service's own logs (hold-out controls included) and the service hot-reloads its champions."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from starlette.testclient import TestClient

from nextbest.features.ingest import read_raw
from nextbest.pipelines.logs_to_contacts import PREFIX
from nextbest.pipelines.retrain import load_state
from nextbest.pipelines.service_loop import SIMULATED_CLOCK_ENV, ServiceLoopConfig, run_service_loop
from nextbest.serving.config import Holdout, load_config, write_config
from tests.conftest import copy_home, service_app

BASE_URL = "http://127.0.0.1:3000"


@pytest.mark.slow
def test_two_rounds_through_the_service_retrain_on_its_own_logs(trained, tmp_path, monkeypatch):
    home = copy_home(trained, tmp_path / "home", fresh_ledger=True)
    config = load_config(home.home / "operator.yaml")
    write_config(config.model_copy(update={"holdout": Holdout(campaigns={"loop": 0.2})}), home.home / "operator.yaml")
    history = read_raw(home.raw_dir, "contacts")
    monkeypatch.setenv("NEXTBEST_HOME", str(home.home))
    for k, v in SIMULATED_CLOCK_ENV.items():
        monkeypatch.setenv(k, v)
    with TestClient(service_app(), base_url=BASE_URL) as client:
        table = run_service_loop(home, client, ServiceLoopConfig(rounds=2, days=2, users=200, models=("uplift",),
                                                                            uplift_learner="funnel"))

    assert list(table.index) == [1, 2]
    assert (table["violations"] == 0).all()  # the replay's rules are the operator config's caps
    assert (table["contacts"] > 0).all() and (table["controls"] > 0).all() and (table["feedback"] > 0).all()
    assert table["start"].iloc[1] == (pd.Timestamp(table["start"].iloc[0]) + pd.Timedelta(days=2)).date().isoformat()
    # every decision the service logged, controls included, and nothing else became a contact
    logged = [json.loads(line) for line in (home.log_dir / "decisions.jsonl").read_text().splitlines()]
    assert len(logged) == table["decisions"].sum()
    assert sum(bool(r["holdout"]) for r in logged) == table["controls"].sum()
    contacts = read_raw(home.raw_dir, "contacts")
    new = contacts[~contacts["contact_id"].isin(history["contact_id"])]
    assert new["contact_id"].str.startswith(PREFIX).all()
    round_one = {r["decision_id"] for r in logged if pd.Timestamp(r["at"]) < pd.Timestamp(table["start"].iloc[1], tz="UTC")}
    assert set(new["contact_id"].str.removeprefix(PREFIX).str.split("-").str[0]) == round_one
    control = new[new["variant"] == "control"]
    assert len(control) == table["controls"].iloc[0] and control["channel"].isna().all()
    assert (control["propensity"] == 0.2).all()
    treated = new[new["variant"].isin(["treatment", "explore"])]
    assert len(treated) == table["contacts"].iloc[0] and treated["opened_at"].notna().any()
    # uplift retrained on them, and the service answered the second round after a reload
    state = load_state(home)
    assert state["steps"]["ingest"]["logs"]["control"] == len(control)
    assert "uplift" in state["steps"]["train"]["models"]
    uplift = state["steps"]["train"]["models"]["uplift"]
    before = table["models"].iloc[0]["uplift"]
    expected = before.split("/")[0] + "/" + uplift["version"] if uplift["promoted"] else before
    assert table["reloaded"].iloc[0]["uplift"] == expected == table["models"].iloc[1]["uplift"]  # hot-reloaded if promoted
