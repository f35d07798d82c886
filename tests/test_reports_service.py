"""The decision service's `/report` gives the same figures as the report built from the same home."""

from __future__ import annotations

import pandas as pd
import pytest
from starlette.testclient import TestClient

from nextbest.monitoring.reports import build_report
from nextbest.monitoring.sources import load_frame
from tests.conftest import copy_home, service_app


@pytest.fixture(scope="module")
def home(built, tmp_path_factory):
    return copy_home(built, tmp_path_factory.mktemp("report-service") / "home")


def test_report_endpoint_equals_the_report_and_rejects_a_bad_period(home, monkeypatch):
    monkeypatch.setenv("NEXTBEST_HOME", str(home.home))
    with TestClient(service_app(), base_url="http://127.0.0.1:3000") as client:
        got = client.post("/report", json={"period": "month", "as_of": "2026-07-31T00:00:00Z"})
        assert got.status_code == 200, got.text
        frame = load_frame(home)
        assert got.json() == build_report(frame, "month", pd.Timestamp("2026-07-31T00:00:00Z")).as_json()
        spring = next(r for r in got.json()["tables"]["funnel_campaign"] if r["campaign_id"] == "spring")
        assert spring["sent"] > 0 and spring["opened"] > 0
        bad = client.post("/report", json={"period": "fortnight"})
        assert bad.status_code == 400 and "period" in bad.text
