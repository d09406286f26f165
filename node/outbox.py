"""The outbox: send one job's result objects to every configured destination and record the outcome.

Used by the ``io`` worker (dispatch task) and by ``alnnode retry`` (which runs it in the CLI process
with the current configuration, so a fixed destination is used at once).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from node.config import Settings
from node.ledger import Ledger
from node.spool import uid_key

logger = logging.getLogger(__name__)

# One folder per job under data_dir/results: the prediction and the rendered objects.
SR_FILE, SC_KEY_FILE, SC_CINE_FILE = "sr.dcm", "sc_key_frame.dcm", "sc_cine.dcm"
RESULT_FILES = (SC_KEY_FILE, SC_CINE_FILE, SR_FILE)  # heatmaps first: the SR references them


def result_dir(data_dir: Path, sop_instance_uid: str) -> Path:
    key = uid_key(sop_instance_uid)
    return data_dir / "results" / key[:2] / key


def result_files(settings: Settings, sop_instance_uid: str) -> list[Path]:
    folder = result_dir(settings.storage.data_dir, sop_instance_uid)
    return [folder / name for name in RESULT_FILES]


def dispatch_results(settings: Settings, ledger: Ledger, uid: str, files: Sequence[Path]) -> bool:
    """Deliver ``files`` to all destinations; the job becomes ``dispatched`` or ``failed``."""
    from node.dispatch import deliver

    missing = [f.name for f in files if not f.exists()]
    if missing:
        ledger.set_state(uid, "failed", stage="dispatch", reason=f"result file(s) missing: {', '.join(missing)}")
        return False
    if not settings.destinations:
        ledger.set_state(uid, "dispatched", reason=f"no destinations configured; results in {files[0].parent}")
        return True
    failed: list[str] = []
    for dest in settings.destinations:
        if not deliver(dest, list(files), ledger=ledger, sop_instance_uid=uid, calling_ae=settings.node.ae_title):
            errors = {d["last_error"] for d in ledger.deliveries_of(uid) if d["destination"] == dest.name and d["state"] != "sent"}
            failed.append(f"{dest.name}: {'; '.join(sorted(e for e in errors if e)) or 'unknown error'}")
    if failed:
        ledger.set_state(uid, "failed", stage="dispatch", reason="; ".join(failed))
        logger.error("dispatch %s failed: %s", uid, "; ".join(failed))
        return False
    ledger.set_state(uid, "dispatched", reason=", ".join(d.name for d in settings.destinations))
    return True
