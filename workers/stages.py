"""The three pipeline stages a worker runs for one job: classify -> render -> dispatch.

Each stage is idempotent and keyed by the SOP Instance UID. It first *claims* its job in the ledger
(compare-and-set on the states it starts from, plus a worker id and a heartbeat refreshed while it
runs, counting an attempt); a duplicate or late task finds the job claimed or moved on and does
nothing. Outputs are written atomically before the state moves on, and result UIDs are
deterministic, so a redelivered task never duplicates results.

Failures: a ``WorkerError`` (a loop that cannot be decoded, a model that refuses it) fails the job at
once; any other exception (a bug, an I/O error, a soft time limit, CUDA out of memory) is retried
with backoff and fails the job after ``queue.max_attempts`` attempts with its type and message; a
transient delivery fault is retried for the destination's ``retry_for``.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import TracebackType

from pydicom import dcmread

from node.config import Settings
from node.ledger import Ledger, aware, now
from node.ledger.states import EXPECTED
from node.liveconfig import LiveSettings
from node.outbox import (
    SC_CINE_FILE,
    SC_KEY_FILE,
    SR_FILE,
    dispatch_once,
    next_delay,
    result_files,
    retry_budget,
)
from node.queue import TASK_CLASSIFY, TASK_DISPATCH, TASK_RENDER
from node.route import skip_reason
from node.spool import Spool
from workers import gate
from workers.errors import WorkerError
from workers.results.store import PREDICTION, load_prediction, result_dir, save_dataset, save_prediction

logger = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    """What a worker process needs; the ledger engine is opened lazily (after the pool forks)."""

    settings: Settings
    device: str | None = None
    worker_id: str = field(default_factory=lambda: f"local-{os.getpid()}")
    queues: tuple[str, ...] = ("gpu", "io")
    live: LiveSettings | None = None  # follows the config file (node.liveconfig)

    @cached_property
    def ledger(self) -> Ledger:
        return Ledger(self.settings.ledger_url)

    @cached_property
    def spool(self) -> Spool:
        return Spool(self.settings.storage.data_dir, fsync=self.settings.storage.fsync)

    @property
    def claimant(self) -> str:
        """The id this process claims jobs with: its worker's id and its own pid (pool processes)."""
        return f"{self.worker_id}/{os.getpid()}"

    def folder(self, uid: str) -> Path:
        return result_dir(self.settings.storage.data_dir, uid)


@dataclass(frozen=True)
class Outcome:
    next_task: str | None = None  # the task to send next
    retry_in: float | None = None  # retry this stage after that many seconds


class Heartbeat:
    """Refreshes a claim's heartbeat every ``interval`` seconds while a stage runs."""

    def __init__(self, ledger: Ledger, uid: str, claimant: str, interval: float) -> None:
        self.ledger, self.uid, self.claimant, self.interval = ledger, uid, claimant, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alnnode-claim-beat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.ledger.heartbeat(self.uid, self.claimant)
            except Exception as exc:  # the ledger may be restarting: the next beat tries again
                logger.warning("heartbeat of %s failed: %s: %s", self.uid, type(exc).__name__, exc)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(5)


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {text}"[:300]


def run(ctx: WorkerContext, stage: str, uid: str) -> Outcome:
    """Claim the job for ``stage``, run it, and record the outcome; never raises for a job's fault."""
    q = ctx.settings.queue
    me = ctx.claimant
    attempt = ctx.ledger.claim(uid, EXPECTED[stage], me, stale_after=q.heartbeat_timeout)
    if attempt is None:
        row = ctx.ledger.find(uid)
        what = "no such job" if row is None else f"state {row['state']}, claimed by {row['claimed_by']}"
        logger.info("%s %s: nothing to do (%s)", stage, uid, what)
        return Outcome()
    if attempt > q.max_attempts:
        row = ctx.ledger.find(uid) or {}
        reason = f"gave up after {attempt - 1} attempt(s): {row.get('reason') or 'worker lost'}"
        ctx.ledger.transition(uid, "failed", expected=EXPECTED[stage], stage=stage, reason=reason, claimed_by=me)
        logger.error("%s %s failed: %s", stage, uid, reason)
        return Outcome()
    with Heartbeat(ctx.ledger, uid, me, max(1.0, q.heartbeat_timeout / 6)):
        try:
            return STAGES[stage](ctx, uid, me)
        except WorkerError as exc:
            ctx.ledger.transition(uid, "failed", expected=EXPECTED[stage], stage=stage, reason=str(exc), claimed_by=me)
            logger.error("%s %s failed: %s", stage, uid, exc)
            return Outcome()
        except Exception as exc:  # SoftTimeLimitExceeded, OSError, CUDA OOM, bugs: bounded retries
            reason = one_line(exc)
            logger.exception("%s %s: attempt %d of %d failed: %s", stage, uid, attempt, q.max_attempts, reason)
            if attempt >= q.max_attempts:
                text = f"{reason} (attempt {attempt} of {q.max_attempts})"
                ctx.ledger.transition(uid, "failed", expected=EXPECTED[stage], stage=stage, reason=text, claimed_by=me)
                return Outcome()
            delay = float(min(60.0, 2.0**attempt))
            ctx.ledger.release(uid, me, reason=f"attempt {attempt} failed: {reason}", retry_in=delay)
            return Outcome(retry_in=delay)


def classify(ctx: WorkerContext, uid: str, me: str) -> Outcome:
    """Run the model on the spooled loop; the job moves on to ``classified`` (or ``skipped``)."""
    row = ctx.ledger.find(uid)
    assert row is not None  # claimed a moment ago
    reason = skip_reason(ctx.settings, row["sop_class_uid"], row["frames"])
    if reason:
        ctx.ledger.transition(uid, "skipped", expected=EXPECTED["classify"], reason=reason, claimed_by=me)
        logger.info("classify %s: skipped: %s", uid, reason)
        return Outcome()
    from workers.inference import predict  # torch is imported only in worker processes

    bundle = ctx.settings.model.bundle
    assert bundle is not None  # skip_reason covers a missing bundle
    prediction = predict(
        bundle, ctx.spool.path_of(row["spool_path"]), device=ctx.device, precision=ctx.settings.model.precision,
        gate=gate.rules_for(ctx.settings.model, ctx.settings.peers, row.get("calling_ae")),  # input gate (#9)
    )
    save_prediction(ctx.folder(uid), prediction)
    moved = ctx.ledger.transition(
        uid, "classified", expected=EXPECTED["classify"], claimed_by=me, **gate.classified_values(prediction, ctx.folder(uid))
    )
    return Outcome(next_task=TASK_RENDER if moved else None)


def render(ctx: WorkerContext, uid: str, me: str) -> Outcome:
    """Write the SR and the secondary captures; the job moves on to ``rendered``."""
    row = ctx.ledger.find(uid)
    assert row is not None
    folder = ctx.folder(uid)
    if not (folder / PREDICTION).exists():
        logger.warning("render %s: no prediction on disk; classifying again", uid)
        moved = ctx.ledger.transition(uid, "queued", expected=EXPECTED["render"], reason="prediction missing, re-classify", claimed_by=me)
        return Outcome(next_task=TASK_CLASSIFY if moved else None)
    from workers.decode import load_clip
    from workers.results import build_cine_sc, build_key_frame_sc, build_sr

    prediction = load_prediction(folder)
    path = ctx.spool.path_of(row["spool_path"])
    threshold = gate.operating_threshold(ctx.settings.model.threshold, prediction.model)
    source = dcmread(path, stop_before_pixels=True)
    if not prediction.assessable:  # input gate (#9): an SR that says why, no heatmaps
        save_dataset(folder, SR_FILE, build_sr(prediction, source, threshold=threshold))
        moved = ctx.ledger.transition(uid, "rendered", expected=EXPECTED["render"], claimed_by=me,
                                      reason=gate.not_assessable_reason(prediction.not_assessable))  # fmt: skip
        return Outcome(next_task=TASK_DISPATCH if moved else None)
    clip = load_clip(path)
    key = clip.frames([prediction.key_frame])[0]
    cine = clip.frames(list(prediction.cam_frames))
    sc_key = build_key_frame_sc(prediction, source, key, threshold=threshold)
    sc_cine = build_cine_sc(prediction, source, cine, threshold=threshold)
    sr = build_sr(prediction, source, threshold=threshold, heatmaps=[sc_key, sc_cine])
    save_dataset(folder, SC_KEY_FILE, sc_key)
    save_dataset(folder, SC_CINE_FILE, sc_cine)
    save_dataset(folder, SR_FILE, sr)
    moved = ctx.ledger.transition(uid, "rendered", expected=EXPECTED["render"], claimed_by=me)
    return Outcome(next_task=TASK_DISPATCH if moved else None)


def dispatch(ctx: WorkerContext, uid: str, me: str) -> Outcome:
    """Send the results to every destination; transient faults are retried without holding a worker."""
    settings = ctx.settings
    expected = EXPECTED["dispatch"]
    folder = ctx.folder(uid)
    gated = gate.not_assessable(folder)  # input gate (#9): status keeps the reason
    note = f"{gate.not_assessable_reason(gated)}; " if gated else ""
    if not settings.destinations:
        ctx.ledger.transition(uid, "dispatched", expected=expected, reason=f"{note}no destinations configured; results in {folder}", claimed_by=me)
        return Outcome()
    outcome = dispatch_once(settings, ctx.ledger, uid, result_files(settings, uid))  # the SR alone when gated
    if outcome.done:
        ctx.ledger.transition(uid, "dispatched", expected=expected, reason=note + ", ".join(outcome.delivered), claimed_by=me)
        return Outcome()
    if outcome.missing or outcome.permanent:
        ctx.ledger.transition(uid, "failed", expected=expected, stage="dispatch", reason=outcome.reason(), claimed_by=me)
        logger.error("dispatch %s failed: %s", uid, outcome.reason())
        return Outcome()
    row = ctx.ledger.find(uid) or {}
    first = row.get("first_failure_at")
    elapsed = 0.0 if first is None else (now() - aware(first)).total_seconds()
    failing = list(outcome.transient)
    if elapsed >= retry_budget(settings, failing):
        reason = f"gave up after {elapsed:.0f} s of retries: {outcome.reason()}"
        ctx.ledger.transition(uid, "failed", expected=expected, stage="dispatch", reason=reason, claimed_by=me)
        logger.error("dispatch %s failed: %s", uid, reason)
        return Outcome()
    tries = max((d["attempts"] for d in ctx.ledger.deliveries_of(uid)), default=1)
    delay = next_delay(settings, failing, tries)
    logger.warning("dispatch %s: %s; retrying in %.0f s", uid, outcome.reason(), delay)
    ctx.ledger.release(uid, me, reason=f"retrying in {delay:.0f} s: {outcome.reason()}", retry_in=delay, counted=False)
    return Outcome(retry_in=delay)


STAGES = {"classify": classify, "render": render, "dispatch": dispatch}
