"""Bad objects get the fitting failure status, leave nothing in the spool, and the node keeps serving."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config

from node.spool import Spool
from tests.helpers import NodeProcess, free_port, us_file, write_config

US_MF = "1.2.840.10008.5.1.4.1.1.3.1"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"


def send_file(port: int, path: Path, sop_class: str, ts: str = ExplicitVRLittleEndian) -> Dataset:
    """C-STORE the file's data set bytes as they are (chunked send), under the given context."""
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="US_ROOM1")
    ae.add_requested_context(sop_class, ts)
    assoc = ae.associate("127.0.0.1", port, ae_title="ALN_AI")
    assert assoc.is_established
    try:
        return assoc.send_c_store(path)
    finally:
        assoc.release()


def uncr_copy(tmp: Path, name: str, **changes: object) -> tuple[Path, Dataset]:
    ds = dcmread(us_file("US1_UNCR.dcm"))
    for kw, value in changes.items():
        if value is None:
            delattr(ds, kw)
        else:
            setattr(ds, kw, value)
    path = tmp / name
    ds.save_as(path, enforce_file_format=True)
    return path, ds


def assert_nothing_left(data: Path) -> None:
    spool = Spool(data)
    assert spool.iter_relpaths() == []
    assert list(spool.incoming.iterdir()) == []


def assert_serving(port: int) -> None:
    ae = AE(ae_title="US_ROOM1")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="ALN_AI")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assoc.release()


def test_short_pixel_data_is_refused(node_proc: NodeProcess, node_env: tuple[Path, int, Path], tmp_path: Path) -> None:
    ds = dcmread(us_file("US1_UNCR.dcm"))
    path, _ = uncr_copy(tmp_path, "short.dcm", PixelData=ds.PixelData[: len(ds.PixelData) // 2])
    rsp = send_file(node_proc.port, path, US_IMAGE)
    assert rsp.Status & 0xF000 == 0xC000
    assert "pixel data holds" in rsp.ErrorComment
    assert_nothing_left(node_env[2])
    assert_serving(node_proc.port)


def test_truncated_file_is_refused(node_proc: NodeProcess, node_env: tuple[Path, int, Path], tmp_path: Path) -> None:
    src = us_file("US1_UNCR.dcm")
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size - 100_000])
    rsp = send_file(node_proc.port, cut, US_IMAGE)
    assert rsp.Status & 0xF000 == 0xC000
    assert_nothing_left(node_env[2])
    assert_serving(node_proc.port)


def test_truncated_jpeg_fragments_are_refused(node_proc: NodeProcess, node_env: tuple[Path, int, Path], tmp_path: Path) -> None:
    src = us_file("color3d_jpeg_baseline.dcm")
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(src.read_bytes()[:3_000_000])
    rsp = send_file(node_proc.port, cut, US_MF, "1.2.840.10008.1.2.4.50")
    assert rsp.Status & 0xF000 == 0xC000, rsp
    assert_nothing_left(node_env[2])
    assert_serving(node_proc.port)


def test_sop_class_disagreeing_with_context_is_refused(node_proc: NodeProcess, node_env: tuple[Path, int, Path], tmp_path: Path) -> None:
    path, _ = uncr_copy(tmp_path, "mismatch.dcm")
    # file meta (hence the context) says multi-frame, the data set says US Image; same UID length
    raw = path.read_bytes()
    path.write_bytes(raw.replace(US_IMAGE.encode(), US_MF.encode(), 1))
    rsp = send_file(node_proc.port, path, US_MF)
    assert rsp.Status == 0xA900
    assert rsp.ErrorComment.startswith("SOP Class UID mismatch: data set 1.2.840.10008.5.1.4.1.1.6.1")
    assert_nothing_left(node_env[2])
    assert_serving(node_proc.port)


def test_non_uid_sop_instance_uid_is_refused(node_proc: NodeProcess, node_env: tuple[Path, int, Path], tmp_path: Path) -> None:
    path, _ = uncr_copy(tmp_path, "evil.dcm")
    raw = path.read_bytes()
    uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID).encode()
    evil = b"../../x".ljust(len(uid), b"/")  # same length: keep the encoding valid
    path.write_bytes(raw.replace(uid, evil))
    rsp = send_file(node_proc.port, path, US_IMAGE)
    assert rsp.Status & 0xF000 == 0xC000
    assert "not a valid UID" in rsp.ErrorComment
    assert_nothing_left(node_env[2])
    assert not list(node_env[2].rglob("x"))
    assert_serving(node_proc.port)


def test_missing_pixel_data_is_refused(node_proc: NodeProcess, node_env: tuple[Path, int, Path], tmp_path: Path) -> None:
    path, _ = uncr_copy(tmp_path, "nopixels.dcm", PixelData=None)
    rsp = send_file(node_proc.port, path, US_IMAGE)
    assert rsp.Status == 0xA900
    assert "Pixel Data" in rsp.ErrorComment
    assert_nothing_left(node_env[2])


def test_low_disk_answers_out_of_resources(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "var"
    cfg = write_config(tmp_path / "c.toml", port=port, data_dir=data)
    cfg.write_text(cfg.read_text().replace("min_free_mb = 1", "min_free_mb = 1000000000"))
    proc = NodeProcess(cfg, port, tmp_path / "node.log").start()
    try:
        rsp = send_file(port, us_file("US1_UNCR.dcm"), US_IMAGE)
        assert rsp.Status == 0xA700
        assert "free disk" in rsp.ErrorComment
        assert_nothing_left(data)
    finally:
        proc.stop()


@pytest.mark.parametrize("n", [1])
def test_too_many_associations_rejected_transiently(tmp_path: Path, n: int) -> None:
    port = free_port()
    data = tmp_path / "var"
    cfg = write_config(tmp_path / "c.toml", port=port, data_dir=data)
    cfg.write_text(cfg.read_text().replace("max_associations = 4", f"max_associations = {n}"))
    proc = NodeProcess(cfg, port, tmp_path / "node.log").start()
    held = []
    try:
        for _ in range(n):
            ae = AE(ae_title="US_ROOM1")
            ae.add_requested_context("1.2.840.10008.1.1")
            held.append(ae.associate("127.0.0.1", port, ae_title="ALN_AI"))
            assert held[-1].is_established
        ae = AE(ae_title="US_ROOM1")
        ae.add_requested_context("1.2.840.10008.1.1")
        extra = ae.associate("127.0.0.1", port, ae_title="ALN_AI")
        assert extra.is_rejected
        rj = extra.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)  # transient, local limit exceeded
    finally:
        for a in held:
            a.release()
        proc.stop()
