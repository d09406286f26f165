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

from node.config import Settings
from node.errors import STATUS_OUT_OF_RESOURCES, STATUS_PROCESSING_FAILURE, STATUS_SUCCESS, StoreRejected
from node.ledger import Ledger
from node.receive.validate import Limits, check_received
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
        node = self.settings.node
        return Limits(
            max_instance_bytes=node.max_instance_mb * 2**20,
            max_inflated_bytes=node.max_inflated_mb * 2**20,
            max_frames=node.max_frames,
        )

    def handle(
        self, event: evt.Event, aid: int | None, calling_ae: str | None, on_stored: Callable[[str], None] | None
    ) -> int | Dataset:
        """Check, spool and record one C-STORE data set; return the status to answer."""
        request = cast(C_STORE, event.request)
        temp = Path(event.dataset_path)
        with self._lock:
            self._in_use.add(temp)
        size = temp.stat().st_size if temp.exists() else 0
        try:
            status = self._store(event, temp, aid, calling_ae, on_stored)
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
        if aid is not None:
            try:
                self.ledger.count_store(aid, size, ok=ok)
            except Exception as exc:
                logger.error("association %d: store not counted: %s", aid, exc)
        return status

    def _store(
        self, event: evt.Event, temp: Path, aid: int | None, calling_ae: str | None, on_stored: Callable[[str], None] | None
    ) -> int | Dataset:
        floor = self.settings.storage.min_free_mb
        if floor and self.spool.free_mb() < floor:
            raise StoreRejected(STATUS_OUT_OF_RESOURCES, f"free disk below {floor} MB in the data dir")
        cx = event.context
        request = cast(C_STORE, event.request)
        info = check_received(
            temp,
            context_sop_class=str(cx.abstract_syntax),
            transfer_syntax=str(cx.transfer_syntax),
            affected_sop_instance=str(request.AffectedSOPInstanceUID or ""),
            affected_sop_class=str(request.AffectedSOPClassUID or ""),
            limits=self.limits,
        )
        uid = info.sop_instance_uid
        try:
            known = self.ledger.find(uid)
        except Exception as exc:
            logger.error("C-STORE %s: ledger unavailable: %s", uid, exc)
            return status_with_comment(STATUS_PROCESSING_FAILURE, "ledger unavailable; not stored")
        if known is not None:
            self._note_duplicate(uid)
            logger.info("C-STORE %s: duplicate of an instance already received, acknowledged", uid)
            return STATUS_SUCCESS
        try:
            rel, new = self.spool.commit(temp, uid)
        except OSError as exc:
            logger.error("C-STORE %s: cannot spool: %s", uid, exc)
            raise StoreRejected(STATUS_OUT_OF_RESOURCES, f"cannot write to the spool: {exc.strerror}") from None
        row = info.ledger_row(rel, calling_ae=calling_ae, association_id=aid)
        try:
            iid = self.ledger.add_instance(row)
        except Exception as exc:  # fail closed: nothing unrecorded stays in the spool
            logger.error("C-STORE %s: ledger write failed, not stored: %s", uid, exc)
            if new:
                self.spool.remove(rel)
            return status_with_comment(STATUS_PROCESSING_FAILURE, "ledger write failed; not stored")
        if iid is None:  # the ledger says "already recorded": make sure, never acknowledge unrecorded data
            try:
                recorded = self.ledger.find(uid) is not None
            except Exception as exc:
                logger.error("C-STORE %s: ledger unavailable: %s", uid, exc)
                recorded = False
            if not recorded:
                logger.error("C-STORE %s: the ledger refused the row, not stored", uid)
                if new:
                    self.spool.remove(rel)
                return status_with_comment(STATUS_PROCESSING_FAILURE, "ledger write failed; not stored")
            self._note_duplicate(uid)
            return STATUS_SUCCESS
        logger.info("C-STORE %s stored (%d frame(s), %d bytes)", uid, info.frames, info.size)
        if on_stored is not None:
            on_stored(uid)
        return STATUS_SUCCESS

    def _note_duplicate(self, uid: str) -> None:
        try:
            self.ledger.note_duplicate(uid)
        except Exception as exc:  # the instance itself is recorded: the success stands
            logger.error("C-STORE %s: duplicate not counted: %s", uid, exc)

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
