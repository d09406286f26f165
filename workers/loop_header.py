"""What an ultrasound header says about a loop besides its pixels: the image regions and frame timing."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset

from workers.prediction import Box

logger = logging.getLogger(__name__)

# PS3.3 C.8.5.5.1: Region Spatial Format 1 = 2D; Region Data Type 1 = tissue, 2 = colour flow.
_REGION_2D, _REGION_TYPES = 1, (1, 2)


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
