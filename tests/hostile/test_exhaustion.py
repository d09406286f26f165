"""Exhaustion attacks against a node at the shipped defaults: silent sockets, huge PDUs, a deflate
bomb, interrupted transfers. Each test checks what an operator would notice: the modality still
gets in, memory stays bounded, nothing is left in incoming/, no association stays ``open``."""

from __future__ import annotations

import struct
import threading
import time
import zlib
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config

from node.config import NodeSection
from tests.helpers import us_file, wait_for
from tests.hostile.conftest import PEER, DefaultNode
from tests.hostile.wire import ABORT_RQ, EXPLICIT_LE, Wire, associate_rq, store_pdus

US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
DEFAULTS = NodeSection()


def echo(port: int, calling: str = PEER) -> int | None:
    ae = AE(ae_title=calling)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="ALN_AI")
    if not assoc.is_established:
        return None
    try:
        rsp = assoc.send_c_echo()
        return int(rsp.Status) if rsp else None
    finally:
        assoc.release()


def test_one_byte_connections_cannot_lock_out_a_peer(default_node: DefaultNode) -> None:
    hostile = []
    for i in range(20):
        w = Wire(default_node.port)
        # one byte, an unknown PDU type, a half header, a huge declared A-ASSOCIATE-RQ
        w.send([b"\x01", b"\x09\x00\x00\x00\x00\x10", b"\x01\x00\x00", b"\x01\x00\xff\xff\xff\xf0"][i % 4])
        hostile.append(w)
    start = time.monotonic()
    assert echo(default_node.port) == 0x0000
    assert time.monotonic() - start < 10.0, "a configured peer must get in within 10 s"
    limit = DEFAULTS.association_timeout + 2.0  # deadline plus the housekeeping tick and a loaded machine
    still_open = [w for w in hostile if not w.closed_by_peer(max(limit - (time.monotonic() - start), 0.1))]
    assert not still_open, f"{len(still_open)} unauthenticated sockets outlived the {DEFAULTS.association_timeout} s association timeout"
    for w in hostile:
        w.close()
    assert echo(default_node.port) == 0x0000


def test_pdu_longer_than_negotiated_is_aborted(default_node: DefaultNode) -> None:
    w = Wire(default_node.port)
    ac = w.associate(PEER, [(1, US_IMAGE, [EXPLICIT_LE])])
    assert ac is not None and ac.kind == 0x02
    declared = 6 * 2**20  # 6 MiB against the 256 KiB we announced
    w.send(struct.pack(">BBL", 0x04, 0, declared) + b"\0" * 4096)
    answer = w.read_pdu()
    assert answer is not None and answer.kind == 0x07, "expected an A-ABORT"
    assert answer.body[2:4] == b"\x02\x06"  # source: service provider; reason: invalid PDU parameter value
    assert w.closed_by_peer(5)
    w.close()
    wait_for(lambda: "open" not in default_node.ledger().association_summary(), 10, what="association row closed")
    assert default_node.alive()


def bomb(path: Path, inflated: int) -> Path:
    """A Deflated Explicit VR LE file of about 1 MB whose data set inflates to ``inflated`` bytes."""
    ds = dcmread(us_file("US1_UNCR.dcm"), stop_before_pixels=True)
    ds.SOPInstanceUID = generate_uid()
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    head = buf.getvalue() + struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, inflated)
    # Full flushes make each 16 MiB block of zeros compress to the same bytes: repeat them.
    co = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    first = co.compress(head) + co.flush(zlib.Z_FULL_FLUSH)
    block = co.compress(bytes(16 << 20)) + co.flush(zlib.Z_FULL_FLUSH)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    with open(path, "wb") as f:
        f.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(f, meta)
        f.write(first + block * (inflated // (16 << 20)) + co.flush())
    return path


def test_deflate_bomb_is_refused_with_bounded_memory(default_node: DefaultNode, tmp_path: Path) -> None:
    path = bomb(tmp_path / "bomb.dcm", 1 << 30)
    assert path.stat().st_size < 1_200_000
    peak = [default_node.status("VmRSS")]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak.append(default_node.status("VmRSS"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=PEER)
    ae.add_requested_context(US_IMAGE, DeflatedExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", default_node.port, ae_title="ALN_AI")
    assert assoc.is_established
    try:
        rsp = assoc.send_c_store(path)
    finally:
        assoc.release()
        done.set()
        sampler.join()
    assert rsp.Status == 0xA700
    assert f"max_inflated_mb = {DEFAULTS.max_inflated_mb}" in rsp.ErrorComment
    assert max(peak) < 400 * 1024, f"node RSS reached {max(peak) // 1024} MB"
    assert default_node.status("VmHWM") < 400 * 1024
    assert default_node.incoming() == []


def test_interrupted_transfers_leave_nothing_in_incoming(default_node: DefaultNode) -> None:
    src = us_file("US1_UNCR.dcm")
    ds = dcmread(src)
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    pdus = store_pdus(buf.getvalue(), US_IMAGE, str(ds.SOPInstanceUID))
    for how in ["abort", "reset", "close", "abort", "reset", "close"]:
        w = Wire(default_node.port)
        ac = w.associate(PEER, [(1, US_IMAGE, [EXPLICIT_LE])])
        assert ac is not None and ac.kind == 0x02
        for p in pdus[: len(pdus) // 2]:
            w.send(p)
        wait_for(lambda: len(default_node.incoming()) == 1, 10, what="the partial data set in incoming/")
        if how == "abort":
            w.send(ABORT_RQ)
            w.close()
        elif how == "reset":
            w.reset()
        else:
            w.close()
    # removed at once on abort/close; the periodic sweep (DIMSE timeout) is the fallback
    wait_for(lambda: default_node.incoming() == [], DEFAULTS.dimse_timeout, what="incoming/ to be empty")
    wait_for(lambda: "open" not in default_node.ledger().association_summary(), 10, what="association rows closed")
    assert default_node.ledger().find(str(ds.SOPInstanceUID)) is None
    assert echo(default_node.port) == 0x0000


def test_wrong_application_context_and_no_contexts_are_rejected(default_node: DefaultNode) -> None:
    w = Wire(default_node.port)
    w.send(associate_rq(PEER, app_context="1.2.3.4"))
    rj = w.read_pdu()
    assert rj is not None and rj.kind == 0x03 and rj.body[1:4] == b"\x01\x01\x02"
    w.close()
    w = Wire(default_node.port)
    w.send(associate_rq(PEER, contexts=[]))
    rj = w.read_pdu()
    assert rj is not None and rj.kind == 0x03 and rj.body[1:4] == b"\x01\x01\x01"
    w.close()


def test_sweep_removes_temp_files_older_than_the_dimse_timeout(tmp_path: Path) -> None:
    import os

    from node.config import load_config
    from node.ledger import Ledger
    from node.receive.scp import Receiver
    from node.spool import Spool

    settings = load_config(None, storage={"data_dir": str(tmp_path)})
    spool = Spool(tmp_path)
    spool.prepare()
    receiver = Receiver(settings, spool, Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}"))
    old, fresh = spool.incoming / "rx-old.dcm", spool.incoming / "rx-fresh.dcm"
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    past = time.time() - settings.node.dimse_timeout - 1
    os.utime(old, (past, past))
    assert receiver.sweep_incoming(force=True) == 1
    assert sorted(p.name for p in spool.incoming.iterdir()) == ["rx-fresh.dcm"]
