"""Checks on a received object before anything is written to the spool.

One function, ``check_received``, for every way an object comes in (C-STORE now; a STOW-RS
endpoint would call it with the part's own SOP class as ``context_sop_class``). It reads the
file pynetdicom streamed the data set to, header only, and the pixel data item by item
(``node.pixels``), never the whole object in memory:

- the command, the presentation context and the data set agree on SOP class and instance;
- every UID in the data set (SOP Class/Instance, Study, Series, Frame of Reference, referenced
  UIDs inside sequences) is valid and at most 64 characters (PS3.5 9.1), so nothing unusable
  ever reaches the ledger's columns;
- NumberOfFrames is an integer (IS), present where the IOD makes it Type 1 (PS3.3 C.7.6.6);
- the pixel data agrees with the header and with the codestream the transfer syntax declares;
- a Deflated Explicit VR Little Endian data set (PS3.5 A.5) is inflated as a stream, capped.

A failure raises ``StoreRejected`` with the status a sender should see (PS3.4 B.2.3: A7xx out of
resources / over a configured limit, A9xx data set does not match SOP class, Cxxx cannot
understand) and an Error Comment that names the element and the value.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.filewriter import write_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian

from node.errors import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DATASET_DOES_NOT_MATCH,
    STATUS_OUT_OF_RESOURCES,
    StoreRejected,
)
from node.ledger import NewInstance
from node.pixels import PixelDataError, check_encapsulated, check_native, read_pixel_header
from node.receive.contexts import ENCAPSULATED_VIDEO_SYNTAXES, NATIVE_SYNTAXES, STORAGE_SOP_CLASSES

DEFLATED = "1.2.840.10008.1.2.1.99"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
MAX_UID_LENGTH = 64  # PS3.5 9.1
# IODs whose Multi-frame Module makes NumberOfFrames Type 1 (PS3.3 A.7, A.8, A.59)
MULTIFRAME_SOP_CLASSES = frozenset(uid for uid, name in STORAGE_SOP_CLASSES.items() if "Multi-frame" in name or "Volume" in name)
REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")  # Type 1
_IS = re.compile(r"^[+-]?\d{1,12}$")  # VR IS, PS3.5 6.2
_CHUNK = 1 << 16


@dataclass(frozen=True)
class Limits:
    """Configured ceilings ([node] max_instance_mb, max_inflated_mb, max_frames)."""

    max_instance_bytes: int = 2048 * 2**20
    max_inflated_bytes: int = 512 * 2**20
    max_frames: int = 10_000


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
    accession_number: str | None = None

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
            accession_number=self.accession_number,
        )


def _tag(keyword_or_tag: str | int) -> str:
    t = Tag(keyword_or_tag)
    return f"({t.group:04X},{t.element:04X})"


def check_uid(name: str, value: object, *, required: bool = True, where: str = "") -> str:
    """Return the UID stripped of padding; refuse it when invalid or longer than 64 characters.

    The message starts with the element and the value: an Error Comment keeps only 64 characters.
    """
    uid = str(value if value is not None else "").strip("\x00 ")
    inside = f" in {where}" if where else ""
    if not uid:
        if required:
            raise StoreRejected(STATUS_DATASET_DOES_NOT_MATCH, f"{name} is missing{inside}")
        return uid
    if len(uid) > MAX_UID_LENGTH:
        raise StoreRejected(STATUS_CANNOT_UNDERSTAND, f"{name}: {len(uid)} chars, over 64 for a UID: {uid!r}{inside}")
    if not UID(uid).is_valid:
        raise StoreRejected(STATUS_CANNOT_UNDERSTAND, f"{name}: invalid UID {uid!r}{inside}")
    return uid


def _uid_elements(ds: Dataset, where: str = "") -> Iterator[tuple[str, object, str]]:
    """Every UI value of ``ds`` and its sequences as (element, value, sequence path), without Pixel Data."""
    for raw in ds.elements():
        tag = Tag(raw.tag)
        if tag == 0x7FE00010 or tag.group == 0x0002:
            continue
        vr = raw.VR
        if vr is None:
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                continue  # private element in implicit VR: UN
        if vr not in ("UI", "SQ"):
            continue
        elem = ds[tag]
        name = f"{elem.keyword or 'UID'} {_tag(tag)}"
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value or []):
                yield from _uid_elements(item, f"{where}{elem.keyword or _tag(tag)}[{i}]>")
        elif elem.VR == "UI":
            values = elem.value if elem.VM > 1 else [elem.value]
            for value in values:
                yield name, value, where.rstrip(">")


def _frames(ds: Dataset, sop_class: str, limits: Limits) -> int:
    name = "NumberOfFrames (0028,0008)"
    raw = ds.get_item("NumberOfFrames")
    value = raw.value if raw is not None else None
    text = (value.decode("ascii", "replace") if isinstance(value, bytes) else str(value if value is not None else ""))
    text = text.strip(" \x00")
    if not text:
        if sop_class in MULTIFRAME_SOP_CLASSES:
            what = "empty" if raw is not None else "missing"
            raise StoreRejected(STATUS_DATASET_DOES_NOT_MATCH, f"{name} is {what} (Type 1 for {STORAGE_SOP_CLASSES[sop_class]})")
        return 1
    if not _IS.match(text):
        raise StoreRejected(STATUS_CANNOT_UNDERSTAND, f"{name} = {text[:16]!r} is not an integer")
    frames = int(text)
    if frames < 1:
        raise StoreRejected(STATUS_CANNOT_UNDERSTAND, f"{name} = {frames} (must be >= 1)")
    if frames > limits.max_frames:
        raise StoreRejected(STATUS_OUT_OF_RESOURCES, f"{name} = {frames} exceeds max_frames = {limits.max_frames}")
    return frames


def _int(ds: Dataset, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword, default)
    if value is None or value == "":
        if default is None:
            raise StoreRejected(STATUS_DATASET_DOES_NOT_MATCH, f"{keyword} {_tag(keyword)} is missing")
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise StoreRejected(STATUS_CANNOT_UNDERSTAND, f"{keyword} {_tag(keyword)} = {value!r} is not an integer") from None


def _inflate(src: BinaryIO, dst: BinaryIO | None, cap: int) -> int:
    """Stream-inflate a raw deflate stream (PS3.5 A.5) with bounded output per call; return its size."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        while not inflater.eof:
            data = src.read(_CHUNK)
            if not data:
                break
            while data and not inflater.eof:
                out = inflater.decompress(data, _CHUNK * 16)  # never more than 1 MiB at once
                total += len(out)
                if total > cap:
                    raise StoreRejected(
                        STATUS_OUT_OF_RESOURCES,
                        f"deflated data set inflates to over max_inflated_mb = {cap // 2**20}",
                    )
                if dst is not None:
                    dst.write(out)
                data = inflater.unconsumed_tail
        if not inflater.eof:
            raise StoreRejected(STATUS_CANNOT_UNDERSTAND, "deflated data set is truncated (no end of deflate stream)")
    except zlib.error as exc:
        raise StoreRejected(STATUS_CANNOT_UNDERSTAND, f"deflated data set cannot be inflated: {exc}") from None
    return total


def _dataset_offset(f: BinaryIO) -> int:
    """Offset of the data set after the preamble and File Meta Information (as pynetdicom writes it)."""
    f.seek(128)
    if f.read(4) != b"DICM":
        raise StoreRejected(STATUS_CANNOT_UNDERSTAND, "received file has no DICM prefix")
    head = f.read(12)  # (0002,0000) UL group length, explicit VR LE
    if len(head) < 12 or head[:4] != b"\x02\x00\x00\x00":
        raise StoreRejected(STATUS_CANNOT_UNDERSTAND, "received file has no File Meta group length")
    return 144 + int.from_bytes(head[8:12], "little")


def inflate_to(path: Path, out: Path, cap: int) -> None:
    """Write ``out``: ``path``'s file meta, transfer syntax Explicit VR LE, and its inflated data set."""
    with open(path, "rb") as src:
        start = _dataset_offset(src)
        src.seek(start)
        _inflate(src, None, cap)  # first pass counts: a bomb never reaches the disk
        plain = FileMetaDataset(read_file_meta_info(path))  # dcmread would inflate it all
        plain.TransferSyntaxUID = ExplicitVRLittleEndian
        src.seek(start)
        with open(out, "wb") as dst:
            dst.write(b"\x00" * 128 + b"DICM")
            write_file_meta_info(dst, plain, enforce_standard=True)  # type: ignore[arg-type]
            _inflate(src, dst, cap)


def check_received(
    path: Path,
    *,
    context_sop_class: str,
    transfer_syntax: str,
    affected_sop_instance: str | None,
    affected_sop_class: str | None = None,
    limits: Limits = Limits(),
) -> ReceivedInfo:
    """Validate the received file at ``path``; return its ledger facts or raise ``StoreRejected``."""
    size = path.stat().st_size
    if size > limits.max_instance_bytes:
        raise StoreRejected(
            STATUS_OUT_OF_RESOURCES, f"instance is {size} bytes, over max_instance_mb = {limits.max_instance_bytes // 2**20}"
        )
    if affected_sop_class is not None:
        command_class = check_uid("AffectedSOPClassUID (0000,0002)", affected_sop_class)
        if command_class != context_sop_class:
            raise StoreRejected(
                STATUS_DATASET_DOES_NOT_MATCH,
                f"AffectedSOPClassUID {command_class} differs from context {context_sop_class}",
            )
    if affected_sop_instance is not None:
        check_uid("AffectedSOPInstanceUID (0000,1000)", affected_sop_instance)
    if transfer_syntax != DEFLATED:
        return _check_plain(path, size, context_sop_class, transfer_syntax, transfer_syntax, affected_sop_instance, limits)
    inflated = path.with_name(path.name + ".inflated")
    try:
        inflate_to(path, inflated, limits.max_inflated_bytes)
        return _check_plain(
            inflated, size, context_sop_class, ExplicitVRLittleEndian, transfer_syntax, affected_sop_instance, limits
        )
    except (OSError, ValueError, InvalidDicomError) as exc:
        raise StoreRejected(STATUS_CANNOT_UNDERSTAND, f"deflated data set cannot be read: {exc}") from None
    finally:
        inflated.unlink(missing_ok=True)


def _check_plain(
    path: Path,
    size: int,
    context_sop_class: str,
    read_syntax: str,
    transfer_syntax: str,
    affected_sop_instance: str | None,
    limits: Limits,
) -> ReceivedInfo:
    with open(path, "rb") as f:
        try:
            ds = dcmread(f, defer_size=4096, stop_before_pixels=True)
            pixel_pos = f.tell()
            uids = list(_uid_elements(ds))
        except Exception as exc:  # whatever pydicom raises on hostile bytes (it has no single parse error)
            raise StoreRejected(STATUS_CANNOT_UNDERSTAND, f"data set cannot be parsed: {exc}") from None
        if len(ds) == 0:
            # pydicom gives up on the whole data set when an undefined-length value runs into EOF
            raise StoreRejected(STATUS_CANNOT_UNDERSTAND, f"data set is truncated or empty ({size} bytes received)")

        found = {name.split(" ")[0]: value for name, value, where in uids if not where}
        sop_class = check_uid("SOPClassUID (0008,0016)", found.get("SOPClassUID"))
        sop_instance = check_uid("SOPInstanceUID (0008,0018)", found.get("SOPInstanceUID"))
        for name, value, where in uids:
            check_uid(name, value, required=False, where=where)
        study = check_uid("StudyInstanceUID (0020,000D)", found.get("StudyInstanceUID"))
        series = check_uid("SeriesInstanceUID (0020,000E)", found.get("SeriesInstanceUID"))
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
        frames = _frames(ds, sop_class, limits)
        _check_pixels(f, ds, pixel_pos, path.stat().st_size, read_syntax, transfer_syntax, frames)
    return ReceivedInfo(
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        study_instance_uid=study,
        series_instance_uid=series,
        transfer_syntax_uid=transfer_syntax,
        frames=frames,
        size=size,
        accession_number=_accession(ds),
    )


def _accession(ds: Dataset) -> str | None:
    """Accession Number (0008,0050) fit for the ledger (SH: at most 16 printable characters)."""
    text = "".join(c for c in str(ds.get("AccessionNumber", "") or "") if 0x20 <= ord(c) < 0x7F).strip()
    return text[:16] or None


def _check_pixels(f: BinaryIO, ds: Dataset, pos: int, size: int, read_syntax: str, transfer_syntax: str, frames: int) -> None:
    try:
        value_pos, length = read_pixel_header(f, pos, little=read_syntax != EXPLICIT_BE, implicit=read_syntax == IMPLICIT_LE)
    except PixelDataError as exc:
        raise StoreRejected(STATUS_DATASET_DOES_NOT_MATCH, str(exc)) from None
    for keyword in ("Rows", "Columns", "BitsAllocated"):
        if _int(ds, keyword) < 1:
            raise StoreRejected(STATUS_CANNOT_UNDERSTAND, f"{keyword} {_tag(keyword)} = {ds.get(keyword)} (must be >= 1)")
    _int(ds, "SamplesPerPixel", 1)
    try:
        if transfer_syntax in NATIVE_SYNTAXES:
            check_native(ds, frames, length)
            if value_pos + length > size:
                raise PixelDataError(f"pixel data is truncated ({size} bytes received)")
            return
        if length != 0xFFFFFFFF:
            raise PixelDataError(f"compressed pixel data is not encapsulated (length {length})")
        check_encapsulated(
            f,
            value_pos,
            size,
            transfer_syntax=transfer_syntax,
            frames=frames,
            video=transfer_syntax in ENCAPSULATED_VIDEO_SYNTAXES,
            need_delimiter=True,
        )
    except PixelDataError as exc:
        raise StoreRejected(STATUS_CANNOT_UNDERSTAND, str(exc)) from None
    except (ValueError, TypeError, AttributeError, KeyError, NotImplementedError) as exc:  # nonsensical header
        raise StoreRejected(STATUS_CANNOT_UNDERSTAND, f"Image Pixel module is inconsistent: {exc}") from None
