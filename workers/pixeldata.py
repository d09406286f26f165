"""Pixel Data checks before any frame is decoded: element header, encapsulated fragments and Basic
Offset Table (PS3.5 A.4), byte counts against what the image header needs."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, BinaryIO

import pydicom.uid as puid
from pydicom.dataset import Dataset

from node.pixels import PixelDataError, native_length, read_pixel_header
from node.pixels import scan_fragments as shared_scan_fragments
from workers.errors import DecodeError
from workers.video import probe_video

if TYPE_CHECKING:
    from workers.decode import Clip

logger = logging.getLogger(__name__)

ENCAPSULATED_UNCOMPRESSED = "1.2.840.10008.1.2.1.98"
VIDEO_SYNTAXES = frozenset(str(u) for u in puid.MPEGTransferSyntaxes)
NATIVE_SYNTAXES = frozenset(
    {puid.ImplicitVRLittleEndian, puid.ExplicitVRLittleEndian, puid.ExplicitVRBigEndian}
)


def _read_pixel_header(f: BinaryIO, pos: int, ts: puid.UID, uid: str) -> tuple[int, int]:
    """Return (value offset, value length) of the top-level Pixel Data element that starts at ``pos``."""
    try:
        return read_pixel_header(f, pos, little=ts.is_little_endian, implicit=ts.is_implicit_VR)
    except PixelDataError as exc:
        text = str(exc).replace("Pixel Data (7FE0,0010) is missing", "no Pixel Data element (7FE0,0010)")
        raise DecodeError(f"{uid}: {text}") from None


def _check_pixel_data(
    clip: Clip, f: BinaryIO, start: int, end: int, header: Dataset, undefined: bool = False
) -> None:
    """Validate the pixel data value occupying ``f[start:end]`` against the header; fills clip caches."""
    uid, ts = clip.sop_instance_uid, clip.transfer_syntax_uid
    if ts in NATIVE_SYNTAXES or ts == puid.DeflatedExplicitVRLittleEndian:
        need = native_length(header, clip.n_frames)  # shared with the receiver (node.pixels)
        if end - start < need:
            spp = int(header.get("SamplesPerPixel", 1))
            raise DecodeError(
                f"{uid}: pixel data holds {end - start} bytes, {clip.n_frames} frames of "
                f"{clip.rows}x{clip.cols}x{spp} at {header.BitsAllocated} bits need {need}"
            )
        return
    bot, frags = scan_fragments(f, start, end, uid, need_delimiter=undefined)
    clip._cache["fragments"] = frags
    if ts in VIDEO_SYNTAXES:
        f.seek(0)
        chunks = []
        for off, length in frags:
            f.seek(start + off)
            chunks.append(f.read(length))
        clip._video = b"".join(chunks)
        info = probe_video(clip._video, ts, uid)
        clip._cache["video_rate"] = info.fps
        if (info.height, info.width) != (clip.rows, clip.cols):
            raise DecodeError(
                f"{uid}: video frames are {info.width}x{info.height}, Columns x Rows say {clip.cols}x{clip.rows}"
            )
        if "NumberOfFrames" not in header:
            clip.n_frames = info.n_frames
        elif info.n_frames < clip.n_frames:
            raise DecodeError(
                f"{uid}: video stream holds {info.n_frames} frames, NumberOfFrames is {clip.n_frames}"
            )
        elif info.n_frames > clip.n_frames:
            logger.warning(
                "%s: video holds %d frames, using the first %d (NumberOfFrames)",
                uid,
                info.n_frames,
                clip.n_frames,
            )
        return
    if not frags:
        raise DecodeError(f"{uid}: encapsulated pixel data holds no fragments")
    if len(frags) < clip.n_frames:
        raise DecodeError(
            f"{uid}: NumberOfFrames is {clip.n_frames} but the pixel data holds only {len(frags)} fragments"
        )
    if bot and len(bot) != clip.n_frames:
        raise DecodeError(
            f"{uid}: Basic Offset Table lists {len(bot)} frames, NumberOfFrames is {clip.n_frames}"
        )
    if ts == ENCAPSULATED_UNCOMPRESSED:
        need = clip.rows * clip.cols * int(header.get("SamplesPerPixel", 1)) * int(header.BitsAllocated) // 8
        if len(frags) != clip.n_frames or any(length < need for _, length in frags):
            raise DecodeError(
                f"{uid}: encapsulated uncompressed frames must be {clip.n_frames} fragments of {need} bytes"
            )


def scan_fragments(
    f: BinaryIO, start: int, end: int, uid: str, need_delimiter: bool = False
) -> tuple[list[int], list[tuple[int, int]]]:
    """Walk the items of encapsulated pixel data (PS3.5 A.4) in ``f[start:end]``.

    Returns the Basic Offset Table offsets and ``(offset, length)`` of each fragment's value, relative
    to ``start``. Raises DecodeError when an item runs past the data or the sequence is cut short.
    The walk is ``node.pixels.scan_fragments`` (pydicom.encaps), the one the receiver uses.
    """
    try:
        return shared_scan_fragments(f, start, end, need_delimiter=need_delimiter)
    except PixelDataError as exc:
        raise DecodeError(f"{uid}: {exc}") from None
