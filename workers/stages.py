"""The three pipeline stages a worker runs for one job: classify -> render -> dispatch.

Each stage is idempotent and keyed by the SOP Instance UID: it reads the job's state from the ledger,
does nothing if its work is already done, and writes its outputs atomically before moving the state
on. A redelivered task therefore never duplicates work or results (result UIDs are deterministic).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from pydicom import dcmread

from node.config import Settings
from node.ledger import Ledger
from node.outbox import SC_CINE_FILE, SC_KEY_FILE, SR_FILE, dispatch_results, result_files
from node.route import skip_reason
from node.spool import Spool
from workers import gate
from workers.errors import WorkerError
from workers.results.store import PREDICTION, load_prediction, result_dir, save_dataset, save_prediction

logger = logging.getLogger(__name__)

DONE_AFTER = {
    "classify": {"classified", "rendered", "dispatched", "skipped"},
    "render": {"rendered", "dispatched", "skipped"},
    "dispatch": {"dispatched", "skipped"},
}


@dataclass
class WorkerContext:
    """What a worker process needs; the ledger engine is opened lazily (after the pool forks)."""

    settings: Settings
    device: str | None = None
    _ledger: Ledger | None = field(default=None, repr=False)

    @cached_property
    def ledger(self) -> Ledger:
        return Ledger(self.settings.ledger_url)

    @cached_property
    def spool(self) -> Spool:
        return Spool(self.settings.storage.data_dir, fsync=self.settings.storage.fsync)

    def folder(self, uid: str) -> Path:
        return result_dir(self.settings.storage.data_dir, uid)


def _job(ctx: WorkerContext, uid: str, stage: str) -> dict | None:
    row = ctx.ledger.find(uid)
    if row is None:
        logger.error("%s %s: no such job in the ledger", stage, uid)
        return None
    if row["state"] in DONE_AFTER[stage]:
        logger.info("%s %s: already done (state %s)", stage, uid, row["state"])
        return None
    return row


def classify(ctx: WorkerContext, uid: str) -> bool:
    """Run the model on the spooled loop; True when the job moved on to ``classified``."""
    row = _job(ctx, uid, "classify")
    if row is None:
        return False
    if row["state"] == "failed" and row["stage"] not in (None, "classify"):
        return False
    reason = skip_reason(ctx.settings, row["sop_class_uid"], row["frames"])
    if reason:
        ctx.ledger.set_state(uid, "skipped", reason=reason)
        logger.info("classify %s: skipped: %s", uid, reason)
        return False
    from workers.inference import predict  # torch is imported only in worker processes

    bundle = ctx.settings.model.bundle
    assert bundle is not None  # skip_reason covers a missing bundle
    try:
        prediction = predict(
            bundle, ctx.spool.path_of(row["spool_path"]), device=ctx.device, precision=ctx.settings.model.precision,
            gate=gate.rules_for(ctx.settings.model, ctx.settings.peers, row.get("calling_ae")),  # input gate (#9)
        )
    except WorkerError as exc:
        ctx.ledger.set_state(uid, "failed", stage="classify", reason=str(exc))
        logger.error("classify %s failed: %s", uid, exc)
        return False
    save_prediction(ctx.folder(uid), prediction)
    ctx.ledger.set_state(uid, "classified", **gate.classified_values(prediction, ctx.folder(uid)))
    return True


def render(ctx: WorkerContext, uid: str) -> bool:
    """Write the SR and the secondary captures; True when the job moved on to ``rendered``."""
    row = _job(ctx, uid, "render")
    if row is None:
        return False
    folder = ctx.folder(uid)
    if not (folder / PREDICTION).exists():
        logger.warning("render %s: no prediction on disk (state %s); classifying again", uid, row["state"])
        ctx.ledger.set_state(uid, "queued", reason="prediction missing, re-classify")
        return False
    from workers.decode import load_clip
    from workers.results import build_cine_sc, build_key_frame_sc, build_sr

    prediction = load_prediction(folder)
    path = ctx.spool.path_of(row["spool_path"])
    threshold = gate.operating_threshold(ctx.settings.model.threshold, prediction.model)
    if not prediction.assessable:  # input gate (#9): an SR that says why, no heatmaps
        try:
            save_dataset(folder, SR_FILE, build_sr(prediction, dcmread(path, stop_before_pixels=True), threshold=threshold))
        except WorkerError as exc:
            ctx.ledger.set_state(uid, "failed", stage="render", reason=str(exc))
            return False
        ctx.ledger.set_state(uid, "rendered", reason=gate.not_assessable_reason(prediction.not_assessable))
        return True
    try:
        source = dcmread(path, stop_before_pixels=True)
        clip = load_clip(path)
        key = clip.frames([prediction.key_frame])[0]
        cine = clip.frames(list(prediction.cam_frames))
        sc_key = build_key_frame_sc(prediction, source, key, threshold=threshold)
        sc_cine = build_cine_sc(prediction, source, cine, threshold=threshold)
        sr = build_sr(prediction, source, threshold=threshold, heatmaps=[sc_key, sc_cine])
    except WorkerError as exc:
        ctx.ledger.set_state(uid, "failed", stage="render", reason=str(exc))
        logger.error("render %s failed: %s", uid, exc)
        return False
    save_dataset(folder, SC_KEY_FILE, sc_key)
    save_dataset(folder, SC_CINE_FILE, sc_cine)
    save_dataset(folder, SR_FILE, sr)
    ctx.ledger.set_state(uid, "rendered")
    return True


def dispatch(ctx: WorkerContext, uid: str, *, force: bool = False) -> bool:
    """Send the results to every destination; True when all of them acknowledged."""
    row = ctx.ledger.find(uid)
    if row is None:
        return False
    if not force and _job(ctx, uid, "dispatch") is None:
        return False
    reason = gate.not_assessable(ctx.folder(uid))  # input gate (#9): only the SR, and status keeps the reason
    files = [ctx.folder(uid) / SR_FILE] if reason else result_files(ctx.settings, uid)
    ok = dispatch_results(ctx.settings, ctx.ledger, uid, files)
    if ok and reason:
        ctx.ledger.set_state(uid, "dispatched", reason=f"{gate.not_assessable_reason(reason)}; {ctx.ledger.find(uid)['reason']}")  # type: ignore[index]
    return ok
