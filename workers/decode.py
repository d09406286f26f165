"""Decode the frames of an ultrasound cine loop to RGB uint8, lazily and for every accepted syntax.

``load_clip`` reads the header and checks the pixel data (length, fragments, video frame count) so that
a bad object fails at once with :class:`~workers.errors.DecodeError`, never half-way through a clip.
Frames are decoded on demand: :meth:`Clip.frames` decodes only the requested frames and
:meth:`Clip.iter_chunks` streams the loop in bounded chunks; a file source is re-read per call
(pydicom reads only the frames asked for), so a 1,000-frame loop is never held whole in memory.

Colour (PS3.3 C.7.6.3.1.2): YBR_FULL/YBR_FULL_422 are converted by pydicom, YBR_RCT/YBR_ICT by the
JPEG 2000 decoder; PALETTE COLOR goes through its LUT (16-bit LUT entries scaled to 8 bits); grey is
replicated to three channels, MONOCHROME1 inverted. Grey with more than 8 stored bits is windowed with
the first Window Center/Width (PS3.3 C.11.2.1.2.1, after any Rescale) or, without a window, scaled by
one min-max range taken from a sample of frames, so that brightness does not flicker between frames.
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
from pydicom.pixels import apply_color_lut, iter_pixels

from workers.errors import DecodeError
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

_GREY_PROBE_FRAMES = 8
# PS3.3 C.8.5.5.1: Region Spatial Format 1 = 2D; Region Data Type 1 = tissue, 2 = colour flow.
_REGION_2D, _REGION_TYPES = 1, (1, 2)


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
            return _to_uint8(arr, int(self._header.get("BitsStored", 8)))
        if pi == "PALETTE COLOR":
            lut = self._cache.get("lut")
            if lut is None:
                lut = self._cache["lut"] = palette_table(self._header, arr.dtype)
            return np.asarray(lut[arr])
        grey = self._grey_to_uint8(arr)
        if pi == "MONOCHROME1":
            grey = 255 - grey
        return np.repeat(grey[:, :, None], 3, axis=2)

    def _grey_to_uint8(self, arr: np.ndarray) -> np.ndarray:
        stored = int(self._header.get("BitsStored", 8))
        if stored <= 8 and arr.dtype.itemsize == 1:
            return arr.astype(np.uint8, copy=False)
        slope = float(self._header.get("RescaleSlope", 1) or 1)
        intercept = float(self._header.get("RescaleIntercept", 0) or 0)
        x = arr.astype(np.float32) * slope + intercept
        lo_hi = self._cache.get("grey_range")
        if lo_hi is None:
            lo_hi = self._cache["grey_range"] = self._grey_range(slope, intercept)
        lo, hi = lo_hi
        y = (x - lo) / max(hi - lo, 1e-6)
        return (np.clip(y, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

    def _grey_range(self, slope: float, intercept: float) -> tuple[float, float]:
        wc, ww = self._header.get("WindowCenter"), self._header.get("WindowWidth")
        if wc is not None and ww is not None:
            c = float(wc[0] if isinstance(wc, pydicom.multival.MultiValue) else wc)
            w = float(ww[0] if isinstance(ww, pydicom.multival.MultiValue) else ww)
            if w >= 1:  # PS3.3 C.11.2.1.2.1 linear window: [c - 0.5 - (w-1)/2, c - 0.5 + (w-1)/2]
                return c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
        probe = np.unique(
            np.linspace(0, self.n_frames - 1, min(self.n_frames, _GREY_PROBE_FRAMES)).astype(int)
        )
        src: Any = self._dataset if self._dataset is not None else self.path
        lo, hi = np.inf, -np.inf
        for arr in iter_pixels(src, indices=probe.tolist()):
            x = arr.astype(np.float32) * slope + intercept
            lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
        logger.debug(
            "%s: grey min-max range %s..%s from %d frames", self.sop_instance_uid, lo, hi, len(probe)
        )
        return lo, hi


def _to_uint8(arr: np.ndarray, bits_stored: int) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    top = float(2**bits_stored - 1)
    return (np.clip(arr.astype(np.float32) / top, 0, 1) * 255 + 0.5).astype(np.uint8)


def palette_table(header: Dataset, dtype: np.dtype) -> np.ndarray:
    """A (2**bits, 3) uint8 table mapping every stored index to RGB through the Palette Color LUT.

    LUTs whose descriptor says 16 bits are scaled by 255/65535, except the known encoder quirk of
    16-bit entries that only hold 8-bit values (max <= 255), which are used as they are.
    """
    n = 2 ** (8 * dtype.itemsize)
    values = np.arange(n, dtype=np.uint16 if n > 256 else np.uint8)
    table = apply_color_lut(values, _native_endian_luts(header))
    if table.dtype != np.uint8:
        if int(table.max()) > 255:
            table = table.astype(np.float32) * (255.0 / 65535.0) + 0.5
        table = table.astype(np.uint8)
    return np.ascontiguousarray(table.reshape(n, 3))


def _native_endian_luts(header: Dataset) -> Dataset:
    """Byte-swap 16-bit Palette LUT Data of a big-endian data set (pydicom 3.0's apply_color_lut reads
    it as little endian); other data sets are returned unchanged."""
    meta = getattr(header, "file_meta", None) or Dataset()
    if (
        meta.get("TransferSyntaxUID") != puid.ExplicitVRBigEndian
        or "RedPaletteColorLookupTableData" not in header
    ):
        return header
    fixed = Dataset()
    for colour in ("Red", "Green", "Blue", "Alpha"):
        desc, data = f"{colour}PaletteColorLookupTableDescriptor", f"{colour}PaletteColorLookupTableData"
        if data in header:
            raw = bytes(header[data].value)
            entries = int(header[desc][0] or 65536) if desc in header else len(raw) // 2
            if len(raw) >= 2 * entries:
                raw = np.frombuffer(raw[: 2 * entries], dtype=">u2").astype("<u2").tobytes()
            setattr(fixed, data, raw)
        if desc in header:
            setattr(fixed, desc, header[desc].value)
    return fixed


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


def ultrasound_regions(header: Dataset, rows: int, cols: int) -> tuple[Box, ...]:
    """2D tissue/colour-flow regions of SequenceOfUltrasoundRegions as Boxes (max corners inclusive)."""
    boxes = []
    for item in header.get("SequenceOfUltrasoundRegions", []):
        try:
            fmt, kind = int(item.RegionSpatialFormat), int(item.RegionDataType)
            x0, y0 = int(item.RegionLocationMinX0), int(item.RegionLocationMinY0)
            x1, y1 = int(item.RegionLocationMaxX1) + 1, int(item.RegionLocationMaxY1) + 1
        except (AttributeError, TypeError, ValueError):
            continue
        if fmt != _REGION_2D or kind not in _REGION_TYPES:
            continue
        box = Box(max(0, y0), max(0, x0), min(rows, y1), min(cols, x1))
        if box.height > 1 and box.width > 1:
            boxes.append(box)
    return tuple(boxes)


def frame_times(header: Dataset, n_frames: int, stream_fps: float | None = None) -> np.ndarray | None:
    """Per-frame duration in ms: Frame Time, Frame Time Vector (increments), Cine Rate, display or stream rate."""
    ft = header.get("FrameTime")
    if ft is not None and float(ft) > 0:
        return np.full(n_frames, float(ft), dtype=np.float64)
    ftv = header.get("FrameTimeVector")
    if ftv is not None:
        vec = np.asarray([float(v) for v in (ftv if isinstance(ftv, Sequence) else [ftv])], dtype=np.float64)
        if len(vec) == n_frames and n_frames > 1:
            # PS3.3 C.7.6.5.1.2: entry i is the time from frame i-1 to frame i (entry 0 is 0); the
            # duration of frame i is entry i+1, and the last frame keeps the previous duration.
            return np.concatenate([vec[1:], vec[-1:]])
        logger.warning("FrameTimeVector has %d values for %d frames; ignored", len(vec), n_frames)
    for kw in ("CineRate", "RecommendedDisplayFrameRate"):
        rate = header.get(kw)
        if rate is not None and float(rate) > 0:
            return np.full(n_frames, 1000.0 / float(rate), dtype=np.float64)
    if stream_fps:
        return np.full(n_frames, 1000.0 / stream_fps, dtype=np.float64)
    return None


# ------------------------------------------------------------------------ video
# PS3.5 8.2.5-8.2.8: for the MPEG-2 / MPEG-4 AVC / HEVC syntaxes the fragments, concatenated, are one
# bitstream holding all frames. FFmpeg probes the container (elementary stream, MPEG-PS or -TS); the
# syntax gives the raw format to fall back on.
