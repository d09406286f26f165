"""The web console in headless Chromium (Debian ``chromium`` driven by Playwright), on a real node with
the model, a real Redis broker and a worker: log in, a loop sent by storescu appears and is dispatched,
a failed job's Retry delivers it once the destination is fixed in the editor, peers added and removed
in the editor apply to the next association; /readyz names ``broker`` while Redis is stopped; /metrics
has per-AE counters and observations for every stage. Screenshots of each page: tests/operator/artifacts/.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom import dcmread

from tests.e2e.support import destination_toml, pipeline_config, storescu
from tests.helpers import ROOT, NodeProcess, loop_copies, require_tool, wait_for
from tests.operator.conftest import ADMIN_PASSWORD, ADMIN_USER, ARTIFACTS, VIEWER, http_toml
from tests.operator.support import audit_messages, echo, event_of
from tests.redis import RedisServer

pytestmark = pytest.mark.timeout(900)
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def browser() -> Iterator[object]:
    require_tool("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def _shot(page: object, name: str, pages: list[str] | None = None) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    if pages is not None:
        pages.append(page.content())  # type: ignore[attr-defined]
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def test_console_in_a_browser(browser: object, small_bundle: Path, redis_server: RedisServer, credentials_toml: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    archive = tmp_path / "archive"
    archive.mkdir()
    typo = tmp_path / "archvie"  # the admin's typo: the folder does not exist, delivery fails for good
    http, http_port = http_toml(credentials_toml)
    cfg, port, data = pipeline_config(tmp_path, small_bundle, destination_toml("folder", None, typo), broker=redis_server.url)
    typo.rmdir()
    cfg.write_text(cfg.read_text() + "\n" + http)
    base = f"http://127.0.0.1:{http_port}"
    first, second = loop_copies(tmp_path / "in", 2, "console")
    for path in (first, second):
        ds = dcmread(path)
        ds.PatientName = "Testpatient^Jane"
        ds.save_as(path)
    pages: list[str] = []
    uid1, uid2 = str(dcmread(first, stop_before_pixels=True).SOPInstanceUID), str(dcmread(second, stop_before_pixels=True).SOPInstanceUID)

    node = NodeProcess(cfg, port, tmp_path / "node.log").start()
    with open(tmp_path / "worker.log", "wb") as out:
        worker = subprocess.Popen([sys.executable, "-m", "node.cli", "worker", "--allow-root", "--config", str(cfg), "--queues", "gpu,io"],
                                  stdout=out, stderr=out, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)  # fmt: skip
    page = browser.new_page(viewport={"width": 1400, "height": 900})  # type: ignore[attr-defined]
    try:
        last: list[str] = []

        def ready() -> bool:
            r = httpx.get(f"{base}/readyz", timeout=10)
            last[:] = [r.text]
            return r.status_code == 200

        try:
            wait_for(ready, 180, 1.0, what="the node to be ready (worker up)")
        except BaseException:
            raise AssertionError(f"not ready: {last}\n{(tmp_path / 'worker.log').read_text()[-3000:]}") from None

        # log in: a wrong password is refused on the page, the right one opens the dashboard
        page.goto(f"{base}/console/")
        expect(page).to_have_url(f"{base}/console/login")
        page.fill("input[name=username]", ADMIN_USER)
        page.fill("input[name=password]", "not the password")
        page.click("button[type=submit]")
        expect(page.get_by_role("alert")).to_have_text("Wrong username or password.")
        _shot(page, pages=pages, name="01-login")
        page.fill("input[name=username]", ADMIN_USER)
        page.fill("input[name=password]", ADMIN_PASSWORD)
        page.click("button[type=submit]")
        expect(page.locator("h1")).to_have_text("Dashboard")

        # loop 1: classified and rendered, then its delivery fails (the folder does not exist)
        storescu(port, first)
        page.goto(f"{base}/console/jobs")
        row = page.locator(f'tr[data-uid="{uid1}"] td.state')
        expect(row).to_have_text("failed", timeout=240_000)  # the list refreshes itself (htmx)
        _shot(page, pages=pages, name="02-jobs-failed")
        page.click(f'a[href="/console/jobs/{uid1}"]')
        expect(page.locator("#reason")).to_contain_text("does not exist")
        _shot(page, pages=pages, name="03-job-failed")

        # fix the destination in the editor: a bad value is refused with the field named, then the right path
        page.goto(f"{base}/console/destinations")
        form = page.locator('form[data-destination="pacs"]')
        form.locator("input[name=port]").fill("99999")
        form.locator("button[value=save]").click()
        expect(page.locator("#errors")).to_contain_text("destinations[0].port = 99999")
        form = page.locator('form[data-destination="pacs"]')
        form.locator("input[name=port]").fill("")
        form.locator("input[name=path]").fill(str(archive))
        form.locator("button[value=save]").click()
        expect(page.locator("#saved")).to_be_visible()
        _shot(page, pages=pages, name="04-destinations")

        # Retry on the job page delivers it with the fixed destination
        page.goto(f"{base}/console/jobs/{uid1}")
        page.click("#retry")
        expect(page.locator("#state")).to_have_text("dispatched")
        expect(page.locator("#deliveries")).to_contain_text("sent")
        expect(page.locator("#heatmap")).to_be_visible()
        assert page.evaluate("document.getElementById('heatmap').naturalWidth") > 0
        _shot(page, pages=pages, name="05-job-retried")
        assert len(list(archive.rglob("*.dcm"))) == 3  # SR + two heatmap captures

        # loop 2: a new job uses the new destination at once, without a restart
        storescu(port, second)
        page.goto(f"{base}/console/jobs")
        expect(page.locator(f'tr[data-uid="{uid2}"] td.state')).to_have_text("dispatched", timeout=240_000)
        _shot(page, pages=pages, name="06-jobs")

        # peers editor: NEWAE may associate at once; removed, the next association is rejected
        page.goto(f"{base}/console/peers")
        page.fill("#add-peer input[name=ae_title]", "NEWAE")
        page.click("#add-peer button[type=submit]")
        expect(page.locator("#saved")).to_be_visible()
        assert echo(port, "NEWAE").returncode == 0
        page.fill("#add-peer input[name=ae_title]", "BAD\\AE")
        page.click("#add-peer button[type=submit]")
        expect(page.locator("#errors")).to_contain_text("ae_title = 'BAD\\\\AE'")
        _shot(page, pages=pages, name="07-peers")
        page.click('button[aria-label="remove NEWAE"]')
        expect(page.locator("#saved")).to_be_visible()
        rejected = echo(port, "NEWAE")
        assert rejected.returncode != 0

        for path, name in (("/console/", "08-dashboard"), ("/console/associations", "09-associations"), ("/console/model", "10-model")):
            page.goto(base + path)
            _shot(page, name, pages)
        expect(page.locator("#model-card")).to_contain_text("tin18-test")
        page.goto(f"{base}/console/associations")
        expect(page.locator("#associations")).to_contain_text("rejected")
        assert pages and not [p for p in pages if "Testpatient" in p]  # no patient name on any page

        # /metrics: per-AE counters, dispatch failures per destination, every stage observed
        text = httpx.get(f"{base}/metrics", headers=VIEWER, timeout=30).text
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}
        assert samples[("alnnode_instances_received_total", (("calling_ae", "US_ROOM1"),))] == 2
        assert samples[("alnnode_associations_total", (("calling_ae", "NEWAE"), ("outcome", "rejected")))] == 1
        assert samples[("alnnode_dispatch_failures_total", (("destination", "pacs"),))] >= 1
        for stage in ("classified", "rendered", "dispatched"):
            assert samples[("alnnode_stage_seconds_count", (("stage", stage),))] >= 1, stage
        assert samples[("alnnode_model_inference_seconds_count", ())] == 2
        assert samples[("alnnode_jobs", (("state", "dispatched"),))] == 2

        # /readyz: 503 naming the broker while Redis is stopped, 200 again when it returns
        redis_server.stop()
        r = httpx.get(f"{base}/readyz", timeout=30)
        assert r.status_code == 503 and r.json()["failing"] == ["broker"], r.text
        redis_server.start()
        wait_for(lambda: httpx.get(f"{base}/readyz", timeout=30).status_code == 200, 60, 0.5, what="ready again")
    finally:
        page.close()
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(40)
        node.stop()
    kinds = {event_of(m) for m in audit_messages(data)}
    assert ("110104", None) in kinds and ("110114", "110122") in kinds
    sent = [m for m in audit_messages(data) if event_of(m)[0] == "110104" and m.find("EventIdentification").get("EventActionCode") == "R"]  # type: ignore[union-attr]
    assert {m.find("EventIdentification").get("EventOutcomeIndicator") for m in sent} == {"0", "4"}  # type: ignore[union-attr]
