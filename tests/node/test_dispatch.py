"""Dispatch to real destinations: Orthanc over C-STORE, STOW-RS and REST, a folder, a pynetdicom SCP.

Connection failures are real (a stopped Orthanc, a closed port); only the backoff ``sleep`` is
replaced, by a recorder that can bring the destination back between attempts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt

from node.config import Destination
from node.dispatch import (
    DeliveryError,
    backoff_delay,
    deliver,
    http_is_transient,
    send_to,
    status_is_success,
    status_is_transient,
)
from node.ledger import Ledger, NewInstance
from tests.helpers import free_port, us_file
from tests.orthanc import OrthancServer

SOURCE_UID = "1.2.826.0.1.3680043.8.498.1001"  # the received cine loop the results belong to
HTTP_KINDS = ("dicomweb", "orthanc")
NETWORK_KINDS = ("dimse", *HTTP_KINDS)


class Sleeper:
    """Records backoff delays instead of waiting; ``then(n)`` runs after the n-th wait."""

    def __init__(self, then: Callable[[int], None] | None = None) -> None:
        self.delays: list[float] = []
        self.then = then

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if self.then:
            self.then(len(self.delays))


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    led = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    led.add_instance(
        NewInstance(
            SOURCE_UID,
            "1.2.840.10008.5.1.4.1.1.3.1",
            None,
            None,
            ExplicitVRLittleEndian,
            "x",
            1,
            1,
            None,
            None,
        )
    )
    yield led
    led.close()


def result(seed: str, name: str = "US1_UNCR.dcm") -> Dataset:
    """A real ultrasound object under a new deterministic SOP Instance UID (as results have)."""
    ds = dcmread(us_file(name))
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[seed])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def destination(kind: str, server: OrthancServer | None = None, **kw: Any) -> Destination:
    port = server.dicom_port if server else free_port()  # no server: a port nobody listens on
    base = server.url if server else f"http://127.0.0.1:{port}"
    kinds: dict[str, dict[str, Any]] = {
        "dimse": {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": port},
        "dicomweb": {"url": f"{base}/dicom-web"},
        "orthanc": {"url": base},
    }
    where = kinds[kind]
    settings: dict[str, Any] = {"name": f"pacs-{kind}", "kind": kind, "timeout": 10.0, "backoff_seconds": 1.0}
    return Destination(**{**settings, **where, **kw})


def only_row(ledger: Ledger) -> dict[str, Any]:
    rows = ledger.deliveries_of(SOURCE_UID)
    assert len(rows) == 1, rows
    return rows[0]


@pytest.mark.parametrize("kind", NETWORK_KINDS)
def test_sent_twice_is_stored_once(kind: str, orthanc: OrthancServer, ledger: Ledger) -> None:
    ds = result(f"twice-{kind}")
    dest = destination(kind, orthanc)
    sleeper = Sleeper()
    assert deliver(dest, [ds], ledger=ledger, sop_instance_uid=SOURCE_UID, sleep=sleeper)
    assert deliver(dest, [ds], ledger=ledger, sop_instance_uid=SOURCE_UID, sleep=sleeper)

    assert orthanc.instances() == [ds.SOPInstanceUID]
    stored = dcmread(BytesIO(orthanc.file(ds.SOPInstanceUID)))
    assert stored.SOPClassUID == ds.SOPClassUID and stored.PixelData == ds.PixelData
    row = only_row(ledger)
    assert (row["destination"], row["result_uid"], row["state"], row["attempts"], row["last_error"]) == (
        dest.name,
        ds.SOPInstanceUID,
        "sent",
        2,
        None,
    )
    assert sleeper.delays == []


def test_folder_writes_by_uid_atomically_and_replaces(tmp_path: Path, ledger: Ledger) -> None:
    out = tmp_path / "out"
    out.mkdir()
    ds = result("folder")
    on_disk = us_file("OBXXXX1A_rle_2frame.dcm")  # a path is copied byte for byte
    dest = Destination(name="share", kind="folder", path=out)
    for _ in range(2):
        assert deliver(dest, [ds, on_disk], ledger=ledger, sop_instance_uid=SOURCE_UID, sleep=Sleeper())

    src = dcmread(on_disk, stop_before_pixels=True)
    expected = {
        Path(ds.StudyInstanceUID) / f"{ds.SOPInstanceUID}.dcm",
        Path(src.StudyInstanceUID) / f"{src.SOPInstanceUID}.dcm",
    }
    assert {p.relative_to(out) for p in out.rglob("*") if p.is_file()} == expected  # no temp files left
    written = dcmread(out / ds.StudyInstanceUID / f"{ds.SOPInstanceUID}.dcm")
    assert written.PixelData == ds.PixelData and written.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (out / src.StudyInstanceUID / f"{src.SOPInstanceUID}.dcm").read_bytes() == on_disk.read_bytes()
    rows = ledger.deliveries_of(SOURCE_UID)
    assert sorted((r["state"], r["attempts"]) for r in rows) == [("sent", 2), ("sent", 2)]


def test_unusable_folder_fails_at_once(tmp_path: Path, ledger: Ledger) -> None:
    not_a_dir = tmp_path / "results.txt"
    not_a_dir.write_text("a file where the folder should be")
    sleeper = Sleeper()
    dest = Destination(name="share", kind="folder", path=not_a_dir)
    ds = result("bad-folder")
    assert not deliver(dest, [ds], ledger=ledger, sop_instance_uid=SOURCE_UID, sleep=sleeper)
    row = only_row(ledger)
    assert (row["state"], row["attempts"], sleeper.delays) == ("failed", 1, [])
    assert "results.txt" in row["last_error"] and "not a directory" in row["last_error"]


@pytest.mark.parametrize("kind", NETWORK_KINDS)
def test_down_destination_is_retried_until_it_is_back(
    kind: str, orthanc: OrthancServer, ledger: Ledger
) -> None:
    ds = result(f"down-{kind}")
    dest = destination(kind, orthanc, max_attempts=5, backoff_seconds=1.5)
    orthanc.stop()
    seen: list[tuple[str, int, str]] = []

    def between_attempts(n: int) -> None:
        row = only_row(ledger)  # each failed attempt is in the ledger before the wait
        seen.append((row["state"], row["attempts"], row["last_error"]))
        if n == 2:
            orthanc.start()

    sleeper = Sleeper(between_attempts)
    assert deliver(dest, [ds], ledger=ledger, sop_instance_uid=SOURCE_UID, sleep=sleeper)

    assert sleeper.delays == [1.5, 3.0]
    assert [(s, a) for s, a, _ in seen] == [("pending", 1), ("pending", 2)]
    assert all("connect" in err for _, _, err in seen), seen
    row = only_row(ledger)
    assert (row["state"], row["attempts"], row["last_error"]) == ("sent", 3, None)
    assert orthanc.instances() == [ds.SOPInstanceUID]


@pytest.mark.parametrize("kind", NETWORK_KINDS)
def test_gives_up_after_max_attempts_with_capped_backoff(kind: str, ledger: Ledger) -> None:
    dest = destination(kind, None, max_attempts=4, backoff_seconds=1.0, backoff_max_seconds=3.0)
    sleeper = Sleeper()
    assert not deliver(
        dest, [result(f"gone-{kind}")], ledger=ledger, sop_instance_uid=SOURCE_UID, sleep=sleeper
    )
    assert sleeper.delays == [1.0, 2.0, 3.0]
    row = only_row(ledger)
    assert (row["state"], row["attempts"]) == ("failed", 4)
    assert "gave up after 4 attempt(s)" in row["last_error"] and "connect" in row["last_error"]


def test_wrong_called_ae_title_fails_after_one_attempt(orthanc: OrthancServer, ledger: Ledger) -> None:
    dest = destination("dimse", orthanc, ae_title="NOT_ORTHANC", max_attempts=5)
    with pytest.raises(DeliveryError) as err:
        send_to(dest, [result("wrong-ae")])
    assert not err.value.transient
    sleeper = Sleeper()
    assert not deliver(dest, [result("wrong-ae")], ledger=ledger, sop_instance_uid=SOURCE_UID, sleep=sleeper)
    row = only_row(ledger)
    assert (row["state"], row["attempts"], sleeper.delays) == ("failed", 1, [])
    assert "NOT_ORTHANC" in row["last_error"] and "permanently" in row["last_error"]
    assert orthanc.instances() == []


@pytest.mark.parametrize("kind", HTTP_KINDS)
def test_bad_credentials_fail_at_once_good_ones_store(
    kind: str, orthanc_auth: OrthancServer, ledger: Ledger
) -> None:
    bad = destination(kind, orthanc_auth, username="alice", password="not-her-password")
    sleeper = Sleeper()
    ds = result(f"auth-{kind}")
    assert not deliver(bad, [ds], ledger=ledger, sop_instance_uid=SOURCE_UID, sleep=sleeper)
    row = only_row(ledger)
    assert (row["state"], row["attempts"], sleeper.delays) == ("failed", 1, [])
    assert "401" in row["last_error"]
    assert orthanc_auth.instances() == []

    good = destination(kind, orthanc_auth, username="alice", password="wonderland")
    assert deliver(good, [ds], ledger=ledger, sop_instance_uid=SOURCE_UID, sleep=sleeper)
    assert orthanc_auth.instances() == [ds.SOPInstanceUID]
    assert only_row(ledger)["state"] == "sent"


def test_dimse_falls_back_to_explicit_le_and_reports_each_object(ledger: Ledger) -> None:
    """An SCP that takes US only in Explicit VR LE: RLE is decompressed, an SR is refused for good."""
    received: list[tuple[str, Dataset]] = []

    def on_store(event: Any) -> int:
        received.append((str(event.context.transfer_syntax), event.dataset))
        return 0x0000

    scp = AE("ELE_ONLY")
    scp.add_supported_context("1.2.840.10008.5.1.4.1.1.3.1", ExplicitVRLittleEndian)
    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert server is not None
    try:
        rle = result("rle", "OBXXXX1A_rle_2frame.dcm")
        sr = Dataset()
        sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR: not offered by this SCP
        sr.SOPInstanceUID = generate_uid(entropy_srcs=["sr"])
        sr.StudyInstanceUID = rle.StudyInstanceUID
        sr.Modality = "SR"
        dest = Destination(name="ele", kind="dimse", ae_title="ELE_ONLY", host="127.0.0.1", port=port)
        assert not deliver(dest, [rle, sr], ledger=ledger, sop_instance_uid=SOURCE_UID, sleep=Sleeper())
    finally:
        server.shutdown()

    assert [ts for ts, _ in received] == [ExplicitVRLittleEndian]
    expected = dcmread(us_file("OBXXXX1A_rle_2frame.dcm")).pixel_array
    got = received[0][1]
    got.file_meta = FileMetaDataset()
    got.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    assert (got.pixel_array == expected).all()
    rows = {r["result_uid"]: r for r in ledger.deliveries_of(SOURCE_UID)}
    assert (rows[rle.SOPInstanceUID]["state"], rows[rle.SOPInstanceUID]["attempts"]) == ("sent", 1)
    assert (rows[sr.SOPInstanceUID]["state"], rows[sr.SOPInstanceUID]["attempts"]) == ("failed", 1)
    assert "1.2.840.10008.5.1.4.1.1.88.11" in rows[sr.SOPInstanceUID]["last_error"]


def test_fault_classes_and_backoff() -> None:
    assert [status_is_transient(s) for s in (0xA700, 0xA7FF, 0x0110, 0xA900, 0xC000, 0x0122)] == [
        True,
        True,
        True,
        False,
        False,
        False,
    ]
    assert all(status_is_success(s) for s in (0x0000, 0xB000, 0xB007))
    assert [http_is_transient(c) for c in (500, 503, 429, 408, 400, 401, 403, 404, 409)] == [True] * 4 + [
        False
    ] * 5
    dest = Destination(name="d", kind="folder", path=Path("."), backoff_seconds=2, backoff_max_seconds=10)
    assert [backoff_delay(dest, n) for n in range(1, 6)] == [2, 4, 8, 10, 10]


def test_retry_listing_shows_unfinished_deliveries(ledger: Ledger) -> None:
    ledger.record_attempt(SOURCE_UID, "pacs", "1.2.3.1", "pending", "cannot connect")
    ledger.record_attempt(SOURCE_UID, "pacs", "1.2.3.2", "failed", "HTTP 401")
    ledger.record_attempt(SOURCE_UID, "share", "1.2.3.1", "sent")
    assert [
        (r["destination"], r["result_uid"], r["sop_instance_uid"]) for r in ledger.deliveries_for_retry()
    ] == [("pacs", "1.2.3.1", SOURCE_UID)]
    assert len(ledger.deliveries_for_retry("pacs", include_failed=True)) == 2
    assert ledger.delivery_counts() == {
        "pacs": {"pending": 1, "sent": 0, "failed": 1},
        "share": {"pending": 0, "sent": 1, "failed": 0},
    }
    with pytest.raises(ValueError, match="1.2.9.9"):
        ledger.record_attempt("1.2.9.9", "pacs", "1.2.3.1", "sent")
