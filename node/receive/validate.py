"""Checks on a received C-STORE data set before it is acknowledged.

The data set is parsed from the temp file pynetdicom streamed it to, with large values deferred
(no pixel decoding): it must be the SOP class of its presentation context, carry a valid SOP
Instance UID, pixel data and a frame count that agrees with the pixel data length (native
syntaxes) or with the fragments (encapsulated). A failure raises ``StoreRejected`` with the status
a sender should see (PS3.4 B.2.3: A9xx data set does not match SOP class, Cxxx cannot understand).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from node.errors import STATUS_CANNOT_UNDERSTAND, STATUS_DATASET_DOES_NOT_MATCH, StoreRejected
from node.ledger import NewInstance
from node.receive.contexts import ENCAPSULATED_VIDEO_SYNTAXES, NATIVE_SYNTAXES

PIXEL_DATA = 0x7FE00010
UNDEFINED_LENGTH = 0xFFFFFFFF


@dataclass(frozen=True)
class ReceivedInfo:
    """What the ledger records about a received instance (UIDs only, no patient data)."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str | None
    series_instance_uid: str | None
    transfer_syntax_uid: str
    frames: int
    size: int

    def ledger_row(self, spool_path: str, calling_ae: str | None, association_id: int | None) -> NewInstance:
        return NewInstance(
            sop_instance_uid=self.sop_instance_uid,
            sop_class_uid=self.sop_class_uid,
            study_instance_uid=self.study_instance_uid,
            series_instance_uid=self.series_instance_uid,
            transfer_syntax_uid=self.transfer_syntax_uid,
            spool_path=spool_path,
            size=self.size,
            frames=self.frames,
            calling_ae=calling_ae,
            association_id=association_id,
        )


def _int(ds: Dataset, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword, default)
    if value is None or value == "":
        if default is None:
            raise StoreRejected(STATUS_DATASET_DOES_NOT_MATCH, f"{keyword} is missing")
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise StoreRejected(STATUS_CANNOT_UNDERSTAND, f"{keyword} = {value!r} is not an integer") from None


def check_uid(name: str, value: object) -> str:
    uid = str(value or "").strip("\x00 ")
    if not uid:
        raise StoreRejected(STATUS_DATASET_DOES_NOT_MATCH, f"{name} is missing")
    if not UID(uid).is_valid:
        raise StoreRejected(STATUS_CANNOT_UNDERSTAND, f"{name} is not a valid UID: {uid[:64]!r}")
    return uid


def _count_fragments(raw: bytes, little: bool) -> int:
    """Count encapsulated items after the Basic Offset Table (PS3.5 A.4); raise if malformed.

    Every item must fit inside the value: a short last fragment means the sender's data (or the
    transfer) was truncated.
    """
    order: Literal["little", "big"] = "little" if little else "big"
    pos, items = 0, 0
    while True:
        if pos == len(raw):  # pydicom strips the Sequence Delimitation Item
            return items - 1
        if pos + 8 > len(raw):
            break
        group = int.from_bytes(raw[pos : pos + 2], order)
        elem = int.from_bytes(raw[pos + 2 : pos + 4], order)
        length = int.from_bytes(raw[pos + 4 : pos + 8], order)
        pos += 8
        if (group, elem) == (0xFFFE, 0xE0DD):
            return items - 1  # the first item is the Basic Offset Table
        if (group, elem) != (0xFFFE, 0xE000) or pos + length > len(raw):
            break
        pos += length
        items += 1
    raise StoreRejected(STATUS_CANNOT_UNDERSTAND, "encapsulated pixel data is truncated or malformed")


def check_received(
    path: Path,
    *,
    context_sop_class: str,
    transfer_syntax: str,
    affected_sop_instance: str | None,
) -> ReceivedInfo:
    """Validate the received file at ``path``; return its ledger facts or raise ``StoreRejected``."""
    size = path.stat().st_size
    try:
        ds = dcmread(path, defer_size=4096, force=False)
        ds.get("NumberOfFrames")  # force parsing of the leading elements
    except (InvalidDicomError, EOFError, ValueError, OSError, KeyError, TypeError) as exc:
        raise StoreRejected(STATUS_CANNOT_UNDERSTAND, f"data set cannot be parsed: {exc}") from None
    if len(ds) == 0:
        # pydicom gives up on the whole data set when an undefined-length value runs into EOF
        raise StoreRejected(STATUS_CANNOT_UNDERSTAND, f"data set is truncated or empty ({size} bytes received)")

    sop_instance = check_uid("SOP Instance UID", ds.get("SOPInstanceUID"))
    sop_class = check_uid("SOP Class UID", ds.get("SOPClassUID"))
    if sop_class != context_sop_class:
        raise StoreRejected(
            STATUS_DATASET_DOES_NOT_MATCH,
            f"SOP Class UID mismatch: data set {sop_class}, presentation context {context_sop_class}",
        )
    if affected_sop_instance is not None and affected_sop_instance.strip("\x00 ") != sop_instance:
        raise StoreRejected(
            STATUS_DATASET_DOES_NOT_MATCH,
            f"SOP Instance UID {sop_instance} differs from the request's {affected_sop_instance}",
        )

    frames = _int(ds, "NumberOfFrames", 1)
    if frames < 1:
        raise StoreRejected(STATUS_CANNOT_UNDERSTAND, f"NumberOfFrames = {frames} (must be >= 1)")
    if PIXEL_DATA not in ds:
        raise StoreRejected(STATUS_DATASET_DOES_NOT_MATCH, "Pixel Data (7FE0,0010) is missing")
    elem = ds.get_item(PIXEL_DATA)
    encapsulated = transfer_syntax not in NATIVE_SYNTAXES
    if isinstance(elem, RawDataElement) and elem.value is None:
        length = elem.length
        value: bytes | None = None
    else:
        value = ds[PIXEL_DATA].value if not isinstance(elem, RawDataElement) else elem.value
        length = len(value) if value is not None else 0
    if encapsulated:
        if value is None:
            raise StoreRejected(STATUS_CANNOT_UNDERSTAND, "compressed pixel data is not encapsulated")
        fragments = _count_fragments(bytes(value), transfer_syntax != "1.2.840.10008.1.2.2")
        if fragments < 1:
            raise StoreRejected(STATUS_CANNOT_UNDERSTAND, "encapsulated pixel data has no fragments")
        if transfer_syntax not in ENCAPSULATED_VIDEO_SYNTAXES and fragments < frames:
            raise StoreRejected(
                STATUS_CANNOT_UNDERSTAND,
                f"NumberOfFrames = {frames} but the pixel data holds only {fragments} fragment(s)",
            )
    else:
        rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
        spp, bits = _int(ds, "SamplesPerPixel", 1), _int(ds, "BitsAllocated")
        need = rows * cols * spp * frames * bits // 8
        if bits == 1:
            need = (rows * cols * frames + 7) // 8
        if length == UNDEFINED_LENGTH or length < need or length > need + 1 + (need % 2):
            raise StoreRejected(
                STATUS_CANNOT_UNDERSTAND,
                f"pixel data holds {length} bytes, {frames} frame(s) of {rows}x{cols}x{spp} at {bits} bits need {need}",
            )
        if isinstance(elem, RawDataElement) and elem.value_tell is not None and elem.value_tell + length > size:
            raise StoreRejected(STATUS_CANNOT_UNDERSTAND, f"pixel data is truncated ({size} bytes received)")

    return ReceivedInfo(
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        study_instance_uid=str(ds.get("StudyInstanceUID", "")) or None,
        series_instance_uid=str(ds.get("SeriesInstanceUID", "")) or None,
        transfer_syntax_uid=transfer_syntax,
        frames=frames,
        size=size,
    )
