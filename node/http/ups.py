"""UPS-RS (PS3.18 section 11): workitems of the node's AI tasks (``node.http.ups_work``).

``GET /dicom-web/workitems`` (search, ``ProcedureStepState``/``limit``/``offset``) and
``GET /dicom-web/workitems/{uid}`` for viewers; ``POST /dicom-web/workitems/{uid}/cancelrequest``
(PS3.18 11.8) and ``POST /dicom-web/workitems[?{uid}]`` (create, PS3.18 11.4) for requesters with the
``modality`` role: the workitem's InputInformationSequence names a study
(StudyInstanceUID) and the ``[[sources]]`` archive that holds it (RetrieveURL under the source's URL, or
RetrieveAETitle = the source's name; either may be left out when one source is configured).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from starlette.concurrency import run_in_threadpool

from node.config import Source
from node.http.app import ledger_of, settings_of, spool_of
from node.http.auth import Principal, require
from node.http.dicomweb_stow import DICOM_JSON, wado_root
from node.http.ups_work import STATE_OF_JOB, UPS_PUSH_SOP_CLASS, Workitems, job_workitem_uid

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/dicom-web", tags=["UPS-RS"])
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
LABEL = "ALN AI classification - research use, not for diagnostic use"  # LO: 64 chars at most


def workitems(request: Request) -> Workitems:
    state = request.app.state
    if getattr(state, "workitems", None) is None:
        node = state.node
        on_stored = node.receiver.on_stored if node is not None else None
        state.workitems = Workitems(settings_of(request), spool_of(request), ledger_of(request), on_stored)
    found: Workitems = state.workitems
    return found


def _item(study: str | None, series: str | None, sop_class: str | None, sop: str | None) -> Dataset:
    item = Dataset()
    item.TypeOfInstances = "DICOM"
    item.StudyInstanceUID = study or ""
    item.SeriesInstanceUID = series or ""
    if sop:
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = sop_class or "", sop
        item.ReferencedSOPSequence = [ref]
    return item


def _dataset(
    w: Workitems,
    uid: str,
    state: str,
    inputs: list[Dataset],
    done: list[str],
    reason: str | None,
    base: Dataset | None = None,
) -> dict[str, Any]:
    ds = base if base is not None else Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = UPS_PUSH_SOP_CLASS, uid
    ds.ProcedureStepState = state
    ds.ScheduledProcedureStepPriority = ds.get("ScheduledProcedureStepPriority") or "MEDIUM"
    ds.ProcedureStepLabel = ds.get("ProcedureStepLabel") or LABEL
    ds.InputReadinessState = "READY"
    if inputs:
        ds.InputInformationSequence = inputs
    if state in ("COMPLETED", "CANCELED"):
        performed = Dataset()
        performed.OutputInformationSequence = w.outputs(done)
        ds.UnifiedProcedureStepPerformedProcedureSequence = [performed]
    if state == "CANCELED" and reason:
        ds.ReasonForCancellation = reason[:1024]  # LT
    return ds.to_json_dict()


def _job_workitem(w: Workitems, job: dict[str, Any]) -> dict[str, Any]:
    state = STATE_OF_JOB.get(job["state"], "SCHEDULED")
    done = [job["sop_instance_uid"]] if job["state"] == "dispatched" else []
    inputs = [
        _item(
            job.get("study_instance_uid"),
            job.get("series_instance_uid"),
            job.get("sop_class_uid"),
            job["sop_instance_uid"],
        )
    ]
    return _dataset(w, job_workitem_uid(job["sop_instance_uid"]), state, inputs, done, job.get("reason"))


def _created_workitem(w: Workitems, record: dict[str, Any]) -> dict[str, Any]:
    state, reason, done = w.state_of(record)
    inputs = []
    for uid in record["inputs"]:
        job = w.ledger.find(uid) or {}
        inputs.append(
            _item(
                job.get("study_instance_uid"), job.get("series_instance_uid"), job.get("sop_class_uid"), uid
            )
        )
    base = Dataset.from_json(record["dataset"])
    if not inputs:
        inputs = list(base.get("InputInformationSequence", []))
    return _dataset(w, record["uid"], state, inputs, done, reason, base)


def _all(w: Workitems) -> list[dict[str, Any]]:
    created = w.created()
    taken = {u for r in created for u in r["inputs"]}
    jobs = [w.ledger.find(j["sop_instance_uid"]) for j in w.ledger.last_jobs(100000)]
    out = [_created_workitem(w, r) for r in created]
    out += [_job_workitem(w, j) for j in jobs if j is not None and j["sop_instance_uid"] not in taken]
    return out


@router.get("/workitems")
def search_workitems(
    request: Request, _who: Annotated[Principal, Depends(require("viewer"))]
) -> JSONResponse:
    params = request.query_params
    wanted = params.get("ProcedureStepState") or params.get("00741000")
    try:
        limit, offset = int(params.get("limit", 10000)), int(params.get("offset", 0))
    except ValueError:
        raise HTTPException(
            400, f"limit = {params.get('limit')!r}, offset = {params.get('offset')!r}: not integers"
        ) from None
    found = [d for d in _all(workitems(request)) if not wanted or d["00741000"]["Value"][0] == wanted]
    return JSONResponse(found[offset : offset + limit], media_type=DICOM_JSON)


def _find(w: Workitems, uid: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(created workitem record, job) of workitem ``uid``; 404 when there is neither."""
    record = w.load(uid)
    if record is not None:
        return record, None
    for job in w.ledger.last_jobs(100000):
        if job_workitem_uid(job["sop_instance_uid"]) == uid:
            full = w.ledger.find(job["sop_instance_uid"])
            if full is not None:
                return None, full
    raise HTTPException(404, f"no workitem {uid[:64]}")


@router.get("/workitems/{uid}")
def get_workitem(
    request: Request, uid: str, _who: Annotated[Principal, Depends(require("viewer"))]
) -> JSONResponse:
    w = workitems(request)
    record, job = _find(w, uid)
    if record is not None:
        return JSONResponse([_created_workitem(w, record)], media_type=DICOM_JSON)
    assert job is not None
    return JSONResponse([_job_workitem(w, job)], media_type=DICOM_JSON)


SCHEDULED_JOB_STATES = ("received", "queued")  # the jobs of a SCHEDULED workitem: no stage has finished


@router.post("/workitems/{uid}/cancelrequest", status_code=202)
async def cancel_workitem(
    request: Request, uid: str, who: Annotated[Principal, Depends(require("modality"))]
) -> Response:
    """Request Cancellation (PS3.18 11.8, PS3.4 CC.2.4). The node is the performer: a SCHEDULED workitem
    is canceled at once (its jobs end ``skipped`` with the reason, a stage that picks one up later
    changes nothing); an IN PROGRESS one is finished, not cut off (409), as are COMPLETED and CANCELED ones."""
    body = await request.body()
    reason = ""
    if body.strip():
        try:
            payload = json.loads(body)
            ds = Dataset.from_json(payload[0] if isinstance(payload, list) else payload)
            reason = str(ds.get("ReasonForCancellation", "") or "")
        except Exception as exc:
            raise HTTPException(400, f"the body is not one DICOM JSON data set: {exc}") from None
    await run_in_threadpool(_cancel, workitems(request), uid, reason, who)  # ledger I/O off the event loop
    return Response(status_code=202)


def _cancel(w: Workitems, uid: str, reason: str, who: Principal) -> None:
    record, job = _find(w, uid)
    if record is not None:
        jobs = [j for j in (w.ledger.find(u) for u in record["inputs"]) if j is not None]
        waiting = [j for j in jobs if j["state"] in SCHEDULED_JOB_STATES]
        running = any(STATE_OF_JOB[j["state"]] == "IN PROGRESS" for j in jobs)
        cancelable = record["fetch"] == "done" and bool(waiting) and not running
    else:
        assert job is not None
        waiting, cancelable = [job], job["state"] in SCHEDULED_JOB_STATES
    if not cancelable:  # the workitem's state, for the message only
        state = w.state_of(record)[0] if record is not None else STATE_OF_JOB.get(waiting[0]["state"], "SCHEDULED")
        why = (
            f"workitem {uid} is already {state}"
            if state in ("COMPLETED", "CANCELED")
            else f"workitem {uid} is {state}: this performer finishes a loop it has started (seconds)"
        )
        raise HTTPException(409, why, headers={"Warning": f'299 alnnode "{why}"'})
    text = f"canceled by {who.name!r} (UPS-RS)" + (f": {reason}" if reason else "")
    moved = [
        j["sop_instance_uid"]
        for j in waiting
        if w.ledger.transition(j["sop_instance_uid"], "skipped", expected=SCHEDULED_JOB_STATES, reason=text[:1024])
    ]
    if not moved:  # every job moved on between the read and the write
        raise HTTPException(409, f"workitem {uid} is no longer SCHEDULED")
    # the reason is the requester's free text (it may name the patient): kept in the ledger, not logged
    logger.info("UPS-RS workitem %s canceled by %r (%d job(s))", uid, who.name, len(moved))


def _source_of(request: Request, item: Dataset) -> Source:
    sources = settings_of(request).sources
    url = str(item.get("RetrieveURL", "") or "")
    ae = str(item.get("RetrieveAETitle", "") or "")
    for source in sources:
        if (url and url.startswith(source.url)) or (ae and ae == source.name):
            return source
    if not url and not ae and len(sources) == 1:
        return sources[0]
    named = url or ae or "no RetrieveURL or RetrieveAETitle"
    raise HTTPException(
        400, f"InputInformationSequence names {named[:200]!r}, which is not a configured [[sources]] entry"
    )


@router.post("/workitems", status_code=201)
async def create_workitem(
    request: Request, who: Annotated[Principal, Depends(require("modality"))]
) -> Response:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() not in (
        DICOM_JSON,
        "application/json",
    ):
        raise HTTPException(415, "a workitem is created from application/dicom+json")
    body = await request.body()
    if len(body) > 2**20:
        raise HTTPException(413, "a workitem is at most 1 MiB of DICOM JSON")
    try:
        payload = json.loads(body)
        ds = Dataset.from_json(payload[0] if isinstance(payload, list) else payload)
    except Exception as exc:
        raise HTTPException(400, f"the body is not one DICOM JSON data set: {exc}") from None
    uid = (
        next(iter(request.query_params.keys()), None)
        or str(ds.get("SOPInstanceUID", "") or "")
        or generate_uid()
    )
    if not _UID.match(uid) or len(uid) > 64:
        raise HTTPException(400, f"workitem UID {uid[:80]!r} is not a valid UID")
    if str(ds.get("ProcedureStepState", "SCHEDULED")) != "SCHEDULED":  # PS3.4 CC.2.5.1.1
        raise HTTPException(400, f"ProcedureStepState {ds.ProcedureStepState!r}: a new workitem is SCHEDULED")
    items = list(ds.get("InputInformationSequence", []))
    if len(items) != 1 or not items[0].get("StudyInstanceUID"):
        raise HTTPException(
            400, "InputInformationSequence must hold one item with the StudyInstanceUID to process"
        )
    study = str(items[0].StudyInstanceUID)
    source = _source_of(request, items[0])
    try:
        workitems(request).create(uid, ds, source, study)
    except FileExistsError:
        raise HTTPException(409, f"workitem {uid} already exists") from None
    logger.info(
        "UPS-RS workitem %s created by %r: study %s from source %r", uid, who.name, study, source.name
    )
    location = f"{wado_root(request)}/workitems/{uid}"
    return Response(status_code=201, headers={"Location": location, "Content-Location": location})
