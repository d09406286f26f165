"""The durable spool: received objects, stored under a name derived from their SOP Instance UID.

Layout under ``data_dir``::

    incoming/   temp files of associations in progress (removed at start-up)
    spool/ab/cd/<sha256(uid)>.dcm

A path never contains a raw UID or any value from the data set (PS3.10 file names are not
trusted input); the hash makes the name fixed-length and filesystem-safe.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


def uid_key(sop_instance_uid: str) -> str:
    """Hex SHA-256 of a SOP Instance UID: the spool name of that instance."""
    return hashlib.sha256(sop_instance_uid.encode("ascii", "replace")).hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable (POSIX needs the directory fsync'd)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file + fsync + rename (+ fsync of the folder)."""
    created = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    if created:
        fsync_dir(path.parent.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@dataclass(frozen=True)
class Spool:
    """The spool and incoming folders of one data dir."""

    data_dir: Path
    fsync: bool = True
    # Edges sharing one data dir (scale-out) each stream into their own incoming/<edge>/ folder, so the
    # start-up clean-up of one never removes another's transfers in progress.
    edge: str = ""

    @property
    def root(self) -> Path:
        return self.data_dir / "spool"

    @property
    def incoming(self) -> Path:
        return self.data_dir / "incoming" / self.edge if self.edge else self.data_dir / "incoming"

    def prepare(self) -> int:
        """Create the folders and remove temp debris of interrupted associations; returns files removed."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._make_dirs(self.root)
        self._make_dirs(self.incoming)
        removed = 0
        legacy = [e for e in (self.data_dir / "incoming").iterdir() if e.is_file()] if self.edge else []
        for entry in [*self.incoming.iterdir(), *legacy]:  # legacy: temp files of versions before per-edge folders
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed += 1
        if removed:
            logger.warning("removed %d temp file(s) of interrupted associations from %s", removed, self.incoming)
            if self.fsync:
                fsync_dir(self.incoming)
        return removed

    def _make_dirs(self, folder: Path) -> None:
        """Create ``folder`` and any missing parent up to the spool root, each fsync'd into its parent."""
        missing = []
        probe = folder
        while not probe.exists() and probe != self.root.parent:
            missing.append(probe)
            probe = probe.parent
        for path in reversed(missing):
            path.mkdir(exist_ok=True)
            if self.fsync:
                fsync_dir(path.parent)  # the new entry survives a power loss (POSIX rename/mkdir rule)

    def relpath(self, sop_instance_uid: str) -> str:
        key = uid_key(sop_instance_uid)
        return f"{key[:2]}/{key[2:4]}/{key}.dcm"

    def path_of(self, relpath: str) -> Path:
        return self.root / relpath

    def commit(self, temp: Path, sop_instance_uid: str) -> tuple[str, bool]:
        """Durably move ``temp`` into the spool; returns (relative path, newly stored).

        The data is fsync'd before the rename and the directory after it, so a success answered
        afterwards survives a crash or power loss. If the instance is already spooled the temp
        file is left for the caller to discard and ``False`` is returned.
        """
        rel = self.relpath(sop_instance_uid)
        final = self.root / rel
        if final.exists():
            return rel, False
        self._make_dirs(final.parent)
        if self.fsync:
            fd = os.open(temp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(temp, final)
        if self.fsync:
            fsync_dir(final.parent)
        return rel, True

    def remove(self, relpath: str) -> None:
        """Durably remove a spooled file (a commit the ledger refused)."""
        path = self.path_of(relpath)
        path.unlink(missing_ok=True)
        if self.fsync:
            fsync_dir(path.parent)

    def discard(self, temp: Path) -> None:
        try:
            temp.unlink()
        except FileNotFoundError:
            pass

    def iter_relpaths(self) -> list[str]:
        """Every spooled file, as a path relative to the spool root."""
        return sorted(str(p.relative_to(self.root)) for p in self.root.glob("??/??/*.dcm"))

    def free_mb(self) -> float:
        return shutil.disk_usage(self.data_dir).free / 1e6
