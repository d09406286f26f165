"""WADO-RS (PS3.18 10.4) of what the node holds: instances as ``multipart/related; type="application/dicom"``
in their stored transfer syntax (or Explicit VR Little Endian when asked), ``/metadata`` as DICOM JSON with
the Pixel Data as a BulkDataURI, and ``/rendered`` frames as JPEG or PNG (``node.http.render``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from python_multipart.multipart import parse_options_header

from node.http.dicomweb_index import Entry
from node.http.dicomweb_query import Viewer, holdings
from node.http.dicomweb_stow import DICOM_JSON, wado_root

router = APIRouter()


# -- WADO-RS ------------------------------------------------------------------------------------
def _selected(
    request: Request, study: str, series: str | None = None, instance: str | None = None
) -> list[Entry]:
    found = holdings(request).select(study, series, instance)
    if not found:
        what = "instance" if instance else "series" if series else "study"
        raise HTTPException(404, f"no {what} {instance or series or study} on this node")
    return found


def _wanted_syntax(request: Request) -> str:
    """The transfer syntax the Accept header asks for ('*' when any; PS3.18 8.7.3.5)."""
    accept = request.headers.get("accept", "*/*")
    wanted = []
    for item in accept.split(","):
        media, params = parse_options_header(item.strip())
        kind = params.get(b"type", b"").strip(b'"')
        if (
            media in (b"*/*", b"multipart/*")
            or (media == b"multipart/related" and kind in (b"application/dicom", b""))
            or media == b"application/dicom"
        ):
            wanted.append(params.get(b"transfer-syntax", b"*").decode("latin-1"))
    if not wanted:
        raise HTTPException(
            406, f'Accept {accept[:200]!r}: only multipart/related; type="application/dicom" is served here'
        )
    return "*" if "*" in wanted else wanted[0]


def _part(entry: Entry, syntax: str) -> tuple[str, Iterator[bytes]]:
    if syntax in ("*", entry.transfer_syntax):

        def chunks() -> Iterator[bytes]:
            with open(entry.path, "rb") as f:
                while block := f.read(1 << 20):
                    yield block

        return entry.transfer_syntax, chunks()
    if syntax == ExplicitVRLittleEndian:
        from io import BytesIO

        ds = dcmread(entry.path)
        ds.decompress() if ds.file_meta.TransferSyntaxUID.is_compressed else ds.change_transfer_syntax(
            ExplicitVRLittleEndian
        )
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return ExplicitVRLittleEndian, iter([buf.getvalue()])
    raise HTTPException(
        406,
        f"transfer syntax {syntax[:64]} is not available for {entry.sop_instance} (stored as {entry.transfer_syntax}; ask for * or {ExplicitVRLittleEndian})",
    )


def _retrieve(request: Request, entries: list[Entry]) -> StreamingResponse:
    syntax = _wanted_syntax(request)
    boundary = uuid.uuid4().hex
    parts = [_part(e, syntax) for e in entries]  # 406 before the first byte is sent

    def body() -> Iterator[bytes]:
        for ts, chunks in parts:
            yield f"--{boundary}\r\nContent-Type: application/dicom; transfer-syntax={ts}\r\n\r\n".encode()
            yield from chunks
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    return StreamingResponse(
        body(), media_type=f'multipart/related; type="application/dicom"; boundary={boundary}'
    )


def _metadata(request: Request, entries: list[Entry]) -> JSONResponse:
    root = wado_root(request)
    out = []
    for e in entries:
        item = e.header.to_json_dict(bulk_data_threshold=2**20)
        if "Rows" in e.header:
            item["7FE00010"] = {
                "vr": "OB",
                "BulkDataURI": f"{root}/studies/{e.study}/series/{e.series}/instances/{e.sop_instance}",
            }
        out.append(item)
    return JSONResponse(out, media_type=DICOM_JSON)


@router.get("/studies/{study}")
def retrieve_study(request: Request, study: str, _who: Viewer) -> StreamingResponse:
    return _retrieve(request, _selected(request, study))


@router.get("/studies/{study}/series/{series}")
def retrieve_series(request: Request, study: str, series: str, _who: Viewer) -> StreamingResponse:
    return _retrieve(request, _selected(request, study, series))


@router.get("/studies/{study}/series/{series}/instances/{instance}")
def retrieve_instance(
    request: Request, study: str, series: str, instance: str, _who: Viewer
) -> StreamingResponse:
    return _retrieve(request, _selected(request, study, series, instance))


@router.get("/studies/{study}/metadata")
def study_metadata(request: Request, study: str, _who: Viewer) -> JSONResponse:
    return _metadata(request, _selected(request, study))


@router.get("/studies/{study}/series/{series}/metadata")
def series_metadata(request: Request, study: str, series: str, _who: Viewer) -> JSONResponse:
    return _metadata(request, _selected(request, study, series))


@router.get("/studies/{study}/series/{series}/instances/{instance}/metadata")
def instance_metadata(request: Request, study: str, series: str, instance: str, _who: Viewer) -> JSONResponse:
    return _metadata(request, _selected(request, study, series, instance))


@router.get("/studies/{study}/series/{series}/instances/{instance}/rendered")
def rendered_instance(request: Request, study: str, series: str, instance: str, _who: Viewer) -> Response:
    return _rendered(request, _selected(request, study, series, instance)[0], 1)


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frame}/rendered")
def rendered_frame(
    request: Request, study: str, series: str, instance: str, frame: str, _who: Viewer
) -> Response:
    if not frame.isdigit() or int(frame) < 1:
        raise HTTPException(400, f"frame {frame[:20]!r}: one frame number from 1 is rendered per request")
    return _rendered(request, _selected(request, study, series, instance)[0], int(frame))


def _rendered(request: Request, entry: Entry, frame: int) -> Response:
    from node.http.render import render

    accept = request.headers.get("accept", "image/jpeg")
    media = "image/png" if "image/png" in accept and "image/jpeg" not in accept else "image/jpeg"
    if not any(m in accept for m in ("image/jpeg", "image/png", "image/*", "*/*")):
        raise HTTPException(406, f"Accept {accept[:100]!r}: rendered frames are image/jpeg or image/png")
    return Response(render(entry, frame, media), media_type=media)
