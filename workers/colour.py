"""Decoded frame to (rows, cols, 3) uint8 RGB: true colour, PALETTE COLOR through its LUT, and grey.

Colour (PS3.3 C.7.6.3.1.2): YBR_FULL/YBR_FULL_422 are converted by pydicom, YBR_RCT/YBR_ICT by the
JPEG 2000 decoder; PALETTE COLOR goes through its LUT (16-bit LUT entries scaled to 8 bits); grey is
replicated to three channels, MONOCHROME1 inverted. Grey with more than 8 stored bits goes through pydicom's
Modality LUT and its first VOI (window or VOI LUT; PS3.3 C.11.2.1.2.1) or, without one, is scaled by one
min-max range taken from a sample of frames, so that brightness does not flicker between frames.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import numpy as np
import pydicom
import pydicom.uid as puid
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

logger = logging.getLogger(__name__)

GREY_PROBE_FRAMES = 8


def has_voi(header: Dataset) -> bool:
    """True when the header gives a VOI transformation: a VOI LUT Sequence or a linear window of width >= 1."""
    if "VOILUTSequence" in header:
        return True
    ww = header.get("WindowWidth")
    if header.get("WindowCenter") is None or ww is None:
        return False
    return float(ww[0] if isinstance(ww, pydicom.multival.MultiValue) else ww) >= 1


def _voi_output_range(header: Dataset) -> tuple[float, float]:
    """The range ``pydicom.pixels.apply_voi_lut`` maps a window onto: the stored range after the rescale."""
    bits = int(header.get("BitsStored", 8))
    signed = int(header.get("PixelRepresentation", 0)) == 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    slope, intercept = _rescale(header)
    a, b = sorted((lo * slope + intercept, hi * slope + intercept))
    return a, b


def grey_range(
    header: Dataset, n_frames: int, read_frames: Callable[[list[int]], Iterable[np.ndarray]]
) -> tuple[float, float]:
    """Without a window: the min-max, after the modality rescale, of a sample of frames (``read_frames(indices)``
    yields them), one range for the whole loop so that brightness does not flicker between frames."""
    probe = np.unique(np.linspace(0, n_frames - 1, min(n_frames, GREY_PROBE_FRAMES)).astype(int))
    lo, hi = np.inf, -np.inf
    for arr in read_frames(probe.tolist()):
        x = np.asarray(apply_modality_lut(arr, header), dtype=np.float32)
        lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
    logger.debug("grey min-max range %s..%s from %d frames", lo, hi, len(probe))
    return lo, hi


def grey_to_uint8(arr: np.ndarray, header: Dataset, lo_hi: Callable[[], tuple[float, float]]) -> np.ndarray:
    """One grey frame to uint8: 8-bit data as is; deeper data through pydicom's Modality LUT and first VOI
    (PS3.3 C.11.1, C.11.2: ``apply_modality_lut``, ``apply_voi_lut``) or, without a VOI, the min-max ``lo_hi()``."""
    stored = int(header.get("BitsStored", 8))
    if stored <= 8 and arr.dtype.itemsize == 1:
        return arr.astype(np.uint8, copy=False)
    x = np.asarray(apply_modality_lut(arr, header), dtype=np.float64)
    if has_voi(header):
        if "VOILUTSequence" in header:  # PS3.3 C.11.2.1.1: LUT Descriptor's third value is the entries' bits
            lo, hi = 0.0, float(2 ** int(header.VOILUTSequence[0].LUTDescriptor[2]) - 1)
        else:
            lo, hi = _voi_output_range(header)
        y = (np.asarray(apply_voi_lut(x, header, index=0), dtype=np.float64) - lo) / max(hi - lo, 1e-6)
    else:
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
