"""QIDO-RS (PS3.18 10.6) over what the node holds (``dicomweb_index``); WADO-RS is ``dicomweb_wado``.

Search: ``/studies``, ``/series``, ``/instances`` and their study/series-scoped forms, with the usual
attribute matching (PS3.4 C.2.2.2: universal, single value, ``*``/``?`` wildcards, UID lists, DA/TM/DT
ranges; person names case-insensitively), ``includefield`` (or ``all``), ``limit`` and ``offset``; the
default return attributes of PS3.18 Tables 10.6.3-3 to -5.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from node.http.app import settings_of
from node.http.auth import Principal, require
from node.http.dicomweb_index import Entry, Holdings
from node.http.dicomweb_stow import DICOM_JSON, wado_root

router = APIRouter()
Viewer = Annotated[Principal, Depends(require("viewer"))]

STUDY_ATTRS = ("StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "TimezoneOffsetFromUTC", "PatientName",
               "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID", "StudyDescription")  # fmt: skip
SERIES_ATTRS = ("Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber", "PerformedProcedureStepStartDate",
                "PerformedProcedureStepStartTime")  # fmt: skip
INSTANCE_ATTRS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "Rows",
    "Columns",
    "BitsAllocated",
    "NumberOfFrames",
)
CONTROL = {"includefield", "limit", "offset", "fuzzymatching"}
MAX_LIMIT = 10000


def holdings(request: Request) -> Holdings:
    state = request.app.state
    if getattr(state, "holdings", None) is None:
        state.holdings = Holdings(settings_of(request))
    found: Holdings = state.holdings
    return found


# -- matching (PS3.4 C.2.2.2) -------------------------------------------------------------------
def _tag(key: str) -> int:
    if re.fullmatch(r"[0-9A-Fa-f]{8}", key):
        return int(key, 16)
    tag = tag_for_keyword(key)
    if tag is None:
        raise HTTPException(400, f"query key {key!r} is neither a DICOM keyword nor a tag (ggggeeee)")
    return int(tag)


def _vr(tag: int) -> str:
    try:
        return str(dictionary_VR(Tag(tag)))
    except KeyError:
        return "UN"


def _matches(value: str, query: str, vr: str) -> bool:
    if query == "":
        return True  # universal matching
    if vr == "UI":
        return value in query.split(",")  # list of UID matching
    if vr in ("DA", "TM", "DT") and "-" in query:
        low, high = query.split("-", 1)  # range matching
        return (
            bool(value) and (not low or value >= low) and (not high or value <= high[: len(value)] + "\uffff")
        )
    if "*" in query or "?" in query:
        pattern = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in query)
        return re.fullmatch(pattern, value, re.IGNORECASE if vr == "PN" else 0) is not None
    return value.lower() == query.lower() if vr == "PN" else value == query


def _value(entry: Entry, tag: int) -> str:
    elem = entry.header.get(tag)
    if elem is None or elem.value is None:
        return ""
    return "\\".join(str(v) for v in elem.value) if elem.VM > 1 else str(elem.value)


def _filters(request: Request) -> tuple[list[tuple[int, str]], set[int] | None, int, int]:
    params = request.query_params
    filters: list[tuple[int, str]] = []
    for key, value in params.multi_items():
        if key in CONTROL:
            continue
        if "." in key:
            raise HTTPException(400, f"query key {key!r}: sequence matching is not supported")
        filters.append((_tag(key), value))
    include: set[int] | None = set()
    for value in params.getlist("includefield"):
        for key in value.split(","):
            if key.strip() == "all":
                include = None
                break
            if include is not None and key.strip():
                include.add(_tag(key.strip()))
    try:
        limit = int(params.get("limit", MAX_LIMIT))
        offset = int(params.get("offset", 0))
    except ValueError:
        raise HTTPException(
            400, f"limit = {params.get('limit')!r}, offset = {params.get('offset')!r}: not integers"
        ) from None
    if limit < 0 or offset < 0:
        raise HTTPException(400, f"limit = {limit}, offset = {offset}: must not be negative")
    return filters, include, min(limit, MAX_LIMIT), offset


STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # the query's SOP class in the audit message (PS3.15 A.5.3.10)


def _audit_query(request: Request, who: Principal | None) -> None:
    """PS3.15 A.5.3.10 Query: who asked, from where, and the query itself (base64 in the message)."""
    from node.audit import AuditLog
    from node.http.health import current_settings

    client = request.client.host if request.client else None
    query = f"{request.url.path}?{request.url.query}".encode()
    AuditLog.from_settings(current_settings(request)).query(who.name if who else "(unknown)", client, STUDY_ROOT_FIND, query)


def _search(
    request: Request, level: str, study: str | None = None, series: str | None = None, *, who: Principal | None = None
) -> JSONResponse:
    _audit_query(request, who)
    filters, include, limit, offset = _filters(request)
    modalities = [q for t, q in filters if t == 0x00080061]  # ModalitiesInStudy: any series of the study
    plain = [(t, q) for t, q in filters if t != 0x00080061]
    everything = holdings(request).select(study, series)
    hits = [e for e in everything if all(_matches(_value(e, t), q, _vr(t)) for t, q in plain)]
    by_study: dict[str, list[Entry]] = {}
    for e in everything:
        by_study.setdefault(e.study, []).append(e)
    if modalities:
        wanted = modalities[0].split(",")
        hits = [e for e in hits if any(_value(o, 0x00080060) in wanted for o in by_study[e.study])]
    key = {
        "study": lambda e: e.study,
        "series": lambda e: (e.study, e.series),
        "instance": lambda e: (e.study, e.series, e.sop_instance),
    }[level]
    groups: dict[Any, list[Entry]] = {}
    for e in sorted(hits, key=lambda e: (e.study, e.series, _int(e, "InstanceNumber"), e.sop_instance)):
        groups.setdefault(key(e), []).append(e)
    root = wado_root(request)
    out = []
    for members in list(groups.values())[offset : offset + limit]:
        out.append(
            _describe(
                level,
                members,
                by_study[members[0].study],
                root,
                include,
                [t for t, _ in filters],
                scoped=study is not None,
            )
        )
    return JSONResponse(out, media_type=DICOM_JSON)


def _int(e: Entry, keyword: str) -> int:
    try:
        return int(e.header.get(keyword, 0) or 0)
    except (TypeError, ValueError):
        return 0


def _describe(
    level: str,
    members: list[Entry],
    study_members: list[Entry],
    root: str,
    include: set[int] | None,
    keys: list[int],
    scoped: bool,
) -> dict[str, Any]:
    first = members[0]
    names: list[str] = []
    if level == "study" or not scoped:
        names += STUDY_ATTRS
    if level in ("series", "instance"):
        names += SERIES_ATTRS
    if level == "instance":
        names += INSTANCE_ATTRS
    tags = {int(tag_for_keyword(n) or 0) for n in names} | set(keys)
    if include is None:
        tags |= {int(elem.tag) for elem in first.header if elem.tag.group > 0x0002}
    else:
        tags |= include
    ds = Dataset()
    for tag in sorted(tags - {0x00080061}):
        if tag in first.header:
            ds.add(first.header[tag])
    if level == "study":
        ds.ModalitiesInStudy = sorted({_value(e, 0x00080060) for e in study_members if _value(e, 0x00080060)})
        ds.NumberOfStudyRelatedSeries = len({e.series for e in members})
        ds.NumberOfStudyRelatedInstances = len(members)
        ds.RetrieveURL = f"{root}/studies/{first.study}"
    elif level == "series":
        ds.NumberOfSeriesRelatedInstances = len(members)
        ds.RetrieveURL = f"{root}/studies/{first.study}/series/{first.series}"
    else:
        ds.RetrieveURL = f"{root}/studies/{first.study}/series/{first.series}/instances/{first.sop_instance}"
    ds.InstanceAvailability = "ONLINE"
    return ds.to_json_dict(bulk_data_threshold=2**20)


@router.get("/studies")
def search_studies(request: Request, _who: Viewer) -> JSONResponse:
    return _search(request, "study", who=_who)


@router.get("/series")
def search_all_series(request: Request, _who: Viewer) -> JSONResponse:
    return _search(request, "series", who=_who)


@router.get("/instances")
def search_all_instances(request: Request, _who: Viewer) -> JSONResponse:
    return _search(request, "instance", who=_who)


@router.get("/studies/{study}/series")
def search_series(request: Request, study: str, _who: Viewer) -> JSONResponse:
    return _search(request, "series", study, who=_who)


@router.get("/studies/{study}/instances")
def search_study_instances(request: Request, study: str, _who: Viewer) -> JSONResponse:
    return _search(request, "instance", study, who=_who)


@router.get("/studies/{study}/series/{series}/instances")
def search_instances(request: Request, study: str, series: str, _who: Viewer) -> JSONResponse:
    return _search(request, "instance", study, series, who=_who)
