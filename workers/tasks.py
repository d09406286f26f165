"""Thin Celery tasks: take a SOP Instance UID, run one idempotent stage, send the next or retry."""

from __future__ import annotations

import logging
import time
from typing import Any

from node.config import TIME_LIMITS
from node.ledger import now
from node.metrics import observe_inference, observe_transition
from node.queue import QUEUE_OF, TASK_CLASSIFY, TASK_DISPATCH, TASK_RENDER
from workers import stages
from workers.celery_app import app, context

logger = logging.getLogger(__name__)


def _run(task: Any, stage: str, uid: str) -> None:
    ctx = context()
    if ctx.live is not None:
        ctx.settings = ctx.live.current()  # destinations, threshold changed in the TOML: used from this job on
    started, t0 = now(), time.monotonic()
    outcome = stages.run(ctx, stage, uid)
    if observe_transition(ctx.ledger, uid, stage, started) and stage == "classify":
        observe_inference(time.monotonic() - t0, _gpu_peak(ctx.device))
    if outcome.next_task is not None:
        # If the broker is down now, the job waits unclaimed and the node's reaper sends it again.
        app.send_task(outcome.next_task, args=[uid], queue=QUEUE_OF[outcome.next_task], retry=False)
    if outcome.retry_in is not None:
        # Celery's own retry: a new message with a countdown; no worker is held while it waits.
        raise task.retry(countdown=outcome.retry_in, max_retries=None)


def _gpu_peak(device: str | None) -> tuple[str, float] | None:
    """(device, peak CUDA bytes allocated by this process) when the model runs on CUDA."""
    import torch

    if not torch.cuda.is_available() or (device is not None and not device.startswith("cuda")):
        return None
    dev = torch.device(device or "cuda")
    return str(dev), float(torch.cuda.max_memory_allocated(dev))


def _limits(stage: str) -> dict[str, Any]:
    soft, hard = TIME_LIMITS[stage]
    return {"bind": True, "acks_late": True, "soft_time_limit": soft, "time_limit": hard}


@app.task(name=TASK_CLASSIFY, **_limits("classify"))
def classify(self: Any, sop_instance_uid: str) -> None:
    _run(self, "classify", sop_instance_uid)


@app.task(name=TASK_RENDER, **_limits("render"))
def render(self: Any, sop_instance_uid: str) -> None:
    _run(self, "render", sop_instance_uid)


@app.task(name=TASK_DISPATCH, **_limits("dispatch"))
def dispatch(self: Any, sop_instance_uid: str) -> None:
    _run(self, "dispatch", sop_instance_uid)
