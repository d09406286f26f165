"""A cine loop pushed by storescu comes back to a real Orthanc as an SR and Grad-CAM heatmaps."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from orthanc_api_client import OrthancApiClient
from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.e2e.support import destination_toml, ledger_of, pipeline_config, source_uid, storescu, wait_states
from tests.helpers import ROOT, NodeProcess, loop_copies, require_tool, us_file
from tests.orthanc import OrthancServer

CINE = "color3d_jpeg_baseline.dcm"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
pytestmark = pytest.mark.timeout(400)


def check_results(objects: list[bytes], source: Path, tmp: Path) -> None:
    """One SR and the SCs, same study as the source, valid IODs, SR readable in dsr2html."""
    src = dcmread(source, stop_before_pixels=True)
    datasets = [dcmread(io.BytesIO(b)) for b in objects]
    classes = sorted(str(d.SOPClassUID) for d in datasets)
    assert classes.count(SR_CLASS) == 1, classes
    assert len(datasets) == 3, classes
    for i, (raw, ds) in enumerate(zip(objects, datasets, strict=True)):
        assert ds.StudyInstanceUID == src.StudyInstanceUID
        assert ds.SeriesInstanceUID != src.SeriesInstanceUID
        assert "research use" in str(ds.SeriesDescription)
        path = tmp / f"result{i}.dcm"
        path.write_bytes(raw)
        check = subprocess.run([require_tool("dciodvfy"), "-new", str(path)], capture_output=True, text=True)
        errors = [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]
        assert not errors, (str(ds.SOPClassUID), errors)
        if str(ds.SOPClassUID) == SR_CLASS:
            html = subprocess.run([require_tool("dsr2html"), str(path)], capture_output=True, text=True).stdout
            assert "Axillary" in html and "Probability of cancer" in html and " %" in html
            assert "research use" in html.lower()


def orthanc_objects(orthanc: OrthancServer) -> list[bytes]:
    """Read every instance back with orthanc-api-client."""
    client = OrthancApiClient(orthanc.url)
    return [client.instances.get_file(i) for i in client.instances.get_all_ids()]


def start_node(tmp: Path, cfg: Path, port: int) -> NodeProcess:
    return NodeProcess(cfg, port, tmp / "node.log").start()


@pytest.mark.parametrize("kind", ["dimse", "dicomweb", "orthanc", "folder"])
def test_cine_loop_comes_back_as_sr_and_heatmaps(kind: str, orthanc: OrthancServer, small_bundle: Path, tmp_path: Path) -> None:
    folder = tmp_path / "out"
    cfg, port, data = pipeline_config(tmp_path, small_bundle, destination_toml(kind, orthanc, folder))
    node = start_node(tmp_path, cfg, port)
    try:
        src = us_file(CINE)
        storescu(port, src)
        uid = source_uid(src)
        wait_states(data, [uid], {"dispatched", "failed"}, timeout=120)
        row = ledger_of(data).find(uid)
        assert row is not None and row["state"] == "dispatched", row
        if kind == "folder":
            objects = [p.read_bytes() for p in sorted(folder.rglob("*.dcm"))]
        else:
            objects = orthanc_objects(orthanc)
        check_results(objects, src, tmp_path)
    finally:
        node.stop()


def test_node_killed_before_classification_catches_up_after_restart(orthanc: OrthancServer, small_bundle: Path, tmp_path: Path) -> None:
    cfg, port, data = pipeline_config(tmp_path, small_bundle, destination_toml("dimse", orthanc), workers=0)
    node = start_node(tmp_path, cfg, port)
    loops = loop_copies(tmp_path / "loops", 3, "k")
    storescu(port, *loops)
    uids = [source_uid(p) for p in loops]
    node.kill()  # acknowledged, queued, never classified
    assert all(ledger_of(data).find(u)["state"] in ("received", "queued") for u in uids)  # type: ignore[index]
    cfg.write_text(cfg.read_text().replace("embedded_workers = 0", "embedded_workers = 1"))
    node.start()
    try:
        wait_states(data, uids, {"dispatched", "failed"}, timeout=180)
        assert all(ledger_of(data).find(u)["state"] == "dispatched" for u in uids)  # type: ignore[index]
        srs = [d for d in (dcmread(io.BytesIO(b), stop_before_pixels=True) for b in orthanc_objects(orthanc)) if str(d.SOPClassUID) == SR_CLASS]
        assert len(srs) == len(uids)
    finally:
        node.stop()


def test_non_ultrasound_and_single_frame_objects_are_skipped(orthanc: OrthancServer, small_bundle: Path, tmp_path: Path) -> None:
    cfg, port, data = pipeline_config(tmp_path, small_bundle, destination_toml("dimse", orthanc))
    node = start_node(tmp_path, cfg, port)
    try:
        single = us_file("US1_UNCR.dcm")  # Ultrasound Image, 1 frame
        sc = dcmread(single)
        sc.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        sc.file_meta.MediaStorageSOPClassUID = sc.SOPClassUID
        sc.SOPInstanceUID = generate_uid()
        sc.file_meta.MediaStorageSOPInstanceUID = sc.SOPInstanceUID
        sc_path = tmp_path / "sc.dcm"
        sc.save_as(sc_path, enforce_file_format=True)
        storescu(port, single, sc_path, flag="-xe")
        wait_states(data, [source_uid(single), str(sc.SOPInstanceUID)], {"skipped"}, timeout=30)
        status = subprocess.run([sys.executable, "-m", "node.cli", "status", "--config", str(cfg)], capture_output=True, text=True, cwd=ROOT)
        assert "fewer than model.min_frames" in status.stdout
        assert "Secondary Capture Image Storage is not an ultrasound object" in status.stdout
        assert orthanc.instances() == []
    finally:
        node.stop()
