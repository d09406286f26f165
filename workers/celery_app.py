"""The Celery app of the compute plane (``proj/celery.py`` in Celery's layout).

Configured at worker start from the validated node configuration (``configure``), never from the
environment at import time. Queues: ``gpu`` (classify) and ``io`` (render, dispatch).

Liveness (shared/DESIGN.md): the worker's main process writes a heartbeat to the ledger's workers
registry every few seconds and checks its own consumer: when the broker is reachable and one of its
queues holds messages but nothing has been received for a while although the worker is idle, the
consumer has stopped (Celery issues #8030, #9054, #10205, seen after a Redis outage) and the process
exits so that its supervisor starts a fresh one. Pool processes die with their worker.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from celery import Celery, signals
from celery.worker import state as worker_state

from node.config import Settings
from node.liveconfig import LiveSettings
from node.queue import Broker, celery_config
from node.supervise import ENV_WORKER_ID, die_with_parent
from workers.stages import WorkerContext

logger = logging.getLogger(__name__)

app = Celery("alnnode", include=["workers.tasks"])

STALL_AFTER = 20.0  # seconds idle with messages waiting before the consumer counts as stopped
EXIT_STALLED = 75


def configure(settings: Settings, device: str | None = None, queues: tuple[str, ...] = ("gpu", "io"), config_path: str | None = None) -> Celery:
    """Apply the shared Celery settings and bind the worker context to the app."""
    app.conf.update(celery_config(settings))
    app.conf.worker_max_tasks_per_child = 200
    app.conf.worker_proc_alive_timeout = 300  # a pool process loads the model before it says it is up
    worker_id = os.environ.get(ENV_WORKER_ID) or f"{socket.gethostname()}-{os.getpid()}"
    live = LiveSettings(config_path, settings) if config_path else None
    app.alnnode = WorkerContext(settings, device=device, worker_id=worker_id, queues=queues, live=live)  # type: ignore[attr-defined]
    return app


def context() -> WorkerContext:
    ctx = getattr(app, "alnnode", None)
    if ctx is None:
        raise RuntimeError("workers.celery_app.configure(settings) was not called in this process")
    return ctx


@signals.worker_process_init.connect
def _pool_process_init(**_kwargs: Any) -> None:
    die_with_parent()  # a SIGKILLed worker leaves no pool process behind
    ctx = getattr(app, "alnnode", None)
    if ctx is None or "gpu" not in ctx.queues or ctx.settings.model.bundle is None:
        return
    # Load the model now, not with the first loop: a worker that takes over a dead one's job (or the
    # first loop of the day) then waits only for inference.
    try:
        from workers.inference import get_bundle

        get_bundle(ctx.settings.model.bundle, ctx.device)
    except Exception as exc:  # the classify stage reports it per job
        logger.warning("cannot preload model bundle %s: %s: %s", ctx.settings.model.bundle, type(exc).__name__, exc)


_last_received = time.monotonic()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead
    except (OSError, IndexError):
        return False


@signals.task_received.connect
def _received(**_kwargs: Any) -> None:
    global _last_received
    _last_received = time.monotonic()


class WorkerBeat(threading.Thread):
    """Registry heartbeat and consumer self-check of one worker process (runs in its main process)."""

    def __init__(self, ctx: WorkerContext) -> None:
        super().__init__(name="alnnode-worker-beat", daemon=True)
        self.ctx = ctx
        self.interval = max(1.0, ctx.settings.queue.heartbeat_timeout / 6)
        self.stop = threading.Event()
        self.broker = Broker(ctx.settings)
        self.stall_since: float | None = None

    def beat(self) -> None:
        self.ctx.ledger.worker_heartbeat(
            self.ctx.worker_id, host=socket.gethostname(), pid=os.getpid(), queues=",".join(self.ctx.queues)
        )
        self.release_dead_pool_processes()

    def release_dead_pool_processes(self) -> None:
        """A pool process of ours that died mid-stage (OOM killer, segfault, a loop that kills it) left its
        claim: hand the job back now instead of after the heartbeat timeout (the attempt stays counted)."""
        from node.reaper import resend_claims_of

        for row in self.ctx.ledger.claims_of(self.ctx.worker_id):
            pid = int(str(row["claimed_by"]).rsplit("/", 1)[1])
            if not _alive(pid):
                resend_claims_of(self.ctx.ledger, self.broker, str(row["claimed_by"]), forget_worker=False)

    def stalled(self) -> str | None:
        """Why the consumer counts as stopped, or None: idle, with messages waiting in one of its
        queues, continuously for ``STALL_AFTER`` seconds (a message just published is not a stall)."""
        t = time.monotonic()
        if worker_state.active_requests or worker_state.reserved_requests or t - _last_received < STALL_AFTER:
            self.stall_since = None
            return None
        waiting = {q: n for q in self.ctx.queues if (n := self.broker.depth(q))}
        if not waiting:
            self.stall_since = None
            return None
        if self.stall_since is None:
            self.stall_since = t
        if t - self.stall_since < STALL_AFTER:
            return None
        queue, depth = next(iter(waiting.items()))
        return f"{depth} message(s) wait in queue {queue!r} and none was received for {t - _last_received:.0f} s"

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self.beat()
            except Exception as exc:  # the ledger may be down for a while: keep beating
                logger.warning("worker heartbeat failed: %s: %s", type(exc).__name__, exc)
            try:
                why = self.stalled()
            except Exception:  # broker unreachable: Celery's own reconnection is at work
                continue
            if why:
                logger.error("consumer stopped (%s): exiting so that the supervisor starts a fresh worker", why)
                logging.shutdown()
                os._exit(EXIT_STALLED)


_beat: WorkerBeat | None = None


@signals.worker_ready.connect
def _worker_ready(**_kwargs: Any) -> None:
    global _beat, _last_received
    ctx = getattr(app, "alnnode", None)
    if ctx is None:
        return
    _last_received = time.monotonic()
    _beat = WorkerBeat(ctx)
    try:
        _beat.beat()
    except Exception as exc:
        logger.warning("worker heartbeat failed: %s: %s", type(exc).__name__, exc)
    _beat.start()
    logger.info("worker %s ready (queues %s)", ctx.worker_id, ",".join(ctx.queues))


@signals.worker_shutdown.connect
def _worker_shutdown(**_kwargs: Any) -> None:
    ctx = getattr(app, "alnnode", None)
    if _beat is not None:
        _beat.stop.set()
    if ctx is not None:
        try:
            ctx.ledger.remove_worker(ctx.worker_id)
        except Exception as exc:
            logger.warning("cannot remove worker %s from the registry: %s", ctx.worker_id, exc)
