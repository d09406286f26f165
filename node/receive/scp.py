"""The DICOM SCP: association policy, C-ECHO and C-STORE (PS3.4 Annex A and B).

Handlers do I/O only: check, spool, record, then answer. A C-STORE success (0x0000) is sent only
after the object is fsync'd in the spool and its row is committed in the ledger.
"""

from __future__ import annotations

import functools
import logging
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import AE, _config, dimse_messages, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE

from node.config import Settings
from node.errors import STATUS_OUT_OF_RESOURCES, STATUS_PROCESSING_FAILURE, STATUS_SUCCESS, StoreRejected
from node.ledger import Ledger
from node.receive.contexts import (
    STORAGE_SOP_CLASSES,
    TRANSFER_SYNTAXES,
    VERIFICATION_SOP_CLASS,
    VERIFICATION_TRANSFER_SYNTAXES,
)
from node.receive.validate import check_received
from node.spool import Spool

logger = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4
REJECT_CALLED_AE = (0x01, 0x01, 0x07)
REJECT_CALLING_AE = (0x01, 0x01, 0x03)


def route_chunked_receive(incoming: Path) -> None:
    """Make pynetdicom stream every C-STORE data set to a temp file under ``incoming``.

    Same filesystem as the spool, so accepting an object is an fsync and a rename, never a copy;
    the folder is emptied at start-up, which removes the debris of interrupted associations.
    """
    _config.STORE_RECV_CHUNKED_DATASET = True
    dimse_messages.NamedTemporaryFile = functools.partial(  # type: ignore[assignment]
        tempfile.NamedTemporaryFile, dir=incoming, prefix="rx-"
    )


def _status(status: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment[:64]  # LO, PS3.7 C.4.2.1.1
    return ds


@dataclass
class Receiver:
    """C-ECHO/C-STORE SCP bound to one spool and ledger."""

    settings: Settings
    spool: Spool
    ledger: Ledger
    on_stored: Callable[[str], None] | None = None  # enqueue hook, called with the SOP Instance UID
    _assoc_ids: dict[int, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- association policy -----------------------------------------------------------------
    def _peer(self, assoc: Association) -> tuple[str, str, str, int]:
        rq = assoc.requestor.primitive
        calling = str(getattr(rq, "calling_ae_title", "") or "").strip()
        called = str(getattr(rq, "called_ae_title", "") or "").strip()
        return calling, called, str(assoc.requestor.address), int(assoc.requestor.port)

    def policy(self, calling: str, called: str, host: str) -> tuple[tuple[int, int, int], str] | None:
        """Return (reject code, reason) when the association must be refused, else None."""
        node = self.settings.node
        if called != node.ae_title:
            return REJECT_CALLED_AE, f"called AE title {called!r} is not ours ({node.ae_title!r})"
        if node.reject_unknown_callers:
            peers = [p for p in self.settings.peers if p.ae_title == calling]
            if not peers:
                return REJECT_CALLING_AE, f"calling AE title {calling!r} is not a configured peer"
            if all(p.host is not None and p.host != host for p in peers):
                return REJECT_CALLING_AE, f"calling AE title {calling!r} is not allowed from host {host}"
        return None

    def handle_requested(self, event: evt.Event) -> None:
        calling, called, host, port = self._peer(event.assoc)
        verdict = self.policy(calling, called, host)
        if verdict is None:
            return
        code, reason = verdict
        logger.warning("association from %s@%s:%d rejected: %s", calling, host, port, reason)
        self.ledger.record_rejected(calling, called, host, port, reason)
        event.assoc.acse.send_reject(*code)
        event.assoc.kill()

    def handle_rejected(self, event: evt.Event) -> None:
        # pynetdicom's own rejections (e.g. too many associations: transient, local limit exceeded)
        calling, called, host, port = self._peer(event.assoc)
        logger.warning("association from %s@%s:%d rejected by the DICOM layer (limit reached?)", calling, host, port)
        self.ledger.record_rejected(calling, called, host, port, "rejected: association limit reached")

    def handle_established(self, event: evt.Event) -> None:
        calling, called, host, port = self._peer(event.assoc)
        aid = self.ledger.open_association(calling, called, host, port)
        with self._lock:
            self._assoc_ids[id(event.assoc)] = aid
        logger.info("association %d from %s@%s:%d established", aid, calling, host, port)

    def _close(self, event: evt.Event, outcome: str) -> None:
        with self._lock:
            aid = self._assoc_ids.pop(id(event.assoc), None)
        if aid is not None:
            self.ledger.close_association(aid, outcome)
            logger.info("association %d %s", aid, outcome)

    def handle_released(self, event: evt.Event) -> None:
        self._close(event, "released")

    def handle_aborted(self, event: evt.Event) -> None:
        self._close(event, "aborted")

    def handle_closed(self, event: evt.Event) -> None:
        self._close(event, "closed")

    # -- DIMSE services ---------------------------------------------------------------------
    def handle_echo(self, event: evt.Event) -> int:
        return STATUS_SUCCESS

    def handle_store(self, event: evt.Event) -> int | Dataset:
        request = cast(C_STORE, event.request)
        temp = Path(event.dataset_path)
        with self._lock:
            aid = self._assoc_ids.get(id(event.assoc))
        size = temp.stat().st_size if temp.exists() else 0
        try:
            status = self._store(event, temp, aid)
        except StoreRejected as rej:
            logger.warning("C-STORE %s refused with 0x%04X: %s", request.AffectedSOPInstanceUID, rej.status, rej.reason)
            self.spool.discard(temp)
            if aid is not None:
                self.ledger.count_store(aid, size, ok=False)
            return _status(rej.status, rej.reason)
        if aid is not None:
            self.ledger.count_store(aid, size, ok=status == STATUS_SUCCESS)
        return status

    def _store(self, event: evt.Event, temp: Path, aid: int | None) -> int:
        floor = self.settings.storage.min_free_mb
        if floor and self.spool.free_mb() < floor:
            raise StoreRejected(STATUS_OUT_OF_RESOURCES, f"free disk below {floor} MB in the data dir")
        cx = event.context
        info = check_received(
            temp,
            context_sop_class=str(cx.abstract_syntax),
            transfer_syntax=str(cx.transfer_syntax),
            affected_sop_instance=str(cast(C_STORE, event.request).AffectedSOPInstanceUID or "") or None,
        )
        uid = info.sop_instance_uid
        if self.ledger.find(uid) is not None:
            self.ledger.note_duplicate(uid)
            self.spool.discard(temp)
            logger.info("C-STORE %s: duplicate of an instance already received, acknowledged", uid)
            return STATUS_SUCCESS
        try:
            rel, new = self.spool.commit(temp, uid)
        except OSError as exc:
            logger.error("C-STORE %s: cannot spool: %s", uid, exc)
            raise StoreRejected(STATUS_OUT_OF_RESOURCES, f"cannot write to the spool: {exc.strerror}") from None
        if not new:
            # Spooled by an earlier association whose ledger row never committed (crash): keep that copy.
            self.spool.discard(temp)
        row = info.ledger_row(rel, calling_ae=self._peer(event.assoc)[0], association_id=aid)
        try:
            iid = self.ledger.add_instance(row)
        except Exception as exc:  # the ledger is down: refuse rather than acknowledge unrecorded data
            logger.error("C-STORE %s: ledger write failed: %s", uid, exc)
            return STATUS_PROCESSING_FAILURE
        if iid is None:
            self.ledger.note_duplicate(uid)
            return STATUS_SUCCESS
        logger.info("C-STORE %s stored (%d frame(s), %d bytes)", uid, info.frames, info.size)
        if self.on_stored is not None:
            self.on_stored(uid)
        return STATUS_SUCCESS

    # -- the AE -------------------------------------------------------------------------------
    def build_ae(self) -> AE:
        node = self.settings.node
        ae = AE(ae_title=node.ae_title)
        ae.maximum_associations = node.max_associations
        ae.maximum_pdu_size = node.max_pdu_size
        ae.acse_timeout = node.acse_timeout
        ae.dimse_timeout = node.dimse_timeout
        ae.network_timeout = node.network_timeout
        ae.require_called_aet = True
        ae.add_supported_context(VERIFICATION_SOP_CLASS, list(VERIFICATION_TRANSFER_SYNTAXES))
        for sop_class in STORAGE_SOP_CLASSES:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        return ae

    def handlers(self) -> list[Any]:
        return [
            (evt.EVT_REQUESTED, self.handle_requested),
            (evt.EVT_REJECTED, self.handle_rejected),
            (evt.EVT_ESTABLISHED, self.handle_established),
            (evt.EVT_RELEASED, self.handle_released),
            (evt.EVT_ABORTED, self.handle_aborted),
            (evt.EVT_CONN_CLOSE, self.handle_closed),
            (evt.EVT_C_ECHO, self.handle_echo),
            (evt.EVT_C_STORE, self.handle_store),
        ]

    def start(self, block: bool = False) -> Any:
        """Start listening on the configured host/port; returns the server when not blocking."""
        route_chunked_receive(self.spool.incoming)
        ae = self.build_ae()
        node = self.settings.node
        return ae.start_server((node.host, node.port), block=block, evt_handlers=self.handlers())
