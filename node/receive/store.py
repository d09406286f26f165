"""C-STORE handling: check, spool, record, answer (PS3.4 B.2.3), and the temp-file sweep.

A success (0x0000) is sent only after the object is fsync'd in the spool and its row is committed in
the ledger; when the ledger cannot be written the answer is 0x0110 and nothing is left in the spool.
Whatever happens, the temp file pynetdicom streamed the data set to is gone when the answer is sent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE

from node.audit import AuditLog
from node.config import Settings
from node.errors import STATUS_PROCESSING_FAILURE, STATUS_SUCCESS, StoreRejected
from node.ledger import Ledger
from node.metrics import count_store
from node.receive.accept import accept, limits_of
from node.receive.validate import Limits
from node.spool import Spool

logger = logging.getLogger(__name__)


def status_with_comment(status: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment[:64]  # LO, PS3.7 C.4.2.1.1
    return ds



def printable(value: object, limit: int) -> str:
    """A peer-supplied string fit for a ledger column or a log line: printable ASCII, at most ``limit``."""
    text = "".join(c if 0x20 <= ord(c) < 0x7F else "?" for c in str(value or "").strip(" \x00"))
    return text[:limit]


@dataclass
class Storer:
    """The C-STORE service of one spool and ledger."""

    settings: Settings
    spool: Spool
    ledger: Ledger
    _in_use: set[Path] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _last_sweep: float = 0.0

    @property
    def limits(self) -> Limits:
        return limits_of(self.settings)

    def handle(
        self,
        event: evt.Event,
        aid: int | None,
        calling_ae: str | None,
        on_stored: Callable[[str], None] | None,
        *,
        peer_host: str = "",
        audit: AuditLog | None = None,
    ) -> int | Dataset:
        """Check, spool and record one C-STORE data set; return the status to answer."""
        request = cast(C_STORE, event.request)
        temp = Path(event.dataset_path)
        with self._lock:
            self._in_use.add(temp)
        size = temp.stat().st_size if temp.exists() else 0
        try:
            status = self._store(event, temp, aid, calling_ae, on_stored, peer_host, audit)
        except StoreRejected as rej:
            logger.warning(
                "C-STORE %s refused with 0x%04X: %s",
                printable(request.AffectedSOPInstanceUID, 80),
                rej.status,
                rej.reason,
            )
            status = status_with_comment(rej.status, rej.reason)
        except Exception:  # a bug must not leave the sender with a success or us with debris
            logger.exception("C-STORE %s: handler error", printable(request.AffectedSOPInstanceUID, 80))
            status = status_with_comment(STATUS_PROCESSING_FAILURE, "internal error while storing; not stored")
        finally:
            self.spool.discard(temp)  # committed objects were renamed away; anything else goes
            with self._lock:
                self._in_use.discard(temp)
        ok = status == STATUS_SUCCESS
        count_store(calling_ae or "", size, int(status if isinstance(status, int) else status.Status))
        if aid is not None:
            try:
                self.ledger.count_store(aid, size, ok=ok)
            except Exception as exc:
                logger.error("association %d: store not counted: %s", aid, exc)
        return status

    def _store(
        self,
        event: evt.Event,
        temp: Path,
        aid: int | None,
        calling_ae: str | None,
        on_stored: Callable[[str], None] | None,
        peer_host: str,
        audit: AuditLog | None,
    ) -> int | Dataset:
        cx = event.context
        request = cast(C_STORE, event.request)
        accepted = accept(  # the same acceptance as STOW-RS (node.receive.accept); raises StoreRejected
            self.settings,
            self.spool,
            self.ledger,
            temp,
            context_sop_class=str(cx.abstract_syntax),
            transfer_syntax=str(cx.transfer_syntax),
            affected_sop_instance=str(request.AffectedSOPInstanceUID or ""),
            affected_sop_class=str(request.AffectedSOPClassUID or ""),
            calling_ae=calling_ae,
            association_id=aid,
            on_stored=on_stored,
        )
        if audit is not None and not accepted.duplicate:  # PS3.15 A.5.3.2 DICOM Instances Transferred
            info = accepted.info
            audit.transferred(received=True, peer_ae=calling_ae or "", peer_host=peer_host, study_uid=info.study_instance_uid,
                              sop_classes={info.sop_class_uid: 1})  # fmt: skip
        return STATUS_SUCCESS

    def sweep_incoming(self, force: bool = False) -> int:
        """Remove temp files untouched for longer than the DIMSE timeout; returns how many."""
        now = time.time()
        timeout = self.settings.node.dimse_timeout
        if not force and now - self._last_sweep < min(timeout / 4, 15.0):
            return 0
        self._last_sweep = now
        removed = 0
        with self._lock:
            busy = set(self._in_use)
        for entry in self.spool.incoming.iterdir():
            try:
                if entry in busy or not entry.is_file() or now - entry.stat().st_mtime < timeout:
                    continue
                entry.unlink()
                removed += 1
            except FileNotFoundError:
                continue
        if removed:
            logger.warning("removed %d stale temp file(s) from %s", removed, self.spool.incoming)
        return removed
