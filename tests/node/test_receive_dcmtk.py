"""The listener against real DCMTK clients: echo, store of every real US file, association policy."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.filereader import read_preamble

from node.ledger import Ledger
from node.spool import Spool
from tests.helpers import US_FILES, NodeProcess, free_port, port_open, require_tool, us_file, wait_for


def dataset_bytes(path: Path) -> bytes:
    """The encoded data set of a Part 10 file, without preamble and file meta group."""
    with open(path, "rb") as fp:
        read_preamble(fp, False)
        from pydicom.filereader import _read_file_meta_info

        _read_file_meta_info(fp)
        return fp.read()


def storescu(port: int, *files: Path, flag: str = "", calling: str = "STORESCU", called: str = "ALN_AI") -> subprocess.CompletedProcess[str]:
    exe = require_tool("storescu")
    args = [exe, "-v", "-aet", calling, "-aec", called, *([flag] if flag else []), "127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def echoscu(port: int, calling: str = "ECHOSCU", called: str = "ALN_AI") -> subprocess.CompletedProcess[str]:
    exe = require_tool("echoscu")
    return subprocess.run([exe, "-v", "-aet", calling, "-aec", called, "127.0.0.1", str(port)], capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def reference_scp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """DCMTK storescp in bit-preserving mode (+B): the bytes storescu really put on the wire."""
    exe = require_tool("storescp")
    out = tmp_path_factory.mktemp("storescp")
    port = free_port()
    proc = subprocess.Popen([exe, "+xa", "+B", "-od", str(out), "-aet", "ALN_AI", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: port_open(port), 20, what="storescp")
    yield port, out
    proc.terminate()
    proc.wait(10)


def received_by(folder: Path, uid: str) -> Path:
    # Some pydicom-data files share a UID: take the newest copy.
    for f in sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime_ns, reverse=True):
        if str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) == uid:
            return f
    raise AssertionError(f"storescp did not receive {uid}")


def test_echoscu_succeeds(node_proc: NodeProcess) -> None:
    out = echoscu(node_proc.port)
    assert out.returncode == 0, out.stderr
    assert "Received Echo Response (Success)" in out.stdout + out.stderr


@pytest.mark.parametrize("name", sorted(US_FILES))
def test_storescu_delivers_real_us_file_byte_for_byte(
    node_proc: NodeProcess, node_env: tuple[Path, int, Path], reference_scp: tuple[int, Path], name: str
) -> None:
    src = us_file(name)
    out = storescu(node_proc.port, src, flag=US_FILES[name])
    log = out.stdout + out.stderr
    assert "Received Store Response (Success)" in log, log
    assert "E:" not in log, log
    _, _, data = node_env
    uid = str(dcmread(src, stop_before_pixels=True).SOPInstanceUID)
    spool = Spool(data)
    spooled = spool.path_of(spool.relpath(uid))
    assert spooled.exists()
    assert uid not in str(spooled)
    original = dcmread(src, stop_before_pixels=True)
    assert str(dcmread(spooled, stop_before_pixels=True).file_meta.TransferSyntaxUID) == str(original.file_meta.TransferSyntaxUID)
    # The spooled data set is exactly what storescu sent (DCMTK's bit-preserving storescp as witness)
    # and holds the same elements and pixel data bytes as the source file.
    ref = storescu(reference_scp[0], src, flag=US_FILES[name])
    assert "Received Store Response (Success)" in ref.stdout + ref.stderr
    assert dataset_bytes(spooled) == dataset_bytes(received_by(reference_scp[1], uid))
    got, want = dcmread(spooled), dcmread(src)
    assert got.PixelData == want.PixelData
    for kw in ("SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns", "PhotometricInterpretation"):
        assert got.get(kw) == want.get(kw), kw
    row = Ledger(f"sqlite:///{data / 'ledger.sqlite'}").find(uid)
    assert row is not None and row["state"] == "skipped"  # stored; no model configured in this test
    assert row["transfer_syntax_uid"] == str(original.file_meta.TransferSyntaxUID)


def test_second_copy_is_acknowledged_as_duplicate(node_proc: NodeProcess, node_env: tuple[Path, int, Path]) -> None:
    src = us_file("US1_UNCR.dcm")
    for _ in range(2):
        out = storescu(node_proc.port, src, flag="-xe")
        assert "Received Store Response (Success)" in out.stdout + out.stderr
    _, _, data = node_env
    uid = str(dcmread(src, stop_before_pixels=True).SOPInstanceUID)
    row = Ledger(f"sqlite:///{data / 'ledger.sqlite'}").find(uid)
    assert row is not None and row["duplicates"] == 1
    assert len(Spool(data).iter_relpaths()) == 1


def test_wrong_called_ae_is_rejected(node_proc: NodeProcess) -> None:
    out = echoscu(node_proc.port, called="NOT_US")
    assert out.returncode != 0
    assert "Called AE Title Not Recognized" in out.stdout + out.stderr


def test_unknown_calling_ae_is_rejected(node_proc: NodeProcess, node_env: tuple[Path, int, Path]) -> None:
    out = storescu(node_proc.port, us_file("US1_UNCR.dcm"), flag="-xe", calling="INTRUDER")
    assert "Calling AE Title Not Recognized" in out.stdout + out.stderr
    _, _, data = node_env
    assert Spool(data).iter_relpaths() == []
    summary = Ledger(f"sqlite:///{data / 'ledger.sqlite'}").association_summary()
    assert summary.get("rejected") == 1
    # still serving
    assert echoscu(node_proc.port).returncode == 0
