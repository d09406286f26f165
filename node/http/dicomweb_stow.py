"""STOW-RS (PS3.18 10.5): ``POST /dicom-web/studies[/{study}]`` with ``multipart/related; type="application/dicom"``.

Each part is streamed to its own temp file under ``data_dir/incoming`` (never the whole request in
memory) and then goes through the C-STORE acceptance (``node.receive.accept``): the same checks, fsync
into the spool and ledger row before the response. The response (PS3.18 10.5.3, Table 10.5.3-1) is
200 when every instance was stored, 202 when some failed (``FailedSOPSequence`` with the Failure Reason
each would get over DIMSE, PS3.4 B.2.3), 409 when all failed, 400 for a malformed request, 413 over a
limit, 415 for another media type. A ``Content-Encoding`` of gzip or deflate is inflated as a stream,
capped at ``[http] max_request_mb`` (no compression bombs).
"""

from __future__ import annotations

import logging
import shutil
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Annotated, Any, cast

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header
from starlette.concurrency import run_in_threadpool

from node.errors import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DATASET_DOES_NOT_MATCH,
    STATUS_OUT_OF_RESOURCES,
    STATUS_PROCESSING_FAILURE,
    StoreRejected,
)
from node.http.app import ledger_of, settings_of, spool_of
from node.http.auth import Principal, require
from node.receive.accept import accept
from node.receive.contexts import STORAGE_SOP_CLASSES

logger = logging.getLogger(__name__)

router = APIRouter()
DICOM_JSON = "application/dicom+json"
INFLATE_RATIO, INFLATE_FLOOR = 200, 2**20  # Apache mod_deflate's DeflateInflateRatioLimit default
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122  # PS3.4 C.4.2.1.4 "Refused: SOP Class not supported"


@dataclass
class Part:
    path: Path | None
    content_type: str = ""
    size: int = 0
    failure: tuple[int, str] | None = None  # (Failure Reason, why) decided while streaming
    headers: dict[str, str] = field(default_factory=dict)


class _Receiver:
    """python-multipart callbacks: one temp file per part, limits enforced as bytes arrive."""

    def __init__(self, folder: Path, max_parts: int, max_instance: int) -> None:
        self.folder, self.max_parts, self.max_instance = folder, max_parts, max_instance
        self.parts: list[Part] = []
        self.ended = False
        self.too_many = False
        self._fh: IO[bytes] | None = None
        self._field = b""
        self._value = b""

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.begin,
            "on_header_field": lambda d, s, e: setattr(self, "_field", self._field + d[s:e]),
            "on_header_value": lambda d, s, e: setattr(self, "_value", self._value + d[s:e]),
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_done,
            "on_part_data": self.data,
            "on_part_end": self.end_part,
            "on_end": lambda: setattr(self, "ended", True),
        }

    def begin(self) -> None:
        if len(self.parts) >= self.max_parts:
            self.too_many = True
            raise MultipartParseError(f"more than max_parts = {self.max_parts} parts")
        self.parts.append(Part(self.folder / f"{len(self.parts):05d}.dcm"))

    def header_end(self) -> None:
        self.parts[-1].headers[self._field.decode("latin-1").strip().lower()] = self._value.decode(
            "latin-1"
        ).strip()
        self._field = self._value = b""

    def headers_done(self) -> None:
        part = self.parts[-1]
        part.content_type = (
            parse_options_header(part.headers.get("content-type", ""))[0].decode("latin-1").lower()
        )
        if part.content_type != "application/dicom":
            part.failure = (
                STATUS_SOP_CLASS_NOT_SUPPORTED,
                f"part content type {part.content_type or 'missing'!r} is not application/dicom",
            )
            return
        assert part.path is not None
        self._fh = open(part.path, "wb")

    def data(self, data: bytes, start: int, end: int) -> None:
        part = self.parts[-1]
        part.size += end - start
        if self._fh is None:
            return
        if part.size > self.max_instance:
            self._close()
            assert part.path is not None
            part.path.unlink(missing_ok=True)
            part.failure = (
                STATUS_OUT_OF_RESOURCES,
                f"instance is over max_instance_mb = {self.max_instance // 2**20}",
            )
            return
        self._fh.write(data[start:end])

    def end_part(self) -> None:
        self._close()

    def _close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def close(self) -> None:
        self._close()


class _Inflater:
    """Streaming gzip/deflate of the request body, capped like Apache's mod_deflate: at most
    ``max_request_mb`` inflated and at most INFLATE_RATIO times the compressed bytes received
    (``DeflateInflateRatioLimit``), so a small bomb is refused after about 1 MiB."""

    def __init__(self, encoding: str, cap: int) -> None:
        # wbits: 16+15 gzip, 15 zlib-wrapped deflate (RFC 9110 8.4.1.2 "deflate" is the zlib format)
        self.z = zlib.decompressobj(31 if encoding in ("gzip", "x-gzip") else 15)
        self.cap, self.total, self.compressed = cap, 0, 0

    def feed(self, chunk: bytes) -> bytes:
        self.compressed += len(chunk)
        out = self.z.decompress(chunk, self.cap - self.total + 1)
        self.total += len(out)
        if self.total > self.cap or self.z.unconsumed_tail:
            raise HTTPException(413, f"the request inflates beyond max_request_mb = {self.cap // 2**20}")
        if self.total > INFLATE_FLOOR and self.total > INFLATE_RATIO * self.compressed:
            raise HTTPException(
                413, f"the request inflates more than {INFLATE_RATIO} times (a compression bomb?)"
            )
        return out


def _boundary(content_type: str) -> bytes:
    media, params = parse_options_header(content_type)
    if media.lower() != b"multipart/related":
        raise HTTPException(
            415, f"content type {media.decode('latin-1') or 'missing'!r} is not multipart/related"
        )
    part_type = params.get(b"type", b"application/dicom").strip(b'"').lower()
    if part_type != b"application/dicom":
        raise HTTPException(
            415, f"multipart type {part_type.decode('latin-1')!r} is not supported (only application/dicom)"
        )
    boundary = params.get(b"boundary", b"").strip(b'"')
    if not boundary or len(boundary) > 200:  # RFC 2046 5.1.1 says 70; Orthanc sends two UUIDs (73)
        raise HTTPException(400, "multipart/related without a valid boundary parameter")
    return boundary


async def _receive(request: Request, folder: Path) -> _Receiver:
    settings = settings_of(request)
    http = settings.http
    cap = http.max_request_mb * 2**20
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise HTTPException(
            413, f"request of {declared} bytes is over max_request_mb = {http.max_request_mb}"
        )
    boundary = _boundary(request.headers.get("content-type", ""))
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip", "deflate"):
        raise HTTPException(415, f"content encoding {encoding!r} is not supported (gzip, deflate or none)")
    inflater = _Inflater(encoding, cap) if encoding != "identity" else None
    rx = _Receiver(folder, http.max_parts, settings.node.max_instance_mb * 2**20)
    parser = MultipartParser(boundary, cast(Any, rx.callbacks()), max_header_count=16)
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > cap:
                raise HTTPException(413, f"request is over max_request_mb = {http.max_request_mb}")
            parser.write(inflater.feed(chunk) if inflater else chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise HTTPException(413 if rx.too_many else 400, f"malformed multipart body: {exc}") from None
    except zlib.error as exc:
        raise HTTPException(400, f"the {encoding} body cannot be inflated: {exc}") from None
    finally:
        rx.close()
    if not rx.ended:
        raise HTTPException(400, "malformed multipart body: the closing boundary is missing")
    if not rx.parts:
        raise HTTPException(400, "the request holds no part")
    return rx


def _store_part(
    request: Request, part: Part, study: str | None, principal: Principal
) -> tuple[dict[str, str], tuple[int, str] | None]:
    """Accept one part; returns (its UIDs as far as known, failure or None)."""
    uids: dict[str, str] = {}
    if part.failure is not None or part.path is None:
        return uids, part.failure or (STATUS_CANNOT_UNDERSTAND, "empty part")
    try:
        meta = read_file_meta_info(part.path)
        uids = {"class": str(meta.MediaStorageSOPClassUID), "instance": str(meta.MediaStorageSOPInstanceUID)}
        syntax = str(meta.TransferSyntaxUID)
    except Exception as exc:  # whatever pydicom raises on hostile bytes
        return uids, (
            STATUS_CANNOT_UNDERSTAND,
            f"not a DICOM PS3.10 file with a File Meta Information: {exc}",
        )
    if uids["class"] not in STORAGE_SOP_CLASSES:
        return uids, (STATUS_SOP_CLASS_NOT_SUPPORTED, f"SOP class {uids['class'][:64]} is not accepted")
    if study is not None:
        try:
            found = str(
                dcmread(part.path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"]).get(
                    "StudyInstanceUID", ""
                )
            )
        except Exception:
            found = ""  # accept() says what is wrong with the data set
        if found and found != study:  # PS3.18 10.5.3: an instance of another study fails
            return uids, (
                STATUS_DATASET_DOES_NOT_MATCH,
                f"Study Instance UID {found[:64]} is not the target study {study[:64]}",
            )
    settings = settings_of(request)
    node = request.app.state.node
    try:
        done = accept(
            settings,
            spool_of(request),
            ledger_of(request),
            part.path,
            context_sop_class=uids["class"],
            transfer_syntax=syntax,
            affected_sop_instance=uids["instance"],
            on_stored=node.receiver.on_stored if node is not None else None,
            what=f"STOW-RS ({principal.name})",
        )
    except StoreRejected as rej:
        return uids, (rej.status, rej.reason)
    except Exception:  # a bug must not answer success or leave debris
        logger.exception("STOW-RS %s: handler error", uids.get("instance", "?")[:64])
        return uids, (STATUS_PROCESSING_FAILURE, "internal error while storing; not stored")
    info = done.info
    uids.update(study=info.study_instance_uid or "", series=info.series_instance_uid or "")
    return uids, None


def wado_root(request: Request) -> str:
    base = settings_of(request).http.base_url
    return (base.rstrip("/") if base else str(request.base_url).rstrip("/")) + "/dicom-web"


@router.post("/studies")
@router.post("/studies/{study}")
async def stow(
    request: Request, principal: Annotated[Principal, Depends(require("modality"))], study: str | None = None
) -> JSONResponse:
    spool = spool_of(request)
    spool.incoming.mkdir(parents=True, exist_ok=True)
    folder = spool.incoming / f"stow-{uuid.uuid4().hex}"  # a folder: the C-STORE sweep leaves it alone
    folder.mkdir()
    try:
        rx = await _receive(request, folder)
        results = [await run_in_threadpool(_store_part, request, part, study, principal) for part in rx.parts]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    root = wado_root(request)
    body = Dataset()
    stored, failed = [], []
    for uids, failure in results:
        item = Dataset()
        if "class" in uids:
            item.ReferencedSOPClassUID = uids["class"][:64]
            item.ReferencedSOPInstanceUID = uids["instance"][:64]
        if failure is None:
            item.RetrieveURL = (
                f"{root}/studies/{uids['study']}/series/{uids['series']}/instances/{uids['instance']}"
            )
            stored.append(item)
        else:
            item.FailureReason = failure[0]
            failed.append(item)
            logger.warning(
                "STOW-RS part %s refused with 0x%04X: %s",
                uids.get("instance", "?")[:64],
                failure[0],
                failure[1],
            )
    if stored:
        body.ReferencedSOPSequence = stored
    if failed:
        body.FailedSOPSequence = failed
    target = study or (results[0][0].get("study") if stored else None)
    if target:
        body.RetrieveURL = f"{root}/studies/{target}"
    status = 200 if not failed else 409 if not stored else 202
    headers = {}
    if failed:  # PS3.18 8.6.3: a human-readable reason per failure, without patient data
        text = "; ".join(
            f"{uids.get('instance', 'part')[:64]}: 0x{f[0]:04X} {f[1]}" for uids, f in results if f
        )
        text = "".join(
            c if 0x20 <= ord(c) < 0x7F and c != '"' else "?" for c in text[:900]
        )  # a header is ASCII
        headers["Warning"] = f'299 alnnode "{text}"'
    return JSONResponse(body.to_json_dict(), status_code=status, media_type=DICOM_JSON, headers=headers)
