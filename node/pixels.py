"""Pixel Data checks shared by the receiver (``node.receive.validate``) and the decoder (``workers``).

Built on pydicom's own functions: ``pydicom.encaps`` walks the encapsulated items (PS3.5 A.4) and
``pydicom.pixels.utils.get_expected_length`` gives the native byte count (it knows that YBR_FULL_422
stores two samples per pixel, PS3.3 C.7.6.3.1.2). Everything reads from a seekable file, item by
item, so a hostile object never makes us hold its pixel data in memory.

Errors are ``PixelDataError`` (a ``ValueError``) whose message names the element and the value.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from pydicom.dataset import Dataset
from pydicom.encaps import parse_basic_offsets, parse_fragments
from pydicom.pixels.utils import get_expected_length

PIXEL_DATA_TAG = (0x7FE0, 0x0010)
UNDEFINED_LENGTH = 0xFFFFFFFF
SEQUENCE_DELIMITER = (0xFFFE, 0xE0DD)

# First bytes of the codestream each encapsulated transfer syntax carries (PS3.5 8.2 and A.4):
# a JPEG codestream is not an H.264 stream, whatever the sender declared.
_JPEG = (b"\xff\xd8",)  # SOI marker, ISO/IEC 10918-1 and 14495-1 (JPEG-LS)
_J2K = (b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  \r\n\x87\n")  # SOC+SIZ, or a JP2 signature box
_VIDEO = (b"\x00\x00\x01", b"\x00\x00\x00\x01")  # MPEG start code / Annex B start code prefix
_DECLARED = {
    **{f"1.2.840.10008.1.2.4.{n}": "JPEG" for n in (50, 51, 57, 70)},
    "1.2.840.10008.1.2.4.80": "JPEG-LS",
    "1.2.840.10008.1.2.4.81": "JPEG-LS",
    "1.2.840.10008.1.2.4.90": "JPEG 2000",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.4.100": "MPEG-2",
    "1.2.840.10008.1.2.4.101": "MPEG-2",
    **{f"1.2.840.10008.1.2.4.{n}": "H.264" for n in range(102, 107)},
    "1.2.840.10008.1.2.4.107": "HEVC",
    "1.2.840.10008.1.2.4.108": "HEVC",
}
_MAGIC = {"JPEG": _JPEG, "JPEG-LS": _JPEG, "JPEG 2000": _J2K, "MPEG-2": _VIDEO, "H.264": _VIDEO, "HEVC": _VIDEO}


def codestream_kind(head: bytes) -> str:
    """What the first bytes of a fragment look like (for error messages)."""
    for name, magic in (("JPEG", _JPEG), ("JPEG 2000", _J2K), ("MPEG/H.264/HEVC", _VIDEO)):
        if head.startswith(magic):
            return name
    return f"unknown data ({head[:4].hex()})"


RLE_LOSSLESS = "1.2.840.10008.1.2.5"


class PixelDataError(ValueError):
    """Pixel Data (7FE0,0010) disagrees with the image header or the transfer syntax."""


def read_pixel_header(f: BinaryIO, pos: int, *, little: bool, implicit: bool) -> tuple[int, int]:
    """Return (value offset, value length) of the Pixel Data element whose tag starts at ``pos``."""
    order = "<" if little else ">"
    f.seek(pos)
    head = f.read(8)
    if len(head) < 8:
        raise PixelDataError("Pixel Data (7FE0,0010) is missing")
    group, elem = struct.unpack(f"{order}HH", head[:4])
    if (group, elem) != PIXEL_DATA_TAG:
        raise PixelDataError(f"Pixel Data (7FE0,0010) is missing; found ({group:04X},{elem:04X})")
    if implicit:
        return pos + 8, int(struct.unpack(f"{order}L", head[4:8])[0])
    more = f.read(4)
    if len(more) < 4:
        raise PixelDataError("Pixel Data (7FE0,0010) element header is truncated")
    return pos + 12, int(struct.unpack(f"{order}L", more)[0])


def native_length(header: Dataset, frames: int) -> int:
    """Bytes that ``frames`` native frames of ``header``'s Image Pixel module need (no padding)."""
    probe = Dataset()
    for kw in ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "PhotometricInterpretation"):
        if kw in header:
            setattr(probe, kw, header[kw].value)
    probe.SamplesPerPixel = probe.get("SamplesPerPixel", 1) or 1
    probe.PhotometricInterpretation = str(probe.get("PhotometricInterpretation", "") or "MONOCHROME2").strip()
    probe.NumberOfFrames = frames
    return int(get_expected_length(probe, "bytes"))


def check_native(header: Dataset, frames: int, length: int) -> None:
    """Native Pixel Data of ``length`` bytes must hold exactly ``frames`` frames (+1 pad byte)."""
    need = native_length(header, frames)
    if length == UNDEFINED_LENGTH or length < need or length > need + 1 + (need % 2):
        shown = "undefined length" if length == UNDEFINED_LENGTH else f"{length} bytes"
        rows, cols = header.get("Rows"), header.get("Columns")
        spp, bits = header.get("SamplesPerPixel", 1), header.get("BitsAllocated")
        photo = str(header.get("PhotometricInterpretation", "")).strip()
        raise PixelDataError(
            f"pixel data holds {shown}, {frames} frame(s) of {rows}x{cols}x{spp} {photo} at {bits} bits need {need}"
        )


def scan_fragments(
    f: BinaryIO, start: int, end: int, *, little: bool = True, need_delimiter: bool = False
) -> tuple[list[int], list[tuple[int, int]]]:
    """Walk encapsulated Pixel Data in ``f[start:end]`` (PS3.5 A.4) with ``pydicom.encaps``.

    Returns the Basic Offset Table and ``(offset, length)`` of each fragment's value, relative to
    ``start``. Raises ``PixelDataError`` when an item is malformed or runs past ``end`` (a
    truncated transfer), or when undefined-length data lacks its Sequence Delimitation Item.
    """
    order = "<" if little else ">"
    f.seek(start)
    try:
        bot = parse_basic_offsets(f, endianness=order)
        first = f.tell()
        _, positions = parse_fragments(f, endianness=order)
    except (ValueError, struct.error) as exc:
        raise PixelDataError(f"encapsulated pixel data is malformed: {exc}") from None
    frags: list[tuple[int, int]] = []
    pos = first
    for item in positions:
        f.seek(item + 4)
        raw = f.read(4)
        length = int(struct.unpack(f"{order}L", raw)[0]) if len(raw) == 4 else UNDEFINED_LENGTH
        if length == UNDEFINED_LENGTH or item + 8 + length > end:
            raise PixelDataError(
                f"encapsulated pixel data is truncated: fragment {len(frags) + 1} claims {length} bytes, "
                f"{max(end - item - 8, 0)} remain"
            )
        frags.append((item + 8 - start, length))
        pos = item + 8 + length
    if need_delimiter:
        f.seek(pos)
        tail = f.read(8)
        if len(tail) < 8 or struct.unpack(f"{order}HH", tail[:4]) != SEQUENCE_DELIMITER:
            raise PixelDataError(
                f"encapsulated pixel data is truncated after {len(frags)} fragment(s) (no sequence delimiter)"
            )
    return [int(b) for b in bot], frags


def _frame_starts(bot: list[int], frags: list[tuple[int, int]], frames: int) -> list[int]:
    """Index of the first fragment of each frame that can be located without decoding."""
    if len(frags) == frames:
        return list(range(frames))
    if bot and len(bot) == frames:
        first = frags[0][0] - 8 if frags else 0
        by_offset = {off - 8 - first: i for i, (off, _) in enumerate(frags)}
        return [by_offset[o] for o in bot if o in by_offset]
    return [0] if frags else []


def check_codestream(f: BinaryIO, start: int, transfer_syntax: str, bot: list[int], frags: list[tuple[int, int]], frames: int) -> None:
    """The codestream must be the one the transfer syntax declares (checked on each frame's start)."""
    declared = _DECLARED.get(transfer_syntax)
    for index in _frame_starts(bot, frags, frames):
        off, length = frags[index]
        f.seek(start + off)
        head = f.read(min(length, 64))
        if declared is not None:
            if not head.startswith(_MAGIC[declared]):
                raise PixelDataError(
                    f"PixelData frame {index + 1} is {codestream_kind(head)}, not {declared} ({transfer_syntax})"
                )
        elif transfer_syntax == RLE_LOSSLESS:
            # RLE header: 16 little-endian uint32, segment count 1-15, first offset 64 (PS3.5 G.5)
            segments, first_offset = struct.unpack("<LL", head[:8]) if len(head) >= 8 else (0, 0)
            if not 1 <= segments <= 15 or first_offset != 64:
                raise PixelDataError(
                    f"frame {index + 1} has no valid RLE header (segments {segments}, first offset {first_offset})"
                )


def check_encapsulated(
    f: BinaryIO,
    start: int,
    end: int,
    *,
    transfer_syntax: str,
    frames: int,
    video: bool,
    need_delimiter: bool,
) -> tuple[list[int], list[tuple[int, int]]]:
    """Fragments consistent with NumberOfFrames and the declared codestream; returns (BOT, fragments)."""
    bot, frags = scan_fragments(f, start, end, little=True, need_delimiter=need_delimiter)
    if not frags:
        raise PixelDataError("encapsulated pixel data holds no fragments")
    if not video:
        if len(frags) < frames:
            raise PixelDataError(f"NumberOfFrames is {frames} but the pixel data holds only {len(frags)} fragment(s)")
        if bot and len(bot) != frames:
            raise PixelDataError(f"Basic Offset Table lists {len(bot)} frames, NumberOfFrames is {frames}")
    check_codestream(f, start, transfer_syntax, bot, frags, frames)
    return bot, frags
