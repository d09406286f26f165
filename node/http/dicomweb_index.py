"""What the node holds, as DICOMweb sees it: spooled source objects and the SR/SC results it wrote.

The ledger keeps UIDs only (no patient data), so QIDO-RS matches on the objects' own headers. They
are read once (without pixel data) and kept in memory keyed by path, size and mtime; files deleted
by retention (``[retention]``) disappear from the index at the next scan. Spool files are renamed in
whole and results written atomically (``node.spool.write_atomic``), so a scan never sees half a file.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from node.config import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    """One instance the node can serve."""

    path: Path
    header: Dataset  # the data set without Pixel Data (and without File Meta)
    study: str
    series: str
    sop_instance: str
    transfer_syntax: str
    result: bool  # written by the node (SR, SC) rather than received


class Holdings:
    """The index over ``data_dir/spool`` and ``data_dir/results``."""

    def __init__(self, settings: Settings) -> None:
        self.data_dir = settings.storage.data_dir
        self._cache: dict[Path, tuple[int, int, Entry | None]] = {}
        self._lock = threading.Lock()

    def _files(self) -> Iterator[tuple[Path, bool]]:
        for path in sorted((self.data_dir / "spool").glob("??/??/*.dcm")):
            yield path, False
        for path in sorted((self.data_dir / "results").glob("??/*/*.dcm")):
            yield path, True

    def _read(self, path: Path, result: bool) -> Entry | None:
        try:
            ds = dcmread(path, stop_before_pixels=True, defer_size=4096)
            syntax = str(ds.file_meta.TransferSyntaxUID)
            entry = Entry(
                path,
                ds,
                str(ds.StudyInstanceUID),
                str(ds.SeriesInstanceUID),
                str(ds.SOPInstanceUID),
                syntax,
                result,
            )
        except Exception as exc:  # an unreadable file is not served (recovery quarantines spool debris)
            logger.warning("%s is not served by DICOMweb: %s", path.name, exc)
            return None
        return entry

    def entries(self) -> list[Entry]:
        seen: set[Path] = set()
        out: list[Entry] = []
        for path, result in self._files():
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            seen.add(path)
            with self._lock:
                cached = self._cache.get(path)
            if cached is not None and cached[:2] == (st.st_size, st.st_mtime_ns):
                entry = cached[2]
            else:
                entry = self._read(path, result)
                with self._lock:
                    self._cache[path] = (st.st_size, st.st_mtime_ns, entry)
            if entry is not None:
                out.append(entry)
        with self._lock:
            for gone in set(self._cache) - seen:
                del self._cache[gone]
        return out

    def select(
        self, study: str | None = None, series: str | None = None, instance: str | None = None
    ) -> list[Entry]:
        return [
            e
            for e in self.entries()
            if (study is None or e.study == study)
            and (series is None or e.series == series)
            and (instance is None or e.sop_instance == instance)
        ]
