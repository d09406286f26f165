"""A cine loop pushed by storescu comes back to a real Orthanc as an SR and Grad-CAM heatmaps."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from orthanc_api_client import OrthancApiClient
from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.e2e.support import destination_toml, ledger_of, pipeline_config, source_uid, storescu, wait_states
from tests.helpers import ROOT, NodeProcess, loop_copies, require_tool, us_file, wait_for
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


def test_redis_mode_with_separate_worker_survives_worker_kill(orthanc: OrthancServer, small_bundle: Path, redis_url: str, tmp_path: Path) -> None:
    cfg, port, data = pipeline_config(tmp_path, small_bundle, destination_toml("dimse", orthanc), broker=redis_url, visibility=8)
    node = start_node(tmp_path, cfg, port)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    worker_cmd = [sys.executable, "-m", "node.cli", "worker", "--allow-root", "--config", str(cfg), "--queues", "gpu,io", "--concurrency", "1"]
    log1 = open(tmp_path / "worker1.log", "wb")  # noqa: SIM115
    first = subprocess.Popen(worker_cmd, stdout=log1, stderr=log1, cwd=ROOT, env=env, start_new_session=True)
    second = None
    try:
        loops = loop_copies(tmp_path / "loops", 3, "r")
        storescu(port, *loops)
        uids = [source_uid(p) for p in loops]
        # kill the whole worker (main process and pool) while it classifies
        wait_for(lambda: b"alnnode.classify" in (tmp_path / "worker1.log").read_bytes(), 120, what="classification to start")
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
        log2 = open(tmp_path / "worker2.log", "wb")  # noqa: SIM115
        second = subprocess.Popen(worker_cmd, stdout=log2, stderr=log2, cwd=ROOT, env=env, start_new_session=True)
        wait_states(data, uids, {"dispatched", "failed"}, timeout=240)
        ledger = ledger_of(data)
        assert all(ledger.find(u)["state"] == "dispatched" for u in uids)  # type: ignore[index]
        srs = [d for d in (dcmread(io.BytesIO(b), stop_before_pixels=True) for b in orthanc_objects(orthanc)) if str(d.SOPClassUID) == SR_CLASS]
        assert len(srs) == len(uids), "exactly one SR per loop"
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
        node.stop()


def test_destination_down_then_back_delivers_everything(orthanc: OrthancServer, small_bundle: Path, tmp_path: Path) -> None:
    orthanc.stop()
    cfg, port, data = pipeline_config(tmp_path, small_bundle, destination_toml("dimse", orthanc, attempts=12))
    node = start_node(tmp_path, cfg, port)
    try:
        loops = loop_copies(tmp_path / "loops", 2, "d")
        storescu(port, *loops)
        uids = [source_uid(p) for p in loops]
        ledger = ledger_of(data)
        wait_for(lambda: any(d["attempts"] >= 1 for u in uids for d in ledger.deliveries_of(u)), 120, what="a failed delivery attempt")
        orthanc.start()
        wait_states(data, uids, {"dispatched", "failed"}, timeout=120)
        assert all(ledger.find(u)["state"] == "dispatched" for u in uids)  # type: ignore[index]
        assert len(orthanc.instances()) == 3 * len(uids)
    finally:
        node.stop()


def test_wrong_destination_ae_fails_then_retry_delivers(orthanc: OrthancServer, small_bundle: Path, tmp_path: Path) -> None:
    cfg, port, data = pipeline_config(tmp_path, small_bundle, destination_toml("dimse", orthanc, ae="WRONG_AE", attempts=3))
    node = start_node(tmp_path, cfg, port)
    try:
        src = us_file(CINE)
        storescu(port, src)
        uid = source_uid(src)
        wait_states(data, [uid], {"dispatched", "failed"}, timeout=120)
        row = ledger_of(data).find(uid)
        assert row is not None and row["state"] == "failed" and row["stage"] == "dispatch"
        assert "WRONG_AE" in row["reason"]
        status = subprocess.run([sys.executable, "-m", "node.cli", "status", "--config", str(cfg)], capture_output=True, text=True, cwd=ROOT)
        assert "WRONG_AE" in status.stdout
    finally:
        node.stop()
    cfg.write_text(cfg.read_text().replace('ae_title = "WRONG_AE"', 'ae_title = "ORTHANC"'))
    retry = subprocess.run([sys.executable, "-m", "node.cli", "retry", "--failed", "--config", str(cfg)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert retry.returncode == 0, retry.stdout + retry.stderr
    assert ledger_of(data).find(uid)["state"] == "dispatched"  # type: ignore[index]
    check_results(orthanc_objects(orthanc), src, tmp_path)


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
