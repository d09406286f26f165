"""STOW-RS into the node (PS3.18 10.5) with the real ``dicomweb-client``: the C-STORE acceptance, the
standard's statuses and response body, limits, and durability across a SIGKILL."""

from __future__ import annotations

import socket
from pathlib import Path

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset

from node.spool import Spool
from tests.dicomweb.conftest import TOKENS, HttpNode
from tests.helpers import loop_copies, wait_for

STATUS_CANNOT_UNDERSTAND = 0xC000


def client(node: HttpNode, role: str = "modality") -> DICOMwebClient:
    return DICOMwebClient(node.dicomweb, headers={"Authorization": f"Bearer {TOKENS[role]}"})


def multipart(*parts: bytes, boundary: str = "alnnodetestboundary") -> tuple[bytes, str]:
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in parts
    )
    return (
        body + f"--{boundary}--\r\n".encode(),
        f'multipart/related; type="application/dicom"; boundary={boundary}',
    )


def spool_files(data: Path) -> list[str]:
    return Spool(data).iter_relpaths()


def incoming_empty(data: Path) -> bool:
    return not any(p.is_file() for p in (data / "incoming").rglob("*"))  # every edge's incoming/<edge>/


def test_stow_statuses_limits_and_sigkill(http_node: HttpNode, tmp_path: Path) -> None:
    good, second, third = loop_copies(tmp_path / "in", 3, "stow", name="OBXXXX1A_rle_2frame.dcm")
    # 200: dicomweb-client's store_instances (multipart/related; type="application/dicom")
    ds = dcmread(good)
    response = client(http_node).store_instances([ds])
    assert response.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert response.ReferencedSOPSequence[0].RetrieveURL.endswith(
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    )
    assert "FailedSOPSequence" not in response
    assert len(spool_files(http_node.data)) == 1

    # 202: one good part and one truncated part -> exactly one FailedSOPSequence item, nothing of the bad part kept
    raw = second.read_bytes()
    truncated = third.read_bytes()[: len(raw) // 2]
    body, ctype = multipart(raw, truncated)
    s = http_node.session("modality")
    r = s.post(
        f"{http_node.dicomweb}/studies",
        data=body,
        headers={"Content-Type": ctype, "Accept": "application/dicom+json"},
        timeout=60,
    )
    assert r.status_code == 202, r.text
    reply = Dataset.from_json(r.json())
    assert len(reply.FailedSOPSequence) == 1 and len(reply.ReferencedSOPSequence) == 1
    assert reply.FailedSOPSequence[0].FailureReason == STATUS_CANNOT_UNDERSTAND
    assert "0xC000" in r.headers["warning"]  # the reason in words (PS3.18 8.6.3), no patient data
    assert (
        reply.FailedSOPSequence[0].ReferencedSOPInstanceUID
        == dcmread(third, stop_before_pixels=True).SOPInstanceUID
    )
    assert (
        reply.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        == dcmread(second, stop_before_pixels=True).SOPInstanceUID
    )
    assert len(spool_files(http_node.data)) == 2 and incoming_empty(http_node.data)

    # 409: every part bad (truncated, not DICOM at all)
    body, ctype = multipart(truncated, b"not dicom at all")
    r = s.post(f"{http_node.dicomweb}/studies", data=body, headers={"Content-Type": ctype}, timeout=60)
    assert r.status_code == 409 and len(Dataset.from_json(r.json()).FailedSOPSequence) == 2
    # an instance of another study than the target one
    body, ctype = multipart(third.read_bytes())
    r = s.post(
        f"{http_node.dicomweb}/studies/1.2.3.4", data=body, headers={"Content-Type": ctype}, timeout=60
    )
    assert r.status_code == 409 and Dataset.from_json(r.json()).FailedSOPSequence[0].FailureReason == 0xA900

    # 415 other media types; 400 malformed
    r = s.post(
        f"{http_node.dicomweb}/studies",
        data=third.read_bytes(),
        headers={"Content-Type": "application/dicom"},
        timeout=60,
    )
    assert r.status_code == 415
    r = s.post(
        f"{http_node.dicomweb}/studies",
        data=body,
        headers={"Content-Type": ctype.replace("application/dicom", "application/dicom+xml")},
        timeout=60,
    )
    assert r.status_code == 415
    r = s.post(f"{http_node.dicomweb}/studies", data=body[:-30], headers={"Content-Type": ctype}, timeout=60)
    assert r.status_code == 400 and "closing boundary" in r.json()["detail"]
    assert len(spool_files(http_node.data)) == 2 and incoming_empty(http_node.data)

    # roles: a viewer cannot store, nobody anonymous
    assert (
        requests.post(
            f"{http_node.dicomweb}/studies", data=body, headers={"Content-Type": ctype}, timeout=30
        ).status_code
        == 401
    )
    assert (
        http_node.session("viewer")
        .post(f"{http_node.dicomweb}/studies", data=body, headers={"Content-Type": ctype}, timeout=30)
        .status_code
        == 403
    )

    # a body over max_request_mb (the shipped 4096) is refused from its Content-Length, before anything is read
    with socket.create_connection(("127.0.0.1", http_node.http_port), timeout=30) as sock:
        sock.sendall(
            (f"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKENS['modality']}\r\n"
             f"Content-Type: {ctype}\r\nContent-Length: {5 * 2**30}\r\n\r\n").encode() + body[:1000]
        )  # fmt: skip
        head = sock.recv(65536).split(b"\r\n", 1)[0]
    assert b" 413 " in head, head
    assert len(spool_files(http_node.data)) == 2 and incoming_empty(http_node.data)

    # SIGKILL right after a 200: the instance is in the spool and the ledger after a restart
    body, ctype = multipart(third.read_bytes())
    r = s.post(f"{http_node.dicomweb}/studies", data=body, headers={"Content-Type": ctype}, timeout=60)
    assert r.status_code == 200
    http_node.proc.kill()
    http_node.proc.start()
    uid = dcmread(third, stop_before_pixels=True).SOPInstanceUID
    from node.ledger import Ledger

    ledger = Ledger(f"sqlite:///{http_node.data / 'ledger.sqlite'}")
    try:
        row = ledger.find(uid)
        assert row is not None
        assert Spool(http_node.data).path_of(row["spool_path"]).read_bytes() == third.read_bytes()
    finally:
        ledger.close()
    wait_for(lambda: len(spool_files(http_node.data)) == 3, 10, what="three spooled instances")


def test_stow_compressed_bodies(http_node: HttpNode, tmp_path: Path) -> None:
    import gzip
    import zlib

    (loop,) = loop_copies(tmp_path / "in", 1, "gz", name="OBXXXX1A_rle_2frame.dcm")
    body, ctype = multipart(loop.read_bytes())
    s = http_node.session("modality")
    r = s.post(
        f"{http_node.dicomweb}/studies",
        data=gzip.compress(body),
        headers={"Content-Type": ctype, "Content-Encoding": "gzip"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    # a bomb: 64 MiB of zeros in ~64 KB of gzip is refused after about 1 MiB, nothing stored
    bomb_body, _ = multipart(b"\x00" * (64 * 2**20))
    r = s.post(
        f"{http_node.dicomweb}/studies",
        data=gzip.compress(bomb_body, 9),
        headers={"Content-Type": ctype, "Content-Encoding": "gzip"},
        timeout=60,
    )
    assert r.status_code == 413 and "bomb" in r.json()["detail"]
    r = s.post(
        f"{http_node.dicomweb}/studies",
        data=zlib.compress(bomb_body, 9),
        headers={"Content-Type": ctype, "Content-Encoding": "deflate"},
        timeout=60,
    )
    assert r.status_code == 413
    r = s.post(
        f"{http_node.dicomweb}/studies",
        data=b"x",
        headers={"Content-Type": ctype, "Content-Encoding": "br"},
        timeout=60,
    )
    assert r.status_code == 415
    assert len(spool_files(http_node.data)) == 1 and incoming_empty(http_node.data)
