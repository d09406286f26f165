"""What the console pages and the admin API show: dashboard figures, jobs, one job, the model card.

No patient names anywhere (the ledger holds none); the Accession Number and the Patient ID (read from
the spooled header) are returned only when ``admin`` is true.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from fastapi import HTTPException, Request

from node.config import Settings
from node.http.health import broker_of, current_settings
from node.ledger import Ledger, as_jsonable, aware, now
from node.ledger.states import STATES

logger = logging.getLogger(__name__)

ADMIN_ONLY = ("accession_number",)


def _strip(rows: list[dict[str, Any]], admin: bool) -> list[dict[str, Any]]:
    if admin:
        return rows
    return [{k: v for k, v in r.items() if k not in ADMIN_ONLY} for r in rows]


def find_jobs(request: Request, *, state: str | None, ae: str | None, since: str | None, accession: str | None,
              limit: int = 100, admin: bool) -> list[dict[str, Any]]:  # fmt: skip
    from node.cli_admin import parse_since
    from node.errors import NodeError

    if state and state not in STATES:
        raise HTTPException(422, f"state {state!r}: expected one of {', '.join(STATES)}")
    try:
        when = parse_since(since) if since else None
    except NodeError as exc:
        raise HTTPException(422, str(exc).replace("--since", "since")) from None
    if accession and not admin:
        raise HTTPException(403, "filtering by accession number needs the admin role")
    ledger: Ledger = request.app.state.ledger
    rows = ledger.last_jobs(max(1, min(limit, 1000)), state=state or None, calling_ae=ae or None, since=when, accession=accession or None)
    return _strip(as_jsonable(rows), admin)


def job_detail(request: Request, uid: str, *, admin: bool) -> dict[str, Any]:
    ledger: Ledger = request.app.state.ledger
    row = ledger.find(uid)
    if row is None:
        raise HTTPException(404, f"no job with SOP Instance UID {uid[:80]!r}")
    keep = ("sop_instance_uid", "sop_class_uid", "study_instance_uid", "series_instance_uid", "transfer_syntax_uid", "size",
            "frames", "calling_ae", "accession_number", "state", "stage", "reason", "attempts", "duplicates", "model_uid",
            "probability", "claimed_by", "received_at", "updated_at", "retry_at")  # fmt: skip
    job = as_jsonable([{k: row.get(k) for k in keep}])[0]
    job["history"] = [{"state": s, "at": aware(at).isoformat(), "detail": d} for s, at, d in ledger.history(uid)]
    job["deliveries"] = as_jsonable(ledger.deliveries_of(uid))
    job["heatmap"] = _heatmap_path(current_settings(request), uid) is not None
    if admin:
        job["patient_id"] = _patient_id(request, row)
    else:
        job = {k: v for k, v in job.items() if k not in ADMIN_ONLY}
    return job


def _patient_id(request: Request, row: dict[str, Any]) -> str | None:
    from pydicom import dcmread

    try:
        ds = dcmread(request.app.state.spool.path_of(row["spool_path"]), stop_before_pixels=True, specific_tags=["PatientID"])
        return str(ds.get("PatientID", "")) or None
    except Exception:  # deleted by retention, unreadable: the page says "not available"
        return None


def _heatmap_path(settings: Settings, uid: str) -> Any:
    from node.outbox import SC_KEY_FILE, result_dir

    path = result_dir(settings.storage.data_dir, uid) / SC_KEY_FILE
    return path if path.is_file() else None


def heatmap_png(request: Request, uid: str) -> bytes:
    """The key-frame heatmap secondary capture of a job as PNG (it is burned-in RGB, PS3.3 A.8)."""
    import io

    from PIL import Image
    from pydicom import dcmread

    path = _heatmap_path(current_settings(request), uid)
    if path is None:
        raise HTTPException(404, f"job {uid[:80]!r} has no heatmap (not rendered yet, or deleted by retention)")
    ds = dcmread(path)
    pixels = ds.pixel_array
    if pixels.ndim == 4:
        pixels = pixels[0]
    image = Image.fromarray(pixels, mode="RGB" if pixels.ndim == 3 else "L")
    image.thumbnail((640, 640))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def retry_job(ledger: Ledger, settings: Settings, broker: Any, uid: str) -> dict[str, Any]:
    """The console's Retry button (as ``alnnode retry UID``): re-send results with the current
    destinations, or re-queue a job that failed before its results existed."""
    from node.outbox import retry_job as retry

    row = ledger.find(uid)
    if row is None:
        raise HTTPException(404, f"no job with SOP Instance UID {uid[:80]!r}")
    state, detail = retry(settings, ledger, broker, row)
    if state == "changed":
        raise HTTPException(409, f"job {detail}")
    return {"state": state, "detail": detail}


def recent_associations(request: Request, limit: int = 100) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from node.ledger.schema import associations

    ledger: Ledger = request.app.state.ledger
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(associations).order_by(associations.c.id.desc()).limit(max(1, min(limit, 1000))))
        return as_jsonable([dict(r._mapping) for r in rows])


def dashboard(request: Request) -> dict[str, Any]:
    """Jobs by state, loops per hour (last 24 h), failures, queue depths, worker heartbeats, disk."""
    from sqlalchemy import func, select

    from node.ledger.schema import instances
    from node.retention import disk_status

    settings = current_settings(request)
    ledger: Ledger = request.app.state.ledger
    since = now() - dt.timedelta(hours=24)
    with ledger.engine.connect() as conn:
        times = [aware(r[0]) for r in conn.execute(select(instances.c.received_at).where(instances.c.received_at >= since))]
        failed_24h = conn.execute(
            select(func.count()).where(instances.c.state == "failed", instances.c.updated_at >= since)
        ).scalar_one()
    per_hour = [0] * 24
    for t in times:
        per_hour[min(23, int((now() - t).total_seconds() // 3600))] += 1
    depths: dict[str, Any] = {}
    for queue in ("gpu", "io"):
        try:
            depths[queue] = broker_of(request).depth(queue)
        except Exception as exc:
            depths[queue] = f"unavailable ({type(exc).__name__})"
    workers = as_jsonable(ledger.live_workers(settings.queue.heartbeat_timeout))
    disk = disk_status(settings)
    return {
        "counts": ledger.counts(),
        "per_hour": list(reversed(per_hour)),  # oldest hour first
        "loops_24h": len(times),
        "failed_24h": int(failed_24h),
        "queues": depths,
        "workers": workers,
        "disk": {"free_mb": round(disk.free_mb), "alarm_mb": disk.alarm_mb, "refuse_mb": disk.refuse_mb, "alarm": disk.alarm},
    }


def public_destinations(request: Request) -> list[dict[str, Any]]:
    from node.liveconfig import public_view

    return list(public_view(current_settings(request))["destinations"])


def model_card(request: Request) -> dict[str, Any]:
    """Bundle metadata, training summary and thresholds (MONAI bundle ``configs/metadata.json``)."""
    settings = current_settings(request)
    model = settings.model
    card: dict[str, Any] = {"bundle": str(model.bundle) if model.bundle else None, "threshold": model.threshold,
                            "min_frames": model.min_frames, "device": model.device}  # fmt: skip
    if model.bundle is None:
        return card
    try:
        meta = json.loads((model.bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        card["error"] = f"configs/metadata.json unreadable: {exc}"
        return card
    for key in ("name", "arch", "version", "model_uid", "description", "data_source", "synthetic_only", "untrained",
                "intended_use", "ood", "calibration"):  # fmt: skip
        if key in meta:
            card[key] = meta[key]
    card["training"] = meta.get("training") or {}
    card["research_only"] = bool(meta.get("synthetic_only", True) or meta.get("untrained", False))
    return card
