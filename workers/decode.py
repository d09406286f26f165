"""Decode the frames of an ultrasound cine loop to RGB uint8, lazily and for every accepted syntax.

``load_clip`` reads the header and checks the pixel data (length, fragments, video frame count) so that
a bad object fails at once with :class:`~workers.errors.DecodeError`, never half-way through a clip.
Frames are decoded on demand: :meth:`Clip.frames` decodes only the requested frames and
:meth:`Clip.iter_chunks` streams the loop in bounded chunks; a file source is re-read per call
(pydicom reads only the frames asked for), so a 1,000-frame loop is never held whole in memory.

Colour and grey mapping is in :mod:`workers.colour`; regions and frame timing in :mod:`workers.loop_header`.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
import pydicom
import pydicom.uid as puid
from pydicom.dataset import Dataset
from pydicom.pixels import iter_pixels

from workers.colour import grey_range, grey_to_uint8, palette_table, to_uint8  # noqa: F401
from workers.errors import DecodeError
from workers.loop_header import frame_times, ultrasound_regions  # noqa: F401
from workers.pixeldata import (  # noqa: F401  (re-exported: the public names of decoding)
    ENCAPSULATED_UNCOMPRESSED,
    NATIVE_SYNTAXES,
    VIDEO_SYNTAXES,
    _check_pixel_data,
    _read_pixel_header,
    scan_fragments,
)
from workers.prediction import Box
from workers.video import VideoInfo, iter_video_frames, probe_video  # noqa: F401

logger = logging.getLogger(__name__)



@dataclass
class Clip:
    """One cine loop: its geometry and timing, with frames decoded on demand."""

    path: Path | None
    sop_instance_uid: str
    sop_class_uid: str
    n_frames: int
    rows: int
    cols: int
    frame_times_ms: np.ndarray | None
    regions: tuple[Box, ...]
    transfer_syntax_uid: str = ""
    photometric: str = ""
    _header: Dataset = field(default_factory=Dataset, repr=False, compare=False)
    _dataset: Dataset | None = field(default=None, repr=False, compare=False)  # in-memory pixel source
    _video: bytes | None = field(default=None, repr=False, compare=False)  # whole encapsulated bitstream
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    # ------------------------------------------------------------------ public
    def frames(self, indices: Sequence[int]) -> np.ndarray:
        """Decode the given 0-based frames (repeats allowed, any order) to (n, rows, cols, 3) uint8 RGB.

        Each distinct frame is decoded once. For the video syntaxes every call decodes the stream from
        its start up to the last index requested, so ask for all the frames you need in one call.
        """
        idx = [int(i) for i in indices]
        for i in idx:
            if not 0 <= i < self.n_frames:
                raise IndexError(f"{self.sop_instance_uid}: frame index {i} outside 0..{self.n_frames - 1}")
        out = np.empty((len(idx), self.rows, self.cols, 3), dtype=np.uint8)
        if not idx:
            return out
        wanted = sorted(set(idx))
        decoded: dict[int, np.ndarray] = {}
        for i, rgb in zip(wanted, self._decode(wanted), strict=False):
            decoded[i] = rgb
        if len(decoded) != len(wanted):
            missing = [i for i in wanted if i not in decoded]
            raise DecodeError(f"{self.sop_instance_uid}: frame(s) {missing[:5]} could not be decoded")
        for k, i in enumerate(idx):
            out[k] = decoded[i]
        return out

    def iter_chunks(self, chunk: int = 32) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first index, (n <= chunk, rows, cols, 3) uint8)`` for the whole loop, in order."""
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        buf: list[np.ndarray] = []
        first = 0
        count = 0
        for rgb in self._decode(None):
            buf.append(rgb)
            count += 1
            if len(buf) == chunk:
                yield first, np.stack(buf)
                first, buf = count, []
        if buf:
            yield first, np.stack(buf)
        if count != self.n_frames:
            raise DecodeError(
                f"{self.sop_instance_uid}: pixel data decoded to {count} frames, NumberOfFrames is {self.n_frames}"
            )

    # ----------------------------------------------------------------- private
    def _decode(self, wanted: list[int] | None) -> Iterator[np.ndarray]:
        """Yield RGB frames for ``wanted`` (sorted, distinct) or all frames; errors become DecodeError."""
        uid = self.sop_instance_uid
        try:
            if self._video is not None:
                for i, arr in iter_video_frames(self._video, self.transfer_syntax_uid, wanted):
                    if i >= self.n_frames:
                        return
                    yield self._check_shape(arr)
                return
            if self.transfer_syntax_uid == ENCAPSULATED_UNCOMPRESSED:
                raw_iter = self._iter_encapsulated_uncompressed(wanted)
            else:
                src: Any = self._dataset if self._dataset is not None else self.path
                raw_iter = iter_pixels(src, indices=wanted)
            for arr in raw_iter:
                yield self._to_rgb(arr)
        except DecodeError:
            raise
        except (
            ValueError,
            RuntimeError,
            OSError,
            NotImplementedError,
            AttributeError,
            KeyError,
            struct.error,
            MemoryError,
            EOFError,
            av.error.FFmpegError,
        ) as exc:
            raise DecodeError(f"{uid}: pixel data cannot be decoded ({type(exc).__name__}: {exc})") from exc

    def _check_shape(self, arr: np.ndarray) -> np.ndarray:
        if arr.shape != (self.rows, self.cols, 3):
            raise DecodeError(
                f"{self.sop_instance_uid}: video frames are {arr.shape[1]}x{arr.shape[0]}, "
                f"Rows/Columns say {self.cols}x{self.rows}"
            )
        return arr

    def _iter_encapsulated_uncompressed(self, wanted: list[int] | None) -> Iterator[np.ndarray]:
        # PS3.5 A.4.11: one fragment per frame holding the native little-endian frame bytes.
        ds = self._dataset
        frags = self._cache["fragments"]
        spp = int(self._header.get("SamplesPerPixel", 1))
        dtype = np.dtype(f"<u{int(self._header.BitsAllocated) // 8}")
        n_px = self.rows * self.cols * spp
        for i in wanted if wanted is not None else range(self.n_frames):
            off, length = frags[i]
            arr = np.frombuffer(self._read_span(ds, off, n_px * dtype.itemsize), dtype=dtype)
            if spp == 3 and int(self._header.get("PlanarConfiguration", 0)) == 1:
                arr = arr.reshape(3, self.rows, self.cols).transpose(1, 2, 0)
            yield self._to_rgb(
                arr.reshape((self.rows, self.cols, spp) if spp > 1 else (self.rows, self.cols))
            )

    def _read_span(self, ds: Dataset | None, offset: int, length: int) -> bytes:
        if ds is not None:
            return bytes(ds.PixelData[offset : offset + length])
        assert self.path is not None
        with open(self.path, "rb") as f:
            f.seek(self._cache["pixel_offset"] + offset)
            return f.read(length)

    def _to_rgb(self, arr: np.ndarray) -> np.ndarray:
        """Map one decoded frame (pydicom output, YBR already converted) to (rows, cols, 3) uint8 RGB."""
        pi = self.photometric
        if arr.ndim == 3:  # RGB (incl. converted YBR_* and JPEG 2000 RCT/ICT)
            return to_uint8(arr, int(self._header.get("BitsStored", 8)))
        if pi == "PALETTE COLOR":
            lut = self._cache.get("lut")
            if lut is None:
                lut = self._cache["lut"] = palette_table(self._header, arr.dtype)
            return np.asarray(lut[arr])
        grey = grey_to_uint8(arr, self._header, self._grey_range)
        if pi == "MONOCHROME1":
            grey = 255 - grey
        return np.repeat(grey[:, :, None], 3, axis=2)

    def _grey_range(self) -> tuple[float, float]:
        """One range for the whole loop (computed once), so that brightness does not flicker."""
        if "grey_range" not in self._cache:
            src: Any = self._dataset if self._dataset is not None else self.path
            self._cache["grey_range"] = grey_range(
                self._header, self.n_frames, lambda idx: iter_pixels(src, indices=idx)
            )
        lo, hi = self._cache["grey_range"]
        return float(lo), float(hi)


# ---------------------------------------------------------------------- loading
def load_clip(source: str | os.PathLike[str] | Dataset) -> Clip:
    """Read the header of a cine loop and check its pixel data; frames are decoded later.

    Raises
    ------
    DecodeError
        Missing or truncated pixel data, NumberOfFrames inconsistent with the data, an unsupported
        transfer syntax or an unreadable file; the message names the SOP Instance UID.
    """
    path: Path | None = None
    if isinstance(source, Dataset):
        header, dataset = source, source
    else:
        path = Path(source)
        try:
            with open(path, "rb") as f:
                header = pydicom.dcmread(f, stop_before_pixels=True)
                pixel_pos = f.tell()
        except (OSError, pydicom.errors.InvalidDicomError, ValueError, EOFError, struct.error) as exc:
            raise DecodeError(f"{path.name}: not a readable DICOM file ({exc})") from exc
        dataset = None
    uid = str(header.get("SOPInstanceUID", "<no SOPInstanceUID>"))
    meta = getattr(header, "file_meta", None) or Dataset()
    tsyntax = str(meta.get("TransferSyntaxUID", ""))
    if not tsyntax:
        raise DecodeError(f"{uid}: no Transfer Syntax UID in the file meta information")
    if tsyntax == puid.DeflatedExplicitVRLittleEndian and dataset is None:
        assert path is not None  # deflate cannot be read lazily: inflate the whole data set once
        try:
            dataset = pydicom.dcmread(path)
        except (OSError, ValueError, EOFError, zlib.error) as exc:
            raise DecodeError(f"{uid}: deflated data set cannot be inflated ({exc})") from exc
        header = dataset
    for kw in ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation"):
        if kw not in header:
            raise DecodeError(f"{uid}: Image Pixel module lacks {kw}")
    palette = str(header.PhotometricInterpretation).strip() == "PALETTE COLOR"
    if palette and "RedPaletteColorLookupTableDescriptor" not in header:
        raise DecodeError(f"{uid}: PALETTE COLOR without a Palette Color Lookup Table")
    rows, cols = int(header.Rows), int(header.Columns)
    n_frames = int(header.get("NumberOfFrames", 1) or 1)
    clip = Clip(
        path=path,
        sop_instance_uid=uid,
        sop_class_uid=str(header.get("SOPClassUID", "")),
        n_frames=n_frames,
        rows=rows,
        cols=cols,
        frame_times_ms=None,
        regions=ultrasound_regions(header, rows, cols),
        transfer_syntax_uid=tsyntax,
        photometric=str(header.PhotometricInterpretation).strip(),
        _header=header,
        _dataset=dataset,
    )
    _check_supported(clip)
    if dataset is not None:
        if "PixelData" not in dataset:
            raise DecodeError(f"{uid}: no Pixel Data element (7FE0,0010)")
        _check_pixel_data(clip, io.BytesIO(dataset.PixelData), 0, len(dataset.PixelData), header)
    else:
        assert path is not None
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            value_pos, length = _read_pixel_header(f, pixel_pos, puid.UID(tsyntax), uid)
            clip._cache["pixel_offset"] = value_pos
            end = size if length == 0xFFFFFFFF else min(size, value_pos + length)
            _check_pixel_data(clip, f, value_pos, end, header, undefined=length == 0xFFFFFFFF)
    clip.frame_times_ms = frame_times(header, clip.n_frames, clip._cache.get("video_rate"))
    logger.debug("%s: %d frames %dx%d %s %s", uid, clip.n_frames, cols, rows, clip.photometric, tsyntax)
    return clip


def _check_supported(clip: Clip) -> None:
    ts, uid = clip.transfer_syntax_uid, clip.sop_instance_uid
    if (
        ts in VIDEO_SYNTAXES
        or ts in NATIVE_SYNTAXES
        or ts in (ENCAPSULATED_UNCOMPRESSED, puid.DeflatedExplicitVRLittleEndian)
    ):
        return
    try:
        decoder = pydicom.pixels.get_decoder(puid.UID(ts))
    except NotImplementedError as exc:
        raise DecodeError(f"{uid}: transfer syntax {ts} is not supported") from exc
    if not decoder.is_available:
        raise DecodeError(f"{uid}: no decoder plugin installed for transfer syntax {ts}")
