"""Result objects ready to send: a PS3.10 file in memory plus the UIDs every sender needs."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom import Dataset, dcmread, dcmwrite
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian

from node.dispatch.errors import DeliveryError

logger = logging.getLogger(__name__)

# PS3.5 9.1: a UID is at most 64 characters, numeric components separated by periods.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")

Item = Dataset | str | os.PathLike[str]


def is_valid_uid(value: str) -> bool:
    return len(value) <= 64 and bool(_UID.match(value))


@dataclass(frozen=True)
class Outgoing:
    """One result object: its PS3.10 encoding (``data``) and identifying UIDs."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    transfer_syntax_uid: str
    data: bytes

    def dataset(self) -> Dataset:
        """A fresh decoded copy (senders may change it, e.g. decompress it)."""
        return dcmread(BytesIO(self.data))


def _encode(ds: Dataset) -> bytes:
    # PS3.10 7.1: a file meta header with the transfer syntax; a data set built in memory without
    # one is written Explicit VR Little Endian, the default every storage SCP accepts.
    buf = BytesIO()
    has_ts = "TransferSyntaxUID" in getattr(ds, "file_meta", Dataset())
    if has_ts:
        dcmwrite(buf, ds, enforce_file_format=True)
    else:
        ds = Dataset(ds)  # shallow copy: leave the caller's file_meta alone
        ds.ensure_file_meta()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def prepare(items: Sequence[Item]) -> list[Outgoing]:
    """Read or encode every item; raise a permanent ``DeliveryError`` naming a bad one."""
    out: list[Outgoing] = []
    for item in items:
        if isinstance(item, Dataset):
            uid = str(item.get("SOPInstanceUID", "?"))
            where = f"data set {uid}"
            try:
                data = _encode(item)
            except (ValueError, TypeError, AttributeError, OSError) as exc:
                raise DeliveryError(f"cannot encode {where}: {exc}", transient=False) from exc
        else:
            where = f"file {os.fspath(item)!r}"
            try:
                data = Path(item).read_bytes()
            except OSError as exc:
                raise DeliveryError(f"cannot read {where}: {exc.strerror or exc}", transient=False) from exc
        try:
            ds = dcmread(BytesIO(data), stop_before_pixels=True)
            meta = ds.file_meta
            sop_instance = str(ds.SOPInstanceUID)
            sop_class = str(ds.SOPClassUID)
            study = str(ds.get("StudyInstanceUID", ""))
            ts = str(meta.TransferSyntaxUID)
        except (InvalidDicomError, AttributeError, ValueError, KeyError) as exc:
            raise DeliveryError(
                f"{where} is not a DICOM object with SOP Class, SOP Instance and Transfer Syntax UIDs: {exc}",
                transient=False,
            ) from exc
        for name, value in (("SOP Instance UID", sop_instance), ("SOP Class UID", sop_class)):
            if not is_valid_uid(value):
                raise DeliveryError(f"{where}: {name} {value!r} is not a valid UID", transient=False)
        out.append(Outgoing(sop_instance, sop_class, study, ts, data))
    return out
