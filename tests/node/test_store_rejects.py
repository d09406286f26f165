"""Bad objects get the fitting failure status, leave nothing in the spool, and the node keeps serving."""

from __future__ import annotations

from collections.abc import Iterator
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
    assert [p for p in spool.incoming.rglob("*") if p.is_file()] == []  # every edge's incoming/<edge>/


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
    assert "SOPInstanceUID (0000,1000): invalid UID '../../x" in rsp.ErrorComment  # the command's copy first
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


# -- validation before spooling (issue #11): exact status and Error Comment per case -------------
@pytest.fixture(scope="module")
def shared_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """One node for the validation cases (each case sends fresh UIDs): (port, data dir)."""
    tmp = tmp_path_factory.mktemp("shared")
    port, data = free_port(), tmp / "var"
    proc = NodeProcess(write_config(tmp / "c.toml", port=port, data_dir=data), port, tmp / "node.log").start()
    yield port, data
    proc.stop()


def assert_not_stored(data: Path, uid: str) -> None:
    spool = Spool(data)
    assert not spool.path_of(spool.relpath(uid)).exists()
    assert [p for p in spool.incoming.rglob("*") if p.is_file()] == []  # every edge's incoming/<edge>/


def encoded(ds: Dataset) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return buf.getvalue()


def send_raw(port: int, data: bytes, *, context: str, ts: str, command_class: str, instance: str) -> tuple[int | None, str]:
    """C-STORE ``data`` on a raw socket, the command's SOP class free to differ from the context."""
    from tests.hostile.wire import Wire, store_pdus

    w = Wire(port)
    try:
        ac = w.associate("US_ROOM1", [(1, context, [ts])], max_pdu=262144)
        assert ac is not None and ac.kind == 0x02, ac
        for p in store_pdus(data, command_class, instance):
            w.send(p)
        rsp = w.read_pdu()
        assert rsp is not None
        return rsp.status, rsp.comment
    finally:
        w.close()


def us_mf(**changes: object) -> Dataset:
    """The real 120-frame JPEG loop with ``changes`` applied (None deletes, fresh SOP Instance UID)."""
    from pydicom.uid import generate_uid

    ds = dcmread(us_file("color3d_jpeg_baseline.dcm"))
    ds.SOPInstanceUID = generate_uid()
    for kw, value in changes.items():
        if value is None:
            delattr(ds, kw)
        else:
            setattr(ds, kw, value)
    return ds


JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
LONG_UID = "1.2.840." + "1" * 73  # 81 characters: digits and dots, but over the 64 of PS3.5 9.1


@pytest.mark.parametrize(
    ("changes", "status", "comment"),
    [
        ({"StudyInstanceUID": LONG_UID}, 0xC000, "StudyInstanceUID (0020,000D): 81 chars, over 64 for a UID: '1.2.840.111"),
        ({"SeriesInstanceUID": "1.2.840.x"}, 0xC000, "SeriesInstanceUID (0020,000E): invalid UID '1.2.840.x'"),
        ({"FrameOfReferenceUID": "1.02.3"}, 0xC000, "FrameOfReferenceUID (0020,0052): invalid UID '1.02.3'"),
        ({"StudyInstanceUID": None}, 0xA900, "StudyInstanceUID (0020,000D) is missing"),
        ({"NumberOfFrames": ""}, 0xA900, "NumberOfFrames (0028,0008) is empty (Type 1 for Ultrasound Multi-frame Image Storage)"),
        ({"NumberOfFrames": None}, 0xA900, "NumberOfFrames (0028,0008) is missing (Type 1 for Ultrasound Multi-frame Image Storage)"),
        ({"NumberOfFrames": "1.5"}, 0xC000, "NumberOfFrames (0028,0008) = '1.5' is not an integer"),
        ({"NumberOfFrames": "121"}, 0xC000, "NumberOfFrames is 121 but the pixel data holds only 120 fragment(s)"),
        ({"NumberOfFrames": "10001"}, 0xA700, "NumberOfFrames (0028,0008) = 10001 exceeds max_frames = 10000"),
    ],
    ids=["study-81", "series-chars", "frame-of-reference", "study-missing", "frames-empty", "frames-missing", "frames-1.5", "frames-121", "frames-max"],
)
def test_validation_case(shared_node: tuple[int, Path], changes: dict[str, object], status: int, comment: str) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid values we mean to send
        ds = us_mf(**changes)
        data = encoded(ds)
    got, text = send_raw(shared_node[0], data, context=US_MF, ts=JPEG_BASELINE, command_class=US_MF, instance=str(ds.SOPInstanceUID))
    assert (got, text) == (status, comment[:64])  # Error Comment is LO: the first 64 characters
    assert_not_stored(shared_node[1], str(ds.SOPInstanceUID))


def test_referenced_uid_inside_a_sequence_is_checked(shared_node: tuple[int, Path]) -> None:
    ref = Dataset()
    ref.ReferencedSOPClassUID = US_MF
    ref.ReferencedSOPInstanceUID = "1.2.3.abc"
    ds = us_mf(ReferencedImageSequence=[ref])
    status, comment = send_raw(shared_node[0], encoded(ds), context=US_MF, ts=JPEG_BASELINE, command_class=US_MF, instance=str(ds.SOPInstanceUID))
    assert status == 0xC000
    assert comment == "ReferencedSOPInstanceUID (0008,1155): invalid UID '1.2.3.abc' in"  # LO: 64 chars
    assert_not_stored(shared_node[1], str(ds.SOPInstanceUID))


def test_command_sop_class_must_match_the_context(shared_node: tuple[int, Path]) -> None:
    ds = us_mf()
    status, comment = send_raw(shared_node[0], encoded(ds), context=US_MF, ts=JPEG_BASELINE, command_class=US_IMAGE, instance=str(ds.SOPInstanceUID))
    assert status == 0xA900
    assert comment == f"AffectedSOPClassUID {US_IMAGE} differs from context {US_MF}"[:64]
    assert_not_stored(shared_node[1], str(ds.SOPInstanceUID))


def test_jpeg_codestream_declared_as_h264_is_refused(shared_node: tuple[int, Path]) -> None:
    ds = us_mf()
    h264 = "1.2.840.10008.1.2.4.102"
    status, comment = send_raw(shared_node[0], encoded(ds), context=US_MF, ts=h264, command_class=US_MF, instance=str(ds.SOPInstanceUID))
    assert (status, comment) == (0xC000, f"PixelData frame 1 is JPEG, not H.264 ({h264})")
    assert_not_stored(shared_node[1], str(ds.SOPInstanceUID))


def test_native_ybr_full_422_loop_is_accepted(shared_node: tuple[int, Path], tmp_path: Path) -> None:
    # PS3.3 C.7.6.3.1.2: YBR_FULL_422 stores 2 samples per pixel; the old hand-made length wanted 3
    from pydicom.uid import generate_uid

    ds = dcmread(us_file("US1_UNCR.dcm"))  # native explicit VR LE, 480x640x3
    ds.SOPClassUID, ds.SOPInstanceUID = US_MF, generate_uid()
    ds.PhotometricInterpretation, ds.NumberOfFrames = "YBR_FULL_422", 4
    ds.PixelData = bytes(ds.Rows * ds.Columns * 2 * 4)
    status, comment = send_raw(shared_node[0], encoded(ds), context=US_MF, ts="1.2.840.10008.1.2.1", command_class=US_MF, instance=str(ds.SOPInstanceUID))
    assert status == 0x0000, comment
    from node.ledger import Ledger

    row = Ledger(f"sqlite:///{shared_node[1] / 'ledger.sqlite'}").find(str(ds.SOPInstanceUID))
    assert row is not None and row["frames"] == 4


def _trigger(data: Path, table: str, on: bool) -> None:
    """Make the node's real SQLite ledger refuse inserts into ``table`` (a real write failure)."""
    import sqlite3

    con = sqlite3.connect(data / "ledger.sqlite")
    with con:
        if on:
            con.execute(f"CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} BEGIN SELECT RAISE(ABORT, 'injected fault'); END")
        else:
            con.execute(f"DROP TRIGGER refuse_{table}")
    con.close()


def test_ledger_failure_answers_0110_and_keeps_nothing(node_proc: NodeProcess, node_env: tuple[Path, int, Path], tmp_path: Path) -> None:
    from node.ledger import Ledger

    data = node_env[2]
    path, ds = uncr_copy(tmp_path, "fresh.dcm", SOPInstanceUID="2.25.1234567890123456789")
    _trigger(data, "instances", True)
    rsp = send_file(node_proc.port, path, US_IMAGE)
    assert (rsp.Status, rsp.ErrorComment) == (0x0110, "ledger write failed; not stored")
    assert_nothing_left(data)
    _trigger(data, "instances", False)
    assert send_file(node_proc.port, path, US_IMAGE).Status == 0x0000  # the sender's retry succeeds
    assert Ledger(f"sqlite:///{data / 'ledger.sqlite'}").find("2.25.1234567890123456789") is not None


def test_unknown_caller_rejected_while_the_ledger_is_down(node_proc: NodeProcess, node_env: tuple[Path, int, Path]) -> None:
    _trigger(node_env[2], "associations", True)
    try:
        ae = AE(ae_title="INTRUDER")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", node_proc.port, ae_title="ALN_AI")
        assert assoc.is_rejected
        rj = assoc.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03)
        assert_serving(node_proc.port)  # a configured peer still gets its echo answered
    finally:
        _trigger(node_env[2], "associations", False)


def test_deflated_object_is_accepted(shared_node: tuple[int, Path], tmp_path: Path) -> None:
    from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

    from node.ledger import Ledger

    ds = dcmread(us_file("US1_UNCR.dcm"))
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = tmp_path / "deflated.dcm"
    ds.save_as(path, enforce_file_format=True)
    rsp = send_file(shared_node[0], path, US_IMAGE, DeflatedExplicitVRLittleEndian)
    assert rsp.Status == 0x0000
    row = Ledger(f"sqlite:///{shared_node[1] / 'ledger.sqlite'}").find(str(ds.SOPInstanceUID))
    assert row is not None and row["transfer_syntax_uid"] == DeflatedExplicitVRLittleEndian
    assert [p for p in Spool(shared_node[1]).incoming.rglob("*") if p.is_file()] == []


def test_instance_over_max_instance_mb_is_refused(tmp_path: Path) -> None:
    """The limit itself, in-process (sending 2 GiB through loopback to test the default is not a unit test)."""
    from node.errors import StoreRejected
    from node.receive.validate import Limits, check_received

    src = us_file("color3d_jpeg_baseline.dcm")  # 6 MB
    with pytest.raises(StoreRejected) as info:
        check_received(src, context_sop_class=US_MF, transfer_syntax=JPEG_BASELINE, affected_sop_instance=None,
                       limits=Limits(max_instance_bytes=2**20))
    assert info.value.status == 0xA700
    assert info.value.reason == f"instance is {src.stat().st_size} bytes, over max_instance_mb = 1"


def test_unknown_callers_never_take_the_reserved_peer_slots(tmp_path: Path) -> None:
    from node.config import NodeSection

    port = free_port()
    cfg = write_config(tmp_path / "c.toml", port=port, data_dir=tmp_path / "var")  # max_associations = 4
    cfg.write_text(cfg.read_text().replace("reject_unknown_callers = true", "reject_unknown_callers = false"))
    proc = NodeProcess(cfg, port, tmp_path / "node.log").start()
    held = []
    try:
        unknown_slots = 4 - NodeSection().reserved_peer_slots
        for i in range(unknown_slots + 1):
            ae = AE(ae_title=f"GUEST{i}")
            ae.add_requested_context("1.2.840.10008.1.1")
            held.append(ae.associate("127.0.0.1", port, ae_title="ALN_AI"))
        assert [a.is_established for a in held] == [True] * unknown_slots + [False]
        rj = held[-1].acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)
        assert_serving(port)  # a configured peer gets a reserved slot
    finally:
        for a in held:
            if a.is_established:
                a.release()
        proc.stop()
