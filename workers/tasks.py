"""Thin Celery tasks: take a SOP Instance UID, run one idempotent stage, enqueue the next."""

from __future__ import annotations

import logging

from node.queue import QUEUE_OF, TASK_CLASSIFY, TASK_DISPATCH, TASK_RENDER
from workers import stages
from workers.celery_app import TIME_LIMITS, app, context

logger = logging.getLogger(__name__)


def _next(task: str, uid: str) -> None:
    app.send_task(task, args=[uid], queue=QUEUE_OF[task])


@app.task(name=TASK_CLASSIFY, acks_late=True, soft_time_limit=TIME_LIMITS["classify"][0], time_limit=TIME_LIMITS["classify"][1])
def classify(sop_instance_uid: str) -> None:
    if stages.classify(context(), sop_instance_uid):
        _next(TASK_RENDER, sop_instance_uid)


@app.task(name=TASK_RENDER, acks_late=True, soft_time_limit=TIME_LIMITS["render"][0], time_limit=TIME_LIMITS["render"][1])
def render(sop_instance_uid: str) -> None:
    if stages.render(context(), sop_instance_uid):
        _next(TASK_DISPATCH, sop_instance_uid)
    elif (row := context().ledger.find(sop_instance_uid)) is not None and row["state"] == "queued":
        _next(TASK_CLASSIFY, sop_instance_uid)


@app.task(name=TASK_DISPATCH, acks_late=True, soft_time_limit=TIME_LIMITS["dispatch"][0], time_limit=TIME_LIMITS["dispatch"][1])
def dispatch(sop_instance_uid: str) -> None:
    stages.dispatch(context(), sop_instance_uid)
