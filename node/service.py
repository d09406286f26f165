"""Run the node: open spool and ledger, recover, listen, and run the job plane until SIGTERM/SIGINT.

Threads of ``alnnode serve``: the DICOM listener (its handlers only record), the publisher (routes and
sends recorded jobs), the reaper (recovery by worker liveness), retention (``[retention]``, every
``interval_minutes``) and, in the embedded default, the
supervisor of the node's own worker processes (restarted when they die, killed with the node).
SIGTERM/SIGINT drain: stop accepting, let running associations finish (up to ``DRAIN_SECONDS``),
stop the workers after their current task. SIGHUP applies the configuration file live
(``node.liveconfig``): peers and AE title for new associations, destinations and model threshold for
new jobs; the workers pick the file up themselves before their next task.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.audit import AuditLog
from node.config import Settings, load_config
from node.errors import ConfigError, NodeError
from node.ledger import Ledger
from node.queue import Broker
from node.reaper import Publisher, Reaper, resend_claims_of
from node.receive.recover import recover
from node.receive.scp import Receiver
from node.retention import retention_loop
from node.route import BundleSummary, check_bundle
from node.spool import Spool
from node.supervise import Supervisor

logger = logging.getLogger(__name__)

DRAIN_SECONDS = 30.0


@dataclass
class Node:
    """The edge service: receiver, spool, ledger, publisher, reaper and embedded workers."""

    settings: Settings
    spool: Spool
    ledger: Ledger
    receiver: Receiver
    bundle: BundleSummary | None = None
    config_path: Path | None = None
    broker: Broker | None = None
    server: Any = None
    pending: list[str] = field(default_factory=list)
    publisher: Publisher | None = None
    reaper: Reaper | None = None
    supervisor: Supervisor | None = None
    extra_worker_args: list[str] = field(default_factory=list)
    reload_listeners: list[Callable[[Settings], None]] = field(default_factory=list)
    http: Any = None  # node.http.server.HttpServer when [http] enabled (issue #12)
    _stop: threading.Event = field(default_factory=threading.Event)
    _reload_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, settings: Settings, config_path: str | os.PathLike[str] | None = None) -> Node:
        bundle = check_bundle(settings)  # refuses research-only models unless allowed
        settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
        spool = Spool(settings.storage.data_dir, fsync=settings.storage.fsync, edge=f"{socket.gethostname()}-{settings.node.port}")
        ledger = Ledger(settings.ledger_url)
        receiver = Receiver(settings, spool, ledger, audit=AuditLog.from_settings(settings))
        node = cls(settings, spool, ledger, receiver, bundle, Path(config_path) if config_path else None)
        node.broker = Broker(settings)
        node.publisher = Publisher(settings, ledger, node.broker)
        node.reaper = Reaper(settings, ledger, node.broker)
        receiver.on_stored = lambda _uid: node.publisher.wake.set() if node.publisher else None
        return node

    # -- workers ------------------------------------------------------------------------------
    def _worker_died(self, worker_id: str, _code: int) -> None:
        if self.broker is not None:
            resend_claims_of(self.ledger, self.broker, worker_id)

    def _start_workers(self) -> None:
        q = self.settings.queue
        if q.broker_url or q.embedded_workers == 0 or self.bundle is None:
            return
        logs = self.settings.storage.data_dir / "logs"
        logs.mkdir(exist_ok=True)
        self.supervisor = Supervisor(on_exit=self._worker_died)
        host = socket.gethostname()
        for i in range(q.embedded_workers):
            name = f"alnnode-embedded{i}@{host}-{os.getpid()}"
            cmd = [sys.executable, "-m", "node.cli", "worker", "--child", "--queues", "gpu,io", "--concurrency", "1", "--name", name,
                   "--log-file", str(logs / f"worker{i}.log"), *(["--allow-root"] if os.geteuid() == 0 else [])]  # fmt: skip
            if self.config_path:
                cmd += ["--config", str(self.config_path)]
            # logging goes to the rotated worker{i}.log; what a library prints (Celery's banner) to worker{i}.out
            self.supervisor.add(name, cmd + self.extra_worker_args, log=logs / f"worker{i}.out")
        self.supervisor.start()
        logger.info("%d embedded worker(s) under supervision (logs in %s)", q.embedded_workers, logs)

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> tuple[str, int]:
        """Recover, start the job plane and workers, and listen; returns (host, port)."""
        from node import metrics

        metrics.setup(self.settings.storage.data_dir)  # before the workers start: they inherit it
        self.pending = recover(self.spool, self.ledger)
        self._start_http()  # first: a port in use or a bad certificate stops start-up before any worker
        if not self.settings.queue.broker_url and self.broker is not None:
            # Embedded: every claim in the ledger was our previous workers', which died with us.
            resend_claims_of(self.ledger, self.broker, None, reason="the node restarted during the stage")
        self._start_workers()
        assert self.publisher is not None and self.reaper is not None
        self.publisher.start()
        self.reaper.start()
        threading.Thread(target=retention_loop, args=(self.settings, self.ledger, self._stop), name="alnnode-retention", daemon=True).start()
        self.server = self.receiver.start(block=False)
        host, port = self.server.server_address[:2]
        if self.bundle is not None:
            note = " — RESEARCH MODEL, not for diagnostic use" if self.bundle.research_only else ""
            logger.info("model %s (%s %s, %s)%s", self.bundle.name, self.bundle.arch, self.bundle.version, self.bundle.model_uid, note)
        logger.info("%s listening on %s:%d", self.settings.node.ae_title, host, port)
        return str(host), int(port)

    def reload(self) -> list[str]:
        """Apply the configuration file to the running node (SIGHUP); returns the changed keys.

        Raises ``ConfigError`` when the file is not valid: the running settings stay as they were."""
        if self.config_path is None:
            raise NodeError("the node was started without a configuration file: nothing to reload")
        with self._reload_lock:  # SIGHUP and the admin API may reload at the same moment
            return self._reload(self.config_path)

    def _reload(self, path: Path) -> list[str]:
        from node.liveconfig import changed_keys, merge_live

        new, held = merge_live(self.settings, load_config(path))
        keys = changed_keys(self.settings, new)
        before, self.settings = self.settings, new
        # Every reader takes the settings object from these attributes at each use: assigning a new
        # object is atomic, so a new association or job sees either the old or the new settings whole.
        for part in (self.receiver, self.publisher, self.reaper):
            if part is not None:
                part.settings = new
        for server in self._dimse_servers():
            server.ae_title = new.node.ae_title  # pynetdicom checks the called AE title against it
        if held:
            logger.warning("config reload: %s take effect after a restart", ", ".join(held))
        logger.info("config reload from %s: %s", path, ", ".join(keys) or "no change")
        self.on_reload(before, new, keys)
        return keys

    def on_reload(self, before: Settings, after: Settings, keys: list[str]) -> None:
        """Audit the change (PS3.15 A.5.3.11, before and after); tell the HTTP plane, if any."""
        from node.liveconfig import public_view

        if keys and self.receiver.audit is not None:
            self.receiver.audit.config_changed(public_view(before), public_view(after), keys, user="alnnode serve (reload)", action="applied")
        for listener in self.reload_listeners:
            listener(after)

    def _start_http(self) -> None:
        """The HTTP application (DICOMweb, UPS-RS, admin) in its own thread, when [http] enabled."""
        if not self.settings.http.enabled:
            return
        from node.http.app import create_app
        from node.http.server import HttpServer

        self.http = HttpServer(self.settings, create_app(self.settings, self.ledger, spool=self.spool, node=self))
        self.http.start()

    def _dimse_servers(self) -> list[Any]:
        """The plain DICOM port's server and, when ``[tls] port`` is set, the TLS port's."""
        if self.server is None:
            return []
        return [s for s in (self.server, self.receiver.tls_server) if s is not None]

    def drain(self, grace: float = DRAIN_SECONDS) -> None:
        """Stop accepting associations (both ports) and wait up to ``grace`` seconds for the running ones."""
        servers = self._dimse_servers()
        if not servers:
            return
        self.server = None
        servers[0].shutdown()  # no new associations; the listening sockets (plain and TLS) are closed

        def running() -> list[Any]:
            return [assoc for server in servers for assoc in server.active_associations]

        deadline = time.monotonic() + grace
        if busy := running():
            logger.info("draining: waiting up to %.0f s for %d running association(s)", grace, len(busy))
        while running() and time.monotonic() < deadline:
            time.sleep(0.1)
        for assoc in running():
            logger.warning("association from %s still running after %.0f s: aborted", assoc.requestor.ae_title, grace)
            assoc.abort()

    def stop(self) -> None:
        self._stop.set()
        if self.http is not None:
            self.http.stop()
        self.drain()
        for thread in (self.publisher, self.reaper):
            if thread is not None:
                thread.stop()
        if self.supervisor is not None:
            self.supervisor.stop()
        if self.broker is not None:
            self.broker.close()
        self.ledger.close()


def serve_forever(node: Node, ready: Callable[[str, int], None] | None = None) -> None:
    """Start ``node`` and block until SIGTERM or SIGINT, then drain and shut down; SIGHUP reloads the file."""
    stop = threading.Event()  # wakes the main thread: to stop, or to reload
    stopping = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        logger.info("signal %s: draining and stopping", signal.Signals(signum).name)
        stopping.set()
        stop.set()

    reload_wanted = threading.Event()

    def _hup(_signum: int, _frame: Any) -> None:
        reload_wanted.set()  # applied by the loop below, never inside the signal handler
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGHUP, _hup)
    host, port = node.start()
    from node.liveconfig import write_pid, write_reload_result

    pid_file = write_pid(node.settings.storage.data_dir)  # `alnnode config reload` / `peers` find us here
    audit = node.receiver.audit
    if audit is not None:
        audit.application(started=True)
    if ready:
        ready(host, port)
    try:
        while True:
            stop.wait()
            if stopping.is_set() or not reload_wanted.is_set():
                break
            reload_wanted.clear()
            stop.clear()
            try:
                write_reload_result(node.settings.storage.data_dir, node.reload())
            except (ConfigError, NodeError) as exc:
                logger.error("SIGHUP: configuration not reloaded, the running settings stay: %s", exc)
                write_reload_result(node.settings.storage.data_dir, None, str(exc))
    finally:
        node.stop()
        if audit is not None:
            audit.application(started=False)
        pid_file.unlink(missing_ok=True)
        logger.info("stopped")
