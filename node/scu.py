"""Admin SCU tools: C-ECHO and a C-STORE sender that keeps each file's own transfer syntax."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association

from node.config import check_ae_title
from node.errors import NodeError

logger = logging.getLogger(__name__)

MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: odd context IDs 1..255
_ADDRESS = re.compile(r"^(?P<ae>[^@]+)@(?P<host>\[[^\]]+\]|[^:]+):(?P<port>\d+)$")


@dataclass(frozen=True)
class Address:
    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """Parse ``AE@HOST:PORT``; raise ``NodeError`` naming the bad part."""
    m = _ADDRESS.match(text.strip())
    if not m:
        raise NodeError(f"address {text!r} is not of the form AE@HOST:PORT")
    try:
        ae = check_ae_title(m["ae"])
    except ValueError as exc:
        raise NodeError(f"address {text!r}: {exc}") from None
    port = int(m["port"])
    if not 1 <= port <= 65535:
        raise NodeError(f"address {text!r}: port {port} is out of range 1-65535")
    return Address(ae, m["host"].strip("[]"), port)


def _associate(ae: AE, to: Address) -> Association:
    opened: list[bool] = []
    handlers: list[Any] = [(evt.EVT_CONN_OPEN, lambda _e: opened.append(True))]
    assoc = ae.associate(to.host, to.port, ae_title=to.ae_title, evt_handlers=handlers)
    if assoc.is_established:
        return assoc
    if assoc.is_rejected:
        rsp = assoc.acceptor.primitive
        reason = getattr(rsp, "reason_str", None) or "rejected"
        kind = "permanently" if getattr(rsp, "result", None) == 1 else "transiently"
        raise NodeError(f"{to} rejected the association {kind}: {reason}")
    if not opened:
        raise NodeError(f"cannot connect to {to} (connection refused or timed out)")
    if assoc.is_aborted:
        raise NodeError(f"{to} aborted the association")
    raise NodeError(f"{to} did not answer the association request in time")


def echo(to: Address, calling: str = "ALNNODE", timeout: float = 10.0) -> None:
    """Send a C-ECHO; raise ``NodeError`` with the reason on any failure."""
    ae = AE(ae_title=check_ae_title(calling))
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = _associate(ae, to)
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if not status or "Status" not in status:
        raise NodeError(f"{to} sent no C-ECHO response")
    if status.Status != 0:
        raise NodeError(f"{to} answered C-ECHO with status 0x{int(status.Status):04X}")


@dataclass(frozen=True)
class SendResult:
    path: Path
    sop_instance_uid: str | None
    status: int | None  # None: not sent
    message: str

    @property
    def ok(self) -> bool:
        return self.status is not None and (self.status == 0 or (self.status & 0xF000) == 0xB000)


def iter_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Files named, and files below directories named, in sorted order."""
    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file())
        else:
            yield p


def _header(path: Path) -> tuple[str, str, str]:
    """(SOP class, transfer syntax, SOP instance) as the file meta states them (PS3.10 7.1)."""
    ds = dcmread(path, stop_before_pixels=True)
    meta = ds.file_meta
    sop_class = meta.get("MediaStorageSOPClassUID") or ds.SOPClassUID
    sop_instance = meta.get("MediaStorageSOPInstanceUID") or ds.SOPInstanceUID
    return str(sop_class), str(meta.TransferSyntaxUID), str(sop_instance)


def send(
    paths: Iterable[str | os.PathLike[str]],
    to: Address,
    calling: str = "ALNNODE",
    timeout: float = 60.0,
    progress: Callable[[int, int, SendResult], None] | None = None,
) -> list[SendResult]:
    """C-STORE every DICOM file under ``paths`` to ``to``, each in its own transfer syntax.

    Files are grouped so that one association carries at most 128 presentation contexts.
    Non-DICOM files are reported, not sent. Returns one result per file.
    """
    results: list[SendResult] = []
    batch: list[tuple[Path, str, str, str]] = []
    files = list(iter_files(paths))
    total = len(files)

    def report(r: SendResult) -> None:
        results.append(r)
        if progress:
            progress(len(results), total, r)

    for path in files:
        try:
            batch.append((path, *_header(path)))
        except (InvalidDicomError, AttributeError, OSError, ValueError) as exc:
            report(SendResult(path, None, None, f"not a DICOM file with SOP Class/Instance UID: {exc}"))
    while batch:
        contexts: list[tuple[str, str]] = []
        chunk = []
        for item in batch:
            key = (item[1], item[2])
            if key not in contexts:
                if len(contexts) == MAX_CONTEXTS:
                    continue
                contexts.append(key)
            chunk.append(item)
        batch = [b for b in batch if b not in chunk]
        _send_chunk(chunk, contexts, to, calling, timeout, report)
    return results


def _send_chunk(
    chunk: list[tuple[Path, str, str, str]],
    contexts: list[tuple[str, str]],
    to: Address,
    calling: str,
    timeout: float,
    report: Callable[[SendResult], None],
) -> None:
    # Send each file's data set bytes as they are on disk: no decode, no re-encode, no conversion.
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=check_ae_title(calling))
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for sop_class, ts in contexts:
        ae.add_requested_context(sop_class, ts)
    try:
        assoc = _associate(ae, to)
    except NodeError as exc:
        for path, _, _, uid in chunk:
            report(SendResult(path, uid, None, str(exc)))
        return
    try:
        for path, sop_class, ts, uid in chunk:
            accepted = any(
                cx.abstract_syntax == sop_class and cx.transfer_syntax[0] == ts for cx in assoc.accepted_contexts
            )
            if not accepted:
                report(SendResult(path, uid, None, f"{to} did not accept {sop_class} in transfer syntax {ts}"))
                continue
            if not assoc.is_established:
                report(SendResult(path, uid, None, "association lost"))
                continue
            rsp = assoc.send_c_store(path)
            if not rsp or "Status" not in rsp:
                report(SendResult(path, uid, None, "no C-STORE response (timeout or abort)"))
                continue
            status = int(rsp.Status)
            comment = str(rsp.get("ErrorComment", "")) if "ErrorComment" in rsp else ""
            text = "stored" if status == 0 else f"status 0x{status:04X} {comment}".strip()
            report(SendResult(path, uid, status, text))
    finally:
        if assoc.is_established:
            assoc.release()
