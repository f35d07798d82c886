"""The dashboard over HTTP (in process): pages with data, approval through the four-eyes rule, the report API equal
to the report, and its safety (Host allow-list, cross-site forms, API key beyond loopback)."""

from __future__ import annotations

import socket

import pytest
from pydantic import SecretStr
from starlette.testclient import TestClient
from typer.testing import CliRunner

from nextbest.campaigns.store import CampaignStore, store_path
from nextbest.features.settings import Settings
from nextbest.monitoring.reports import build_report
from nextbest.monitoring.sources import default_as_of, load_frame
from nextbest.pipelines.cli import app
from tests.dashboard_home import make_home

BASE = "http://127.0.0.1:3000"


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Settings:
    return make_home(tmp_path_factory.mktemp("dashboard"))


@pytest.fixture
def client(home):
    from nextbest.monitoring.dashboard import create_app

    with TestClient(create_app(home), base_url=BASE) as c:
        yield c


def test_pages_show_campaigns_charts_and_health(client):
    page = client.get("/")
    assert page.status_code == 200
    assert 'data-campaign="spring"' in page.text and 'data-campaign="winback"' in page.text
    assert page.text.count('class="bar"') > 10  # charts inline, with data; nothing fetched from elsewhere:
    assert "<script" not in page.text and "src=" not in page.text and 'href="http' not in page.text
    health = client.get("/health")
    assert health.status_code == 200 and "1 open alert" in health.text and "revenue_90d" in health.text
    assert 'nextbest_monitor_alerts{metric="psi"} 1' in client.get("/metrics").text
    exp = client.get("/campaigns/spring")
    assert exp.status_code == 200 and "Copy experiments" in exp.text
    assert client.get("/campaigns/nope").status_code == 404


def test_report_api_gives_the_reports_figures(client, home):
    doc = client.get("/api/report", params={"period": "week"}).json()
    frame = load_frame(home)
    expected = build_report(frame, "week", default_as_of(frame)).as_json()
    assert doc == expected
    assert {r["campaign_id"] for r in doc["tables"]["incremental"]} == {"spring", "winback", "(all)"}
    bad = client.get("/api/report", params={"period": "fortnight"})
    assert bad.status_code == 400 and "day, week, month" in bad.json()["detail"]


def test_approval_from_the_page_keeps_four_eyes(client, home):
    store = CampaignStore(store_path(home.home))
    same = client.post("/campaigns/winback/approve", data={"actor": "alice"}, follow_redirects=False)
    assert same.status_code == 303 and "four%20eyes" in same.headers["location"]
    assert store.get("winback").state == "submitted"
    ok = client.post("/campaigns/winback/approve", data={"actor": "bob"})
    assert ok.status_code == 200 and "approved by bob" in ok.text
    c = store.get("winback")
    assert (c.state, c.approved_by) == ("approved", "bob")
    assert store.events("winback")[-1]["command"] == "approve"


def test_a_form_from_another_site_or_host_is_refused(client, home):
    store = CampaignStore(store_path(home.home))
    r = client.post("/campaigns/spring/approve", data={"actor": "mallory"}, headers={"origin": "http://evil.example"})
    assert r.status_code == 403
    assert store.get("spring").state == "submitted"
    assert client.get("/", headers={"host": "evil.example"}).status_code == 421


def test_beyond_loopback_every_request_needs_the_key(home):
    from nextbest.monitoring.dashboard import create_app

    key = "k" * 32
    remote = home.model_copy(update={"host": "10.1.2.3", "api_key": SecretStr(key), "allowed_hosts": "10.1.2.3"})
    with TestClient(create_app(remote), base_url="http://10.1.2.3:8050") as c:
        assert c.get("/api/report").status_code == 401
        assert c.get("/healthz").text == "ok"  # liveness only, no figures
        assert c.get("/", headers={"accept": "text/html"}, follow_redirects=False).headers["location"] == "/login"
        assert c.get("/api/report", headers={"x-api-key": key}).status_code == 200
        assert c.post("/login", data={"key": "wrong"}).status_code == 401
        assert c.post("/login", data={"key": key}).status_code == 200  # signed in: the cookie opens the pages
        assert c.get("/health").status_code == 200


def test_the_command_refuses_a_public_address_without_a_key(monkeypatch, tmp_path):
    monkeypatch.setenv("NEXTBEST_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NEXTBEST_API_KEY", raising=False)
    result = CliRunner().invoke(app, ["dashboard", "--host", "10.1.2.3"])
    assert result.exit_code == 2 and "without an API key" in result.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["dashboard", "--port", str(port)])
    assert result.exit_code == 2 and "already in use" in result.output and "Traceback" not in result.output


def test_report_command_writes_html_and_csv(home, monkeypatch, tmp_path):
    monkeypatch.setenv("NEXTBEST_HOME", str(home.home))
    out = tmp_path / "reports"
    result = CliRunner().invoke(app, ["report", "--period", "week", "--output", str(out)])
    assert result.exit_code == 0, result.output
    folder = out / "week-2026-11-28"  # the last send of the log
    html = (folder / "report.html").read_text()
    assert "<svg" in html and "<script" not in html and "src=" not in html
    assert {p.name for p in folder.glob("*.csv")} >= {"funnel_campaign.csv", "incremental.csv", "channel_roi.csv",
                                                     "send_time.csv", "rollup.csv", "funnel_copy.csv"}
    bad = CliRunner().invoke(app, ["report", "--period", "fortnight"])
    assert bad.exit_code == 2 and "day, week, month" in bad.output
    bad = CliRunner().invoke(app, ["report", "--as-of", "yesterday-ish"])
    assert bad.exit_code == 2 and "ISO-8601" in bad.output


def test_a_report_on_an_empty_home_says_what_to_run(monkeypatch, tmp_path):
    monkeypatch.setenv("NEXTBEST_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(app, ["report"])
    assert result.exit_code == 2 and "nextbest simulate" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "home" / "reports").exists()
