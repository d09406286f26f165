"""Start-up recovery: clear interrupted receives and find every unfinished spooled instance again."""

from __future__ import annotations

import logging

from node.errors import StoreRejected
from node.ledger import Ledger
from node.receive.validate import check_received
from node.spool import Spool

logger = logging.getLogger(__name__)


def recover(spool: Spool, ledger: Ledger) -> list[str]:
    """Prepare the spool and return the SOP Instance UIDs the ledger has not finished.

    1. Temp files of interrupted associations are removed (they were never acknowledged).
    2. A spooled file without a ledger row (crash between rename and commit; never acknowledged,
       but safely on disk) is recorded as ``received``.
    3. A ledger row whose spool file is gone is marked ``failed`` (stage ``spool``).
    """
    spool.prepare()
    ledger.close_open_associations()
    known = ledger.spool_paths()
    for rel in spool.iter_relpaths():
        if rel in known:
            continue
        path = spool.path_of(rel)
        try:
            from pydicom import dcmread

            meta = dcmread(path, stop_before_pixels=True)
            info = check_received(
                path,
                context_sop_class=str(meta.SOPClassUID),
                transfer_syntax=str(meta.file_meta.TransferSyntaxUID),
                affected_sop_instance=None,
            )
        except (StoreRejected, OSError, AttributeError, ValueError) as exc:
            logger.error("spooled file %s is unusable, left in place: %s", rel, exc)
            continue
        if spool.relpath(info.sop_instance_uid) != rel:
            logger.error("spooled file %s does not hold the instance its name says; left in place", rel)
            continue
        ledger.add_instance(info.ledger_row(rel, None, None), reason="recovered from the spool after a restart")
        logger.warning("recovered spooled instance %s without a ledger row", info.sop_instance_uid)
    pending: list[str] = []
    for row in ledger.unfinished():
        if not spool.path_of(row["spool_path"]).exists():
            ledger.set_state(row["sop_instance_uid"], "failed", stage="spool", reason="spool file is missing")
            continue
        pending.append(row["sop_instance_uid"])
    if pending:
        logger.info("%d unfinished instance(s) found again after start", len(pending))
    return pending
