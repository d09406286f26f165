"""One acceptance path for every way an object comes in (C-STORE and STOW-RS).

``accept()`` checks the received temp file (``node.receive.validate``), fsyncs it into the spool,
records it in the ledger and wakes the publisher; it returns ``Accepted`` or raises ``StoreRejected``
with the DICOM status a sender must see (PS3.4 B.2.3; STOW-RS reports the same value as its Failure
Reason, PS3.18 10.5.3). Nothing is acknowledged before it is durable and recorded, and nothing that
is refused stays in the spool (fail closed when the ledger cannot be written).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from node.config import Settings
from node.errors import STATUS_OUT_OF_RESOURCES, STATUS_PROCESSING_FAILURE, StoreRejected
from node.ledger import Ledger
from node.receive.validate import Limits, ReceivedInfo, check_received
from node.spool import Spool

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Accepted:
    """A durably stored and recorded instance (``duplicate``: it was already there)."""

    info: ReceivedInfo
    duplicate: bool = False


def limits_of(settings: Settings) -> Limits:
    node = settings.node
    return Limits(
        max_instance_bytes=node.max_instance_mb * 2**20,
        max_inflated_bytes=node.max_inflated_mb * 2**20,
        max_frames=node.max_frames,
    )


def accept(
    settings: Settings,
    spool: Spool,
    ledger: Ledger,
    temp: Path,
    *,
    context_sop_class: str,
    transfer_syntax: str,
    affected_sop_instance: str | None,
    affected_sop_class: str | None = None,
    calling_ae: str | None = None,
    association_id: int | None = None,
    on_stored: Callable[[str], None] | None = None,
    what: str = "C-STORE",
) -> Accepted:
    """Validate, spool, record and enqueue ``temp``; the caller discards ``temp`` afterwards."""
    floor = settings.storage.min_free_mb
    if floor and spool.free_mb() < floor:
        raise StoreRejected(STATUS_OUT_OF_RESOURCES, f"free disk below {floor} MB in the data dir")
    info = check_received(
        temp,
        context_sop_class=context_sop_class,
        transfer_syntax=transfer_syntax,
        affected_sop_instance=affected_sop_instance,
        affected_sop_class=affected_sop_class,
        limits=limits_of(settings),
    )
    uid = info.sop_instance_uid
    try:
        known = ledger.find(uid)
    except Exception as exc:
        logger.error("%s %s: ledger unavailable: %s", what, uid, exc)
        raise StoreRejected(STATUS_PROCESSING_FAILURE, "ledger unavailable; not stored") from None
    if known is not None:
        _note_duplicate(ledger, uid, what)
        logger.info("%s %s: duplicate of an instance already received, acknowledged", what, uid)
        return Accepted(info, duplicate=True)
    try:
        rel, new = spool.commit(temp, uid)
    except OSError as exc:
        logger.error("%s %s: cannot spool: %s", what, uid, exc)
        raise StoreRejected(STATUS_OUT_OF_RESOURCES, f"cannot write to the spool: {exc.strerror}") from None
    row = info.ledger_row(rel, calling_ae=calling_ae, association_id=association_id)
    try:
        iid = ledger.add_instance(row)
    except Exception as exc:  # fail closed: nothing unrecorded stays in the spool
        logger.error("%s %s: ledger write failed, not stored: %s", what, uid, exc)
        if new:
            spool.remove(rel)
        raise StoreRejected(STATUS_PROCESSING_FAILURE, "ledger write failed; not stored") from None
    if iid is None:  # the ledger says "already recorded": make sure, never acknowledge unrecorded data
        try:
            recorded = ledger.find(uid) is not None
        except Exception as exc:
            logger.error("%s %s: ledger unavailable: %s", what, uid, exc)
            recorded = False
        if not recorded:
            logger.error("%s %s: the ledger refused the row, not stored", what, uid)
            if new:
                spool.remove(rel)
            raise StoreRejected(STATUS_PROCESSING_FAILURE, "ledger write failed; not stored")
        _note_duplicate(ledger, uid, what)
        return Accepted(info, duplicate=True)
    logger.info("%s %s stored (%d frame(s), %d bytes)", what, uid, info.frames, info.size)
    if on_stored is not None:
        on_stored(uid)
    return Accepted(info)


def _note_duplicate(ledger: Ledger, uid: str, what: str) -> None:
    try:
        ledger.note_duplicate(uid)
    except Exception as exc:  # the instance itself is recorded: the success stands
        logger.error("%s %s: duplicate not counted: %s", what, uid, exc)
