"""Enqueueing by task name: the node never imports the worker code (which pulls torch).

The Celery configuration is shared with ``workers.celery_app`` so both sides agree on the broker,
queues and reliability settings. Embedded default: kombu's ``filesystem://`` transport under
``data_dir/queue`` (messages are files: they survive a crash of any process). Scale-out: Redis.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from node.config import Settings
from node.ledger import Ledger

logger = logging.getLogger(__name__)

TASK_CLASSIFY = "alnnode.classify"
TASK_RENDER = "alnnode.render"
TASK_DISPATCH = "alnnode.dispatch"
QUEUE_OF = {TASK_CLASSIFY: "gpu", TASK_RENDER: "io", TASK_DISPATCH: "io"}

# Which task continues a job from the state the ledger shows (used after restarts and by the reaper).
NEXT_TASK = {"received": TASK_CLASSIFY, "queued": TASK_CLASSIFY, "classified": TASK_RENDER, "rendered": TASK_DISPATCH}


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings shared by the node (producer) and the workers."""
    q = settings.queue
    if q.broker_url:
        broker = q.broker_url
        transport: dict[str, Any] = {"visibility_timeout": q.visibility_timeout}
    else:
        folder = settings.storage.data_dir / "queue"
        for sub in ("messages", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        broker = "filesystem://"
        transport = {
            "data_folder_in": str(folder / "messages"),
            "data_folder_out": str(folder / "messages"),
            "control_folder": str(folder / "control"),
        }
    return {
        "broker_url": broker,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "task_ignore_result": True,
        "task_acks_late": True,  # a message is acknowledged only after its task finished
        "task_reject_on_worker_lost": True,  # a killed worker's task goes back to the queue
        "worker_prefetch_multiplier": 1,
        "task_routes": {name: {"queue": queue} for name, queue in QUEUE_OF.items()},
        "task_default_queue": "io",
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_hijack_root_logger": False,
        "worker_enable_remote_control": False,
        "worker_send_task_events": False,
        "timezone": "UTC",
    }


class Enqueuer:
    """Sends tasks by name and records the job state in the ledger."""

    def __init__(self, settings: Settings, ledger: Ledger) -> None:
        self.ledger = ledger
        self.app = Celery("alnnode-node")
        self.app.conf.update(celery_config(settings))

    def send(self, task: str, sop_instance_uid: str) -> None:
        self.app.send_task(task, args=[sop_instance_uid], queue=QUEUE_OF[task])
        logger.info("enqueued %s for %s", task, sop_instance_uid)

    def classify(self, sop_instance_uid: str) -> None:
        """Enqueue classification; the job becomes ``queued``."""
        self.send(TASK_CLASSIFY, sop_instance_uid)
        self.ledger.set_state(sop_instance_uid, "queued")

    def resume(self, sop_instance_uid: str, state: str) -> None:
        """Re-enqueue the task that continues a job in ``state`` (tasks are idempotent)."""
        task = NEXT_TASK.get(state)
        if task is None:
            return
        if task == TASK_CLASSIFY:
            self.classify(sop_instance_uid)
        else:
            self.send(task, sop_instance_uid)
            self.ledger.touch(sop_instance_uid)

    def close(self) -> None:
        self.app.close()
