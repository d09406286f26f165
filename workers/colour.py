"""Decoded frame to (rows, cols, 3) uint8 RGB: true colour, PALETTE COLOR through its LUT, and grey.

Colour (PS3.3 C.7.6.3.1.2): YBR_FULL/YBR_FULL_422 are converted by pydicom, YBR_RCT/YBR_ICT by the
JPEG 2000 decoder; PALETTE COLOR goes through its LUT (16-bit LUT entries scaled to 8 bits); grey is
replicated to three channels, MONOCHROME1 inverted. Grey with more than 8 stored bits is windowed with
the first Window Center/Width (PS3.3 C.11.2.1.2.1, after any Rescale) or, without a window, scaled by
one min-max range taken from a sample of frames, so that brightness does not flicker between frames.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import numpy as np
import pydicom
import pydicom.uid as puid
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut

logger = logging.getLogger(__name__)

GREY_PROBE_FRAMES = 8


def grey_range(
    header: Dataset, n_frames: int, read_frames: Callable[[list[int]], Iterable[np.ndarray]]
) -> tuple[float, float]:
    """Stored-value range mapped to 0..255: the first window, else the min-max of a sample of frames
    (``read_frames(indices)`` yields them) after the modality rescale."""
    slope, intercept = _rescale(header)
    wc, ww = header.get("WindowCenter"), header.get("WindowWidth")
    if wc is not None and ww is not None:
        c = float(wc[0] if isinstance(wc, pydicom.multival.MultiValue) else wc)
        w = float(ww[0] if isinstance(ww, pydicom.multival.MultiValue) else ww)
        if w >= 1:  # PS3.3 C.11.2.1.2.1 linear window: [c - 0.5 - (w-1)/2, c - 0.5 + (w-1)/2]
            return c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
    probe = np.unique(np.linspace(0, n_frames - 1, min(n_frames, GREY_PROBE_FRAMES)).astype(int))
    lo, hi = np.inf, -np.inf
    for arr in read_frames(probe.tolist()):
        x = arr.astype(np.float32) * slope + intercept
        lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
    logger.debug("grey min-max range %s..%s from %d frames", lo, hi, len(probe))
    return lo, hi


def grey_to_uint8(arr: np.ndarray, header: Dataset, lo_hi: Callable[[], tuple[float, float]]) -> np.ndarray:
    """One grey frame to uint8 (8-bit data as is; deeper data rescaled and mapped by ``lo_hi()``)."""
    stored = int(header.get("BitsStored", 8))
    if stored <= 8 and arr.dtype.itemsize == 1:
        return arr.astype(np.uint8, copy=False)
    slope, intercept = _rescale(header)
    x = arr.astype(np.float32) * slope + intercept
    lo, hi = lo_hi()
    y = (x - lo) / max(hi - lo, 1e-6)
    return (np.clip(y, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _rescale(header: Dataset) -> tuple[float, float]:
    return float(header.get("RescaleSlope", 1) or 1), float(header.get("RescaleIntercept", 0) or 0)


def to_uint8(arr: np.ndarray, bits_stored: int) -> np.ndarray:
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
