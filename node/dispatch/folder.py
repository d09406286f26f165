"""``folder`` destinations: ``<path>/<StudyInstanceUID>/<SOPInstanceUID>.dcm``, written atomically.

Names are UIDs only (checked to be digits and periods, so no name can climb out of the folder),
never patient data. Each file is written to a hidden temp file in the same folder, fsync'd, renamed
over the final name, and the folder fsync'd: a reader never sees half a file, a crash leaves either
the old or the new object, and a resend replaces the file instead of adding a copy.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Sequence
from pathlib import Path

from node.config import Destination
from node.dispatch.errors import DeliveryError, Failure
from node.dispatch.objects import Outgoing, is_valid_uid
from node.spool import write_atomic

logger = logging.getLogger(__name__)

# Faults that may pass: disk full, quota, I/O error, a busy or stale network mount.
_TRANSIENT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.EBUSY, errno.ESTALE, errno.ETIMEDOUT}
)


def target_path(root: Path, item: Outgoing) -> Path:
    """Where ``item`` goes below ``root``; raises ``ValueError`` for a UID unfit for a file name."""
    for name, uid in (
        ("Study Instance UID", item.study_instance_uid),
        ("SOP Instance UID", item.sop_instance_uid),
    ):
        if not is_valid_uid(uid):
            raise ValueError(f"{name} {uid!r} is not a valid UID")
    return root / item.study_instance_uid / f"{item.sop_instance_uid}.dcm"


def send_folder(dest: Destination, items: Sequence[Outgoing]) -> None:
    """Write every object below ``dest.path``; the folder itself must exist (a typo is not created)."""
    assert dest.path is not None
    root = Path(dest.path)
    where = f"{dest.name} ({str(root)!r})"
    if not root.is_dir():
        raise DeliveryError(
            f"destination folder {where} does not exist or is not a directory", transient=False
        )
    failures: list[Failure] = []
    for item in items:
        try:
            path = target_path(root, item)
            write_atomic(path, item.data)
        except ValueError as exc:
            failures.append(Failure(item.sop_instance_uid, False, f"{where}: {exc}"))
            continue
        except OSError as exc:
            transient = exc.errno in _TRANSIENT_ERRNOS
            reason = f"cannot write below {where}: {exc.strerror or exc} (errno {exc.errno})"
            if not failures and item is items[0] and not transient:
                # The first write failing for a permanent reason (read-only, permission): the folder
                # is unusable for every object, so say so once.
                raise DeliveryError(
                    f"destination folder {where} is not writable: {exc.strerror or exc}", transient=False
                ) from exc
            failures.append(Failure(item.sop_instance_uid, transient, reason))
            continue
        logger.info("wrote %s to %s", item.sop_instance_uid, path)
    if failures:
        raise DeliveryError.of(dest.name, failures)
