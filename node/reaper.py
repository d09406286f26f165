"""The node's two job-plane threads: the publisher and the reaper.

- **Publisher**: the C-STORE handler only records a job (``received``) and wakes the publisher, which
  routes it (classify or skip) and sends the task; a broker that is down never delays an acknowledged
  store, and unsent jobs are sent when it returns (the ledger is the outbox).
- **Reaper**: recovery by worker liveness, not by a timer on the task. A job whose claimant has not
  beaten for ``queue.heartbeat_timeout`` is handed back to its queue (the attempt stays counted); a
  job that waits unclaimed while its queue holds fewer messages than there are such jobs lost its
  message (a killed worker held it) and is sent again. Nothing is sent to a queue that no live worker
  reads. Every error is logged and the thread goes on.
Duplicate messages are harmless: stages claim with compare-and-set.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from datetime import timedelta
from typing import Any

from node.config import Settings
from node.ledger import Ledger, aware, now
from node.ledger.states import QUEUE_OF_STAGE, STAGE_OF
from node.queue import NEXT_TASK, TASK_CLASSIFY, Broker
from node.route import skip_reason

logger = logging.getLogger(__name__)


def resend_claims_of(
    ledger: Ledger, broker: Broker, worker_id: str | None, reason: str | None = None, *, forget_worker: bool = True
) -> list[str]:
    """A worker (or one pool process ``worker/pid``) is known dead (``None``: every worker is): release
    its claims and send their stages again now; returns the UIDs."""
    rows = ledger.release_claims(worker_id)
    if worker_id is not None and forget_worker:
        ledger.remove_worker(worker_id)
    uids = []
    for row in rows:
        uid = row["sop_instance_uid"]
        note = reason or f"worker {row['claimed_by']} died during {STAGE_OF.get(row['state'], row['state'])} (attempt {row['attempts']})"
        _note(ledger, uid, note)
        try:
            broker.send(NEXT_TASK[row["state"]], uid)
        except Exception as exc:  # the reaper sends it later
            logger.warning("cannot re-send %s now: %s", uid, exc)
        uids.append(uid)
        logger.warning("job %s: %s; sent again", uid, note)
    return uids


def _note(ledger: Ledger, uid: str, reason: str) -> None:
    from sqlalchemy import update

    from node.ledger import instances

    with ledger.engine.begin() as conn:
        conn.execute(update(instances).where(instances.c.sop_instance_uid == uid).values(reason=reason))


class Publisher(threading.Thread):
    """Routes and sends every ``received`` job; woken by the receiver, and every few seconds."""

    def __init__(self, settings: Settings, ledger: Ledger, broker: Broker, period: float = 2.0) -> None:
        super().__init__(name="alnnode-publisher", daemon=True)
        self.settings, self.ledger, self.broker, self.period = settings, ledger, broker, period
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self._failing = False

    def publish_pending(self) -> int:
        sent = 0
        for row in self.ledger.in_state("received"):
            uid = row["sop_instance_uid"]
            reason = skip_reason(self.settings, row["sop_class_uid"], row["frames"])
            if reason:
                self.ledger.transition(uid, "skipped", expected=["received"], reason=reason)
                logger.info("%s skipped: %s", uid, reason)
                continue
            self.broker.send(TASK_CLASSIFY, uid)  # raises when the broker is down: try again later
            self.ledger.transition(uid, "queued", expected=["received"])
            sent += 1
        return sent

    def run(self) -> None:
        while not self.stopping.is_set():
            self.wake.wait(self.period)
            self.wake.clear()
            try:
                self.publish_pending()
                if self._failing:
                    logger.warning("publisher: sending tasks again")
                self._failing = False
            except Exception as exc:
                if not self._failing:
                    logger.error("publisher: cannot send tasks (%s: %s); jobs stay recorded and are sent later", type(exc).__name__, exc)
                self._failing = True

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()


class Reaper(threading.Thread):
    def __init__(self, settings: Settings, ledger: Ledger, broker: Broker) -> None:
        super().__init__(name="alnnode-reaper", daemon=True)
        self.settings, self.ledger, self.broker = settings, ledger, broker
        self.timeout = settings.queue.heartbeat_timeout
        self.period = min(5.0, self.timeout / 6)
        self.stopping = threading.Event()
        self._unserved_since: dict[str, float] = {}  # queue -> when jobs started waiting with no live reader
        self._alarmed: set[str] = set()

    def reap_stale_claims(self, live_queues: set[str]) -> list[str]:
        """Hand jobs whose claimant stopped beating back to their queue (sent at once when a live
        worker reads it, else by ``resend_lost`` once one does)."""
        uids = []
        for row in self.ledger.release_claims(older_than=self.timeout):
            uid = row["sop_instance_uid"]
            stage = STAGE_OF.get(row["state"], row["state"])
            note = f"worker {row['claimed_by']} stopped responding during {stage} (attempt {row['attempts']})"
            _note(self.ledger, uid, note)
            if QUEUE_OF_STAGE.get(stage) in live_queues:
                self.broker.send(NEXT_TASK[row["state"]], uid)
            logger.warning("job %s: %s; handed back to the queue", uid, note)
            uids.append(uid)
        return uids

    def resend_lost(self, live_queues: set[str]) -> list[str]:
        """Send again the oldest waiting jobs that no message in their queue accounts for."""
        t = now()
        stale = t - timedelta(seconds=self.timeout)
        by_queue: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in self.ledger.waiting():
            if row["state"] == "received":  # the publisher's
                continue
            retry_at = row["retry_at"]
            if retry_at is not None and aware(retry_at) > stale:  # a retry a worker holds with a countdown
                continue
            by_queue[QUEUE_OF_STAGE[STAGE_OF[row["state"]]]].append(row)
        resent: list[str] = []
        for queue, rows in by_queue.items():
            if queue not in live_queues:
                since = self._unserved_since.setdefault(queue, time.monotonic())
                if time.monotonic() - since > self.timeout and queue not in self._alarmed:
                    logger.error("%d job(s) wait for queue %r but no live worker reads it", len(rows), queue)
                    self._alarmed.add(queue)
                continue
            self._unserved_since.pop(queue, None)
            self._alarmed.discard(queue)
            deficit = len(rows) - self.broker.depth(queue)
            lost = [r for r in rows if aware(r["updated_at"]) < stale][: max(deficit, 0)]
            for row in lost:
                uid = row["sop_instance_uid"]
                self.broker.send(NEXT_TASK[row["state"]], uid)
                self.ledger.touch(uid)
                logger.warning("job %s waited %s in %s with no message for it: sent again", uid, row["state"], queue)
                resent.append(uid)
        return resent

    def run_once(self) -> list[str]:
        live = self.ledger.live_workers(self.timeout)
        queues = {q for w in live for q in str(w["queues"]).split(",")}
        return self.reap_stale_claims(queues) + self.resend_lost(queues)

    def run(self) -> None:
        while not self.stopping.wait(self.period):
            try:
                self.run_once()
            except Exception as exc:  # ledger or broker down: log and try again next period
                logger.error("reaper: %s: %s", type(exc).__name__, exc)

    def stop(self) -> None:
        self.stopping.set()
