"""Nothing acknowledged is lost: SIGKILL during a storescu run, restart, every 0x0000 is kept."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pydicom import dcmread

from node.ledger import Ledger
from node.spool import Spool
from tests.helpers import NodeProcess, loop_copies, require_tool, wait_for


def acknowledged(log: str) -> list[Path]:
    """Files storescu got a Success response for, from its -v log."""
    done, current = [], None
    for line in log.splitlines():
        if line.startswith("I: Sending file: "):
            current = Path(line.removeprefix("I: Sending file: ").strip())
        elif "Received Store Response (Success)" in line and current is not None:
            done.append(current)
            current = None
    return done


def test_sigkill_during_ingest_loses_nothing_acknowledged(node_proc: NodeProcess, node_env: tuple[Path, int, Path], tmp_path: Path) -> None:
    files = loop_copies(tmp_path / "loops", 40, "loop")
    exe = require_tool("storescu")
    log_path = tmp_path / "storescu.log"
    with open(log_path, "w") as log:
        sender = subprocess.Popen(
            [exe, "-v", "-xy", "-aet", "US_ROOM1", "-aec", "ALN_AI", "127.0.0.1", str(node_proc.port), *map(str, files)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        wait_for(lambda: len(acknowledged(log_path.read_text())) >= 5, 60, what="five acknowledged stores")
        node_proc.kill()
        sender.wait(60)
    acked = acknowledged(log_path.read_text())
    assert 5 <= len(acked) < len(files), "the kill must land in the middle of the run"

    node_proc.start()  # restart on the same data dir
    _, _, data = node_env
    spool = Spool(data)
    ledger = Ledger(f"sqlite:///{data / 'ledger.sqlite'}")
    for path in acked:
        uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        row = ledger.find(uid)
        assert row is not None, f"{path.name} was acknowledged but is not in the ledger"
        spooled = spool.path_of(row["spool_path"])
        assert spooled.exists() and dcmread(spooled).PixelData == dcmread(path).PixelData
    assert [p for p in spool.incoming.rglob("*") if p.is_file()] == [], "temp debris left after restart"
    assert "interrupted" in ledger.association_summary()


def test_hostile_study_uid_refused_and_postgres_node_restarts(postgres_url: str, tmp_path: Path) -> None:
    """An 81-character Study UID once reached the spool and broke the PostgreSQL ledger and the restart."""
    import warnings

    from pydicom.uid import generate_uid

    from tests.helpers import free_port, us_file, write_config
    from tests.node.test_store_rejects import LONG_UID, US_IMAGE, encoded, send_file, send_raw

    port, data = free_port(), tmp_path / "var"
    cfg = write_config(tmp_path / "c.toml", port=port, data_dir=data, extra=f'ledger_url = "{postgres_url}"')
    node = NodeProcess(cfg, port, tmp_path / "node.log").start()
    hostile = dcmread(us_file("US1_UNCR.dcm"))
    hostile.SOPInstanceUID = generate_uid()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hostile.StudyInstanceUID = LONG_UID
        status, comment = send_raw(port, encoded(hostile), context=US_IMAGE, ts="1.2.840.10008.1.2.1", command_class=US_IMAGE, instance=str(hostile.SOPInstanceUID))
    assert status == 0xC000 and comment.startswith("StudyInstanceUID (0020,000D): 81 chars")
    good = tmp_path / "good.dcm"
    ds = dcmread(us_file("US1_UNCR.dcm"))
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(good, enforce_file_format=True)
    assert send_file(port, good, US_IMAGE).Status == 0x0000
    node.stop()

    # What an older node left behind: the hostile object spooled without a ledger row, and junk.
    spool = Spool(data)
    planted = spool.path_of(spool.relpath(str(hostile.SOPInstanceUID)))
    planted.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hostile.save_as(planted, enforce_file_format=True)
    junk = spool.path_of(spool.relpath("2.25.42"))
    junk.parent.mkdir(parents=True, exist_ok=True)
    junk.write_bytes(b"not DICOM at all")

    node.start()  # asserts the node is up and listening
    try:
        quarantined = sorted(p.name for p in (data / "quarantine").iterdir())
        assert quarantined == sorted([planted.name, junk.name])
        assert spool.iter_relpaths() == [spool.relpath(str(ds.SOPInstanceUID))]
        assert "quarantined" in (tmp_path / "node.log").read_text()
        ledger = Ledger(postgres_url)
        assert ledger.find(str(ds.SOPInstanceUID)) is not None
        assert ledger.find(str(hostile.SOPInstanceUID)) is None
        assert send_file(port, good, US_IMAGE).Status == 0x0000  # duplicate, acknowledged
        # Calling AE titles PostgreSQL could not store (NUL, control characters): pynetdicom aborts
        # the undecodable ones, anything else is made printable before any ledger write.
        from tests.hostile.wire import Wire

        for calling in ("EV\x00I\x07L", "UNKNOWN~{}"):
            w = Wire(port)
            answer = w.associate(calling)
            w.close()
            assert answer is not None and answer.kind in (0x03, 0x07)
        assert Ledger(postgres_url).association_summary().get("rejected", 0) >= 1
        assert node.proc is not None and node.proc.poll() is None
    finally:
        node.stop()
