"""Start-up recovery: clear interrupted receives, find every unfinished spooled instance again,
and move aside (quarantine) what cannot be recorded, so a bad file never stops the node."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pydicom.filereader import read_file_meta_info

from node.errors import StoreRejected
from node.ledger import Ledger
from node.receive.validate import check_received
from node.spool import Spool, fsync_dir

logger = logging.getLogger(__name__)


def quarantine(spool: Spool, rel: str, why: str) -> Path:
    """Move a spooled file to ``data_dir/quarantine/`` (same name) and log why; returns the new path."""
    folder = spool.data_dir / "quarantine"
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    if created and spool.fsync:
        fsync_dir(spool.data_dir)
    target = folder / Path(rel).name
    os.replace(spool.path_of(rel), target)
    if spool.fsync:
        fsync_dir(folder)
        fsync_dir(spool.path_of(rel).parent)
    logger.error("spooled file %s quarantined to %s: %s", rel, target, why)
    return target


def recover(spool: Spool, ledger: Ledger) -> list[str]:
    """Prepare the spool and return the SOP Instance UIDs the ledger has not finished.

    1. Temp files of interrupted associations are removed (they were never acknowledged).
    2. A spooled file without a ledger row (crash between rename and commit; never acknowledged,
       but safely on disk) is validated like a new object and recorded as ``received``; one that
       fails validation, holds another instance than its name says, or that the ledger refuses is
       quarantined.
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
            meta = read_file_meta_info(path)  # not dcmread: a deflated data set would be inflated whole
            info = check_received(
                path,
                context_sop_class=str(meta.get("MediaStorageSOPClassUID", "")),
                transfer_syntax=str(meta.get("TransferSyntaxUID", "")),
                affected_sop_instance=None,
            )
        except StoreRejected as exc:
            quarantine(spool, rel, f"unusable: {exc}")
            continue
        except Exception as exc:  # unreadable in any way pydicom can fail: never a reason not to start
            quarantine(spool, rel, f"unreadable: {type(exc).__name__}: {exc}")
            continue
        if spool.relpath(info.sop_instance_uid) != rel:
            quarantine(spool, rel, "it does not hold the instance its name says")
            continue
        try:
            ledger.add_instance(info.ledger_row(rel, None, None), reason="recovered from the spool after a restart")
        except Exception as exc:  # a row the ledger refuses must not stop the node from starting
            quarantine(spool, rel, f"the ledger refused it: {exc}")
            continue
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
