"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright's Python API): every page
loads without a console error, the charts render with data, a campaign is approved through the page. Screenshots
are kept as test artifacts (NEXTBEST_TEST_ARTIFACTS, default test-artifacts/)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from nextbest.campaigns.store import CampaignStore, store_path
from tests.dashboard_home import make_home

ARTIFACTS = Path(os.environ.get("NEXTBEST_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed: `make test` installs it (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The dashboard over a tiny home, served by uvicorn on a free loopback port in this process."""
    import uvicorn

    from nextbest.monitoring.dashboard import create_app

    settings = make_home(tmp_path_factory.mktemp("browser"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "the dashboard did not start"
    yield settings, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        tab = browser.new_page(viewport={"width": 1280, "height": 900})
        tab.errors = []
        tab.on("console", lambda m: tab.errors.append(m.text) if m.type == "error" else None)
        tab.on("pageerror", lambda e: tab.errors.append(str(e)))
        yield tab
        browser.close()


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_pages_load_without_console_errors_and_charts_have_data(served, page):
    _, url = served
    for path, name in (("/", "dashboard"), ("/report?period=week", "report"), ("/health", "health")):
        response = page.goto(url + path)
        assert response.status == 200, path
        bars = page.locator("svg.chart rect.bar")
        assert bars.count() > 0, f"{path}: no chart bars"
        # rendered, not just present: the browser laid the bars out with a width
        assert max(bars.nth(i).bounding_box()["width"] for i in range(min(bars.count(), 8))) > 1, path
        _shot(page, name)
    assert page.goto(url + "/campaigns/spring").status == 200  # nothing sent yet: a note, no empty chart
    assert "nothing sent yet" in page.locator("main").inner_text()
    assert page.errors == [], page.errors


def test_a_campaign_is_approved_through_the_page(served, page):
    settings, url = served
    page.goto(url + "/")
    row = page.locator('tr[data-campaign="spring"]')
    row.locator('input[name="actor"]').fill("bob")
    row.locator("button#approve-spring").click()
    page.wait_for_url("**/?msg=*")
    assert page.locator(".msg").inner_text() == "campaign spring approved by bob"
    assert page.locator('tr[data-campaign="spring"] td.state').inner_text() == "approved"
    c = CampaignStore(store_path(settings.home)).get("spring")
    assert (c.state, c.approved_by) == ("approved", "bob")
    _shot(page, "approved")
    assert page.errors == [], page.errors
