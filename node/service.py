"""Run the node: open spool and ledger, recover, route and enqueue, listen until SIGTERM/SIGINT.

Embedded default (no ``[queue] broker_url``): the queue is kombu's filesystem transport under the
data dir and ``alnnode serve`` starts its own worker process(es). With Redis it only enqueues.
Either way a reaper re-enqueues jobs whose state has not moved for ``visibility_timeout`` seconds:
kombu's local transports keep unacknowledged messages only in memory, so a killed worker would
otherwise lose them (tasks are idempotent, so a spare message costs nothing).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.config import Settings
from node.ledger import Ledger
from node.queue import Enqueuer
from node.receive.recover import recover
from node.receive.scp import Receiver
from node.route import BundleSummary, check_bundle, skip_reason
from node.spool import Spool

logger = logging.getLogger(__name__)


@dataclass
class Node:
    """The edge service: receiver, spool, ledger, enqueuer, reaper and embedded workers."""

    settings: Settings
    spool: Spool
    ledger: Ledger
    receiver: Receiver
    bundle: BundleSummary | None = None
    config_path: Path | None = None
    enqueuer: Enqueuer | None = None
    server: Any = None
    pending: list[str] = field(default_factory=list)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _reaper: threading.Thread | None = None

    @classmethod
    def open(cls, settings: Settings, config_path: str | os.PathLike[str] | None = None) -> Node:
        bundle = check_bundle(settings)  # refuses research-only models unless allowed
        settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
        spool = Spool(settings.storage.data_dir, fsync=settings.storage.fsync)
        ledger = Ledger(settings.ledger_url)
        receiver = Receiver(settings, spool, ledger)
        node = cls(settings, spool, ledger, receiver, bundle, Path(config_path) if config_path else None)
        node.enqueuer = Enqueuer(settings, ledger)
        receiver.on_stored = node.route
        return node

    # -- routing ------------------------------------------------------------------------------
    def route(self, uid: str) -> None:
        """Classify or skip a newly recorded instance. Never raises: the job is safe in the ledger
        as ``received`` and the reaper enqueues it later if the broker is unreachable now."""
        try:
            row = self.ledger.find(uid)
            if row is None:
                return
            reason = skip_reason(self.settings, row["sop_class_uid"], row["frames"])
            if reason:
                self.ledger.set_state(uid, "skipped", reason=reason)
                logger.info("%s skipped: %s", uid, reason)
            elif self.enqueuer is not None:
                self.enqueuer.classify(uid)
        except Exception as exc:  # broker down: keep serving, the reaper retries
            logger.error("cannot enqueue %s yet (%s); the reaper will retry", uid, exc)

    def resume(self, row: dict[str, Any]) -> None:
        if row["state"] == "received":
            self.route(row["sop_instance_uid"])
        elif self.enqueuer is not None:
            try:
                self.enqueuer.resume(row["sop_instance_uid"], row["state"])
            except Exception as exc:
                logger.error("cannot re-enqueue %s (%s); will retry", row["sop_instance_uid"], exc)

    def _reap(self) -> None:
        timeout = self.settings.queue.visibility_timeout
        while not self._stop.wait(min(timeout / 4, 30.0)):
            for row in self.ledger.stale(timeout):
                logger.warning("job %s stuck in %s for over %.0f s: re-enqueued", row["sop_instance_uid"], row["state"], timeout)
                self.resume(row)

    # -- workers ------------------------------------------------------------------------------
    def _start_workers(self) -> None:
        q = self.settings.queue
        if q.broker_url or q.embedded_workers == 0 or self.bundle is None:
            return
        logs = self.settings.storage.data_dir / "logs"
        logs.mkdir(exist_ok=True)
        cmd = [sys.executable, "-m", "node.cli", "worker", "--queues", "gpu,io", "--concurrency", "1", *(["--allow-root"] if os.geteuid() == 0 else [])]
        if self.config_path:
            cmd += ["--config", str(self.config_path)]
        for i in range(q.embedded_workers):
            with open(logs / f"worker{i}.log", "ab") as log:
                proc = subprocess.Popen([*cmd, "--name", f"alnnode-embedded{i}@%h"], stdout=log, stderr=log)
            self.workers.append(proc)
            logger.info("embedded worker %d started (pid %d, log %s)", i, proc.pid, logs / f"worker{i}.log")

    def _stop_workers(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.workers:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.workers.clear()

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> tuple[str, int]:
        """Recover, re-enqueue unfinished jobs, start workers and listen; returns (host, port)."""
        self.pending = recover(self.spool, self.ledger)
        for uid in self.pending:
            row = self.ledger.find(uid)
            if row is not None:
                self.resume(row)
        self._start_workers()
        self._reaper = threading.Thread(target=self._reap, name="alnnode-reaper", daemon=True)
        self._reaper.start()
        self.server = self.receiver.start(block=False)
        host, port = self.server.server_address[:2]
        if self.bundle is not None:
            note = " — RESEARCH MODEL, not for diagnostic use" if self.bundle.research_only else ""
            logger.info("model %s (%s %s, %s)%s", self.bundle.name, self.bundle.arch, self.bundle.version, self.bundle.model_uid, note)
        logger.info("%s listening on %s:%d", self.settings.node.ae_title, host, port)
        return str(host), int(port)

    def stop(self) -> None:
        self._stop.set()
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        self._stop_workers()
        if self.enqueuer is not None:
            self.enqueuer.close()
        self.ledger.close()


def serve_forever(node: Node, ready: Callable[[str, int], None] | None = None) -> None:
    """Start ``node`` and block until SIGTERM or SIGINT, then shut down cleanly."""
    stop = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        logger.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    host, port = node.start()
    if ready:
        ready(host, port)
    try:
        stop.wait()
    finally:
        node.stop()
