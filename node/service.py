"""Run the node: open spool and ledger, recover, listen until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from node.config import Settings
from node.ledger import Ledger
from node.receive.recover import recover
from node.receive.scp import Receiver
from node.spool import Spool

logger = logging.getLogger(__name__)


@dataclass
class Node:
    """The edge service: one receiver over one spool and ledger."""

    settings: Settings
    spool: Spool
    ledger: Ledger
    receiver: Receiver
    server: Any = None
    pending: list[str] | None = None

    @classmethod
    def open(cls, settings: Settings, on_stored: Callable[[str], None] | None = None) -> Node:
        settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
        spool = Spool(settings.storage.data_dir, fsync=settings.storage.fsync)
        ledger = Ledger(settings.ledger_url)
        receiver = Receiver(settings, spool, ledger, on_stored=on_stored)
        return cls(settings, spool, ledger, receiver)

    def start(self) -> tuple[str, int]:
        """Recover, then listen without blocking; returns the bound (host, port)."""
        self.pending = recover(self.spool, self.ledger)
        self.server = self.receiver.start(block=False)
        host, port = self.server.server_address[:2]
        logger.info("%s listening on %s:%d", self.settings.node.ae_title, host, port)
        return str(host), int(port)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None
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
