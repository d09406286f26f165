"""What a radiologist sees: the node's SR opened in OHIF 3.13 (headless Chromium), over a real Orthanc's DICOMweb.

A real node (``alnnode serve``, the demo's trained bundle, shipped gate and operating point) processes two held-out
phantom loops (one with, one without metastasis) and the real cardiac echo of pydicom-data, and sends its results
to Orthanc by DICOMweb STOW-RS; the source loops are stored there too, as the modality would have. For each
phantom the SR is opened in OHIF's viewport: it must show the loop at its key frame with the probability and the
Present/Absent comment drawn on the image. The echo must be *not assessable (out of distribution)*, with the
reason in ``alnnode status``. Screenshots go to ``$ALNNODE_TEST_ARTIFACTS`` (default ``tests/viewer/artifacts``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests

from tests.demo_model import demo_bundle, held_out_phantoms
from tests.e2e.support import destination_toml, pipeline_config, source_uid, storescu, wait_states
from tests.helpers import ROOT, port_open, us_file, wait_for
from tests.orthanc import OrthancServer
from tests.viewer.ohif import CHROMIUM, CHROMIUM_ARGS, require_ohif, viewer

pytestmark = pytest.mark.timeout(1800)  # the first run trains the demo bundle (about 5 min on 2 cores)

ARTIFACTS = Path(os.environ.get("ALNNODE_TEST_ARTIFACTS", ROOT / "tests" / "viewer" / "artifacts"))
ECHO = "color3d_jpeg_baseline.dcm"


@pytest.fixture(scope="module")
def processed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Orthanc holding two phantom loops + the echo and the node's results for them."""
    require_ohif()
    bundle = demo_bundle()
    tmp = tmp_path_factory.mktemp("viewer")
    phantoms = held_out_phantoms(tmp / "phantoms")
    loops = {label: path for path, label in phantoms}  # one loop per label
    echo = us_file(ECHO)
    orthanc = OrthancServer(tmp / "pacs").start()
    cfg, port, data = pipeline_config(tmp, bundle, destination_toml("dicomweb", orthanc))
    cfg.write_text(cfg.read_text().replace("threshold = 0.5\n", ""))  # the bundle's own operating point
    log = (tmp / "node.log").open("wb")
    node = subprocess.Popen([sys.executable, "-m", "node.cli", "serve", "--allow-root", "--config", str(cfg)], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_for(lambda: port_open(port), 120, 0.2, what="the node to listen")
        sources = [loops[1], loops[0], echo]
        for path in sources:  # the modality also archives the loop itself
            requests.post(f"{orthanc.url}/instances", data=path.read_bytes(), timeout=60).raise_for_status()
        storescu(port, loops[1], loops[0])
        storescu(port, echo, flag="-xy")
        uids = [source_uid(p) for p in sources]
        wait_states(data, uids, {"dispatched", "failed"}, timeout=600)
        yield {"orthanc": orthanc, "cfg": cfg, "data": data, "uids": uids, "loops": loops, "echo": echo}
    finally:
        node.terminate()
        node.wait(60)
        log.close()
        orthanc.kill()


def _sr_of(orthanc: OrthancServer, source: Path) -> pydicom.Dataset:
    study = str(pydicom.dcmread(source, stop_before_pixels=True).StudyInstanceUID)
    for oid in orthanc.get(f"/studies/{orthanc.lookup(study)[0]}/instances"):
        tags = orthanc.get(f"/instances/{oid['ID']}/simplified-tags")
        if tags.get("Modality") == "SR":
            return pydicom.dcmread(BytesIO(orthanc.file(tags["SOPInstanceUID"])))
    pytest.fail(f"no SR in Orthanc for {source.name}")


def _comment(sr: pydicom.Dataset) -> str:
    def walk(items: Any) -> Iterator[Any]:
        for item in items:
            yield item
            yield from walk(item.get("ContentSequence", []))

    return next(i.TextValue for i in walk(sr.ContentSequence) if i.ValueType == "TEXT" and i.TextValue.startswith("AI:"))


def _open_sr_in_ohif(base: str, study_uid: str, shot: Path) -> dict[str, Any]:
    """Load the study, put the SR in the viewport, return what the viewport shows (annotation texts, frame)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{base}/viewer?StudyInstanceUIDs={study_uid}", timeout=180_000)
            page.wait_for_function("() => window.services?.displaySetService?.getActiveDisplaySets()"
                                   ".some(d => d.Modality === 'SR')", timeout=180_000)  # fmt: skip
            page.evaluate("""() => {
                const {displaySetService, viewportGridService} = window.services;
                const sr = displaySetService.getActiveDisplaySets().find(d => d.Modality === 'SR');
                viewportGridService.setDisplaySetsForViewport({viewportId: viewportGridService.getActiveViewportId(),
                                                               displaySetInstanceUIDs: [sr.displaySetInstanceUID]});
            }""")
            page.wait_for_function("() => Array.from(document.querySelectorAll('svg text'))"
                                   ".some(t => t.textContent.includes('AI:'))", timeout=180_000)  # fmt: skip
            shown = page.evaluate("""() => {
                const texts = Array.from(document.querySelectorAll('svg text')).map(t => t.textContent);
                const s = window.services.cornerstoneViewportService;
                const vp = s.getCornerstoneViewport(window.services.viewportGridService.getActiveViewportId());
                return {texts, frame: vp.getCurrentImageIdIndex(), imageId: vp.getCurrentImageId()};
            }""")
            skip = page.get_by_text("Skip all")  # OHIF's first-visit tour would cover the image
            if skip.count() and skip.first.is_visible():
                skip.first.click()
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot))
            shown["errors"] = errors
            return dict(shown)
        finally:
            browser.close()


@pytest.mark.parametrize(("label", "verdict"), [(1, "PRESENT"), (0, "ABSENT")])
def test_ohif_shows_the_sr_on_the_key_frame(processed: dict[str, Any], label: int, verdict: str) -> None:
    orthanc: OrthancServer = processed["orthanc"]
    loop: Path = processed["loops"][label]
    sr = _sr_of(orthanc, loop)
    comment = _comment(sr)
    assert comment.startswith(f"AI: ALN metastasis {verdict} ") and len(comment) <= 50, comment
    frame = next(int(i.ReferencedSOPSequence[0].ReferencedFrameNumber) for i in _scoords(sr))

    with viewer(orthanc.url) as base:
        shown = _open_sr_in_ohif(base, str(sr.StudyInstanceUID), ARTIFACTS / f"ohif-sr-{verdict.lower()}.png")

    text = " ".join(shown["texts"])
    assert comment in text, shown  # the Present/Absent comment, drawn on the image
    assert "Probability of cancer: " in text and " %" in text, shown
    assert shown["frame"] == frame - 1, shown  # the viewport is at the key frame of the loop
    assert source_uid(loop) in shown["imageId"], shown
    assert not [e for e in shown["errors"] if "ReferencedSOPSequence" in e], shown["errors"]


def _scoords(sr: pydicom.Dataset) -> Iterator[Any]:
    def walk(items: Any) -> Iterator[Any]:
        for item in items:
            yield item
            yield from walk(item.get("ContentSequence", []))

    for item in walk(sr.ContentSequence):
        if item.ValueType == "SCOORD":
            yield from item.ContentSequence


def test_echo_is_reported_not_assessable_and_status_says_why(processed: dict[str, Any]) -> None:
    sr = _sr_of(processed["orthanc"], processed["echo"])
    assert _comment(sr) == "AI: not assessable (out of distribution)"
    out = subprocess.run([sys.executable, "-m", "node.cli", "status", "--json", "--config", str(processed["cfg"])],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    jobs = {j["sop_instance_uid"]: j for j in json.loads(out.stdout)["last_jobs"]}
    echo = jobs[source_uid(processed["echo"])]
    assert echo["state"] == "dispatched" and not echo["probability"], echo
    assert echo["reason"].startswith("not assessable: out of distribution (OOD score "), echo
