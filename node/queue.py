"""The broker side of the job plane: task names, shared Celery settings, sending and queue depth.

The node never imports the worker code (which pulls torch): it sends tasks by name. The Celery
configuration is shared with ``workers.celery_app`` so both sides agree on the broker, queues and
reliability settings. Embedded default: kombu's ``filesystem://`` transport under ``data_dir/queue``
(messages are files: they survive a crash of any process). Scale-out: Redis.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from kombu.exceptions import ChannelError, OperationalError

from node.config import TIME_LIMITS, Settings
from node.ledger.states import QUEUE_OF_STAGE, STAGE_OF

logger = logging.getLogger(__name__)

TASK_CLASSIFY = "alnnode.classify"
TASK_RENDER = "alnnode.render"
TASK_DISPATCH = "alnnode.dispatch"
TASK_OF_STAGE = {"classify": TASK_CLASSIFY, "render": TASK_RENDER, "dispatch": TASK_DISPATCH}
QUEUE_OF = {TASK_OF_STAGE[stage]: queue for stage, queue in QUEUE_OF_STAGE.items()}
QUEUES = ("gpu", "io")
# Which task continues a job from the state the ledger shows (after restarts and by the reaper).
NEXT_TASK = {state: TASK_OF_STAGE[stage] for state, stage in STAGE_OF.items()}

__all__ = ["NEXT_TASK", "QUEUES", "QUEUE_OF", "TASK_CLASSIFY", "TASK_DISPATCH", "TASK_RENDER", "TIME_LIMITS", "Broker", "celery_config"]


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings shared by the node (producer) and the workers."""
    q = settings.queue
    if q.broker_url:
        broker = q.broker_url.get_secret_value()
        # Longer than any task may run (checked in config): Redis must not hand a running task to
        # a second worker. A dead worker's job is recovered by the reaper long before.
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
        "broker_connection_retry": True,
        "broker_connection_max_retries": None,  # a worker waits for its broker forever
        "broker_connection_timeout": 4.0,
        "broker_heartbeat": 10,
        # A lost connection cancels unacknowledged tasks (they are redelivered), instead of acking
        # them into a dead channel (Celery 5.x, issues #8030, #9054).
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_publish_retry": False,  # the publisher thread and the reaper retry, never a blocked handler
        "task_ignore_result": True,
        "task_acks_late": True,  # a message is acknowledged only after its task finished
        "task_reject_on_worker_lost": True,  # a killed pool process's task goes back to the queue
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


class Broker:
    """Sends tasks by name and reads queue depths (a thin wrapper of a producer-only Celery app)."""

    def __init__(self, settings: Settings) -> None:
        self.app = Celery("alnnode-node")
        self.app.conf.update(celery_config(settings))

    def send(self, task: str, sop_instance_uid: str, countdown: float | None = None) -> None:
        """Publish ``task`` for one job; raises ``kombu.exceptions.OperationalError`` when the broker is down."""
        self.app.send_task(task, args=[sop_instance_uid], queue=QUEUE_OF[task], countdown=countdown, retry=False)
        logger.debug("sent %s for %s", task, sop_instance_uid)

    def depth(self, queue: str) -> int:
        """Messages ready in ``queue`` (0 for a queue nobody declared yet)."""
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=4)
            try:
                return int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)
            except ChannelError:
                return 0

    def reachable(self) -> bool:
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=4)
            return True
        except (OperationalError, OSError):
            return False

    def close(self) -> None:
        self.app.close()
