"""Crop, sample and transform cine loops the way the study did (MONAI transforms).

Pipeline of one clip: crop the ultrasound image region (drops device UI and burned-in text) -> resize
to ``base`` x ``base`` (256) -> training augmentation (random horizontal flip, 2D elastic deformation,
random ``crop`` x ``crop`` crop) or, for evaluation, the centre crop -> resize to ``size`` (224) -> values
0..1, T = 16 frames. The crop is ``round(base * 7 / 8)`` (224 of 256, the usual resize-then-crop ratio),
so training and evaluation see the same scale. Augmentations are drawn once per clip and shared by all
frames: the (C, T, H, W) clip is folded to (C*T, H, W) and 2D transforms are applied (FIELD-NOTES, MONAI).

Temporal sampling: a clip is T frames at a uniform stride of n_frames / T over the *whole* loop, so each
clip sees the whole sweep. Evaluation uses ``n_clips`` such clips with evenly spread phases (together
every frame lies within about n_frames / (2 * n_clips * T) frames of a sampled one); training draws
one clip with a random phase, i.e. the same temporal scale as evaluation.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import (
    CenterSpatialCrop,
    Compose,
    EnsureType,
    Lambda,
    Rand2DElastic,
    RandFlip,
    RandSpatialCrop,
)
from scipy import ndimage

from workers.decode import Clip
from workers.prediction import Box

logger = logging.getLogger(__name__)

CLIP_FRAMES = 16
FRAMES_PER_SAMPLE = 4  # evaluation: one sampled frame per ~4 source frames ...
MAX_EVAL_CLIPS = 8  # ... but at most 8 clips per loop (bounded inference cost)
# Temporal std (grey levels) above which a pixel is "moving": at least 0.5 (dim far-field speckle of a
# sector scan varies by ~1), or 4x the noise floor (25th percentile) that lossy video gives static UI.
_STD_MIN, _NOISE_FACTOR = 0.5, 4.0
_MIN_AREA_FRACTION = 0.05  # a detected region smaller than 5 % of the frame is not trusted


# ------------------------------------------------------------------------- crop
def find_image_region(clip: Clip, max_probe_frames: int = 32) -> Box:
    """The box of the ultrasound image in a loop's frames.

    With SequenceOfUltrasoundRegions: the largest 2D tissue region, joined with the regions that
    overlap it (a colour-flow box inside the B-mode image). Otherwise the bounding box of the largest
    connected region whose pixels change over time (per-pixel temporal std over up to
    ``max_probe_frames`` evenly spread frames, cleaned by morphology): device UI and burned-in text are
    static. A single-frame or static loop falls back to the largest textured, non-black region. If
    nothing is found the whole frame is returned.
    """
    if clip.regions:
        return _join_regions(clip.regions)
    full = Box(0, 0, clip.rows, clip.cols)
    n = min(clip.n_frames, max(1, max_probe_frames))
    idx = np.unique(np.linspace(0, clip.n_frames - 1, n).round().astype(int))
    frames = clip.frames(idx.tolist())
    box: Box | None = None
    if len(idx) >= 2:
        box = _dynamic_region(frames)
    if box is None:
        box = _textured_region(frames[0])
    if box is None:
        logger.warning("%s: no image region found; using the whole frame", clip.sop_instance_uid)
        return full
    logger.debug("%s: image region %s", clip.sop_instance_uid, box)
    return box


def _join_regions(regions: Sequence[Box]) -> Box:
    main = max(regions, key=lambda b: b.height * b.width)  # max() keeps the first of equal areas
    y0, x0, y1, x1 = main.y0, main.x0, main.y1, main.x1
    for b in regions:
        if b.y0 < main.y1 and main.y0 < b.y1 and b.x0 < main.x1 and main.x0 < b.x1:
            y0, x0, y1, x1 = min(y0, b.y0), min(x0, b.x0), max(y1, b.y1), max(x1, b.x1)
    return Box(y0, x0, y1, x1)


def _grey(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float32).mean(axis=-1)


def _dynamic_region(frames: np.ndarray) -> Box | None:
    """Largest blob of temporally varying pixels (two-pass mean/std, one float frame at a time)."""
    mean = np.zeros(frames.shape[1:3], np.float64)
    sq = np.zeros_like(mean)
    for f in frames:
        g = _grey(f)
        mean += g
        sq += g.astype(np.float64) ** 2
    mean /= len(frames)
    std = np.sqrt(np.maximum(sq / len(frames) - mean**2, 0.0))
    threshold = max(_STD_MIN, _NOISE_FACTOR * float(np.percentile(std, 25)))
    return _largest_blob(std > threshold)


def _textured_region(frame: np.ndarray) -> Box | None:
    """Largest non-black, textured blob of one frame (speckle is textured; flat UI bars are not)."""
    g = _grey(frame)
    local_mean = ndimage.uniform_filter(g, 7)
    local_std = np.sqrt(np.maximum(ndimage.uniform_filter(g * g, 7) - local_mean**2, 0.0))
    return _largest_blob((local_std > 3.0) & (local_mean > 8.0))


def _largest_blob(mask: np.ndarray) -> Box | None:
    h, w = mask.shape
    k = max(3, round(min(h, w) / 60)) | 1  # ~8 px at 480 rows: joins speckle, keeps text blocks apart
    mask = ndimage.binary_opening(mask, structure=np.ones((3, 3), bool))
    mask = ndimage.binary_closing(mask, structure=np.ones((k, k), bool), border_value=0)
    mask = ndimage.binary_opening(mask, structure=np.ones((k, k), bool))  # drops text strokes
    labels, n = ndimage.label(mask)
    if n == 0:
        return None
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    best = int(np.argmax(sizes)) + 1
    if sizes[best - 1] < _MIN_AREA_FRACTION * h * w:
        return None
    sl = ndimage.find_objects((labels == best).astype(np.int32))[0]
    return Box(int(sl[0].start), int(sl[1].start), int(sl[0].stop), int(sl[1].stop))


# ----------------------------------------------------------------- sampling
def sample_clip_indices(
    n_frames: int,
    frames: int = CLIP_FRAMES,
    n_clips: int | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Frame indices of clips, shape (n_clips, frames), each a uniform-stride pass over the whole loop.

    Clip c takes ``floor((i + phase_c) * n_frames / frames)`` for i = 0..frames-1. Evaluation
    (``rng`` None): ``phase_c = (c + 0.5) / n_clips`` and by default
    ``n_clips = clamp(ceil(n_frames / (4 * frames)), 1, 8)``. Training (``rng`` given): random phases,
    one clip by default. Loops shorter than ``frames`` repeat frames (nearest-frame padding).
    """
    if n_frames < 1 or frames < 1:
        raise ValueError(f"need n_frames >= 1 and frames >= 1, got {n_frames} and {frames}")
    if n_clips is None:
        n_clips = (
            1
            if rng is not None
            else min(MAX_EVAL_CLIPS, max(1, math.ceil(n_frames / (FRAMES_PER_SAMPLE * frames))))
        )
    if n_clips < 1:
        raise ValueError(f"n_clips must be >= 1, got {n_clips}")
    phases = rng.random(n_clips) if rng is not None else (np.arange(n_clips) + 0.5) / n_clips
    pos = (np.arange(frames)[None, :] + phases[:, None]) * (n_frames / frames)
    return np.clip(np.floor(pos).astype(np.int64), 0, n_frames - 1)


# -------------------------------------------------------------- transforms
def crop_size(base: int = 256) -> int:
    """Side of the (random or centre) crop taken from the ``base``-resized clip."""
    return round(base * 7 / 8)


def _fold(x: Any) -> Any:
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def _unfold(x: Any) -> Any:
    return x.reshape(3, x.shape[0] // 3, *x.shape[1:])


def _resize(x: Any, side: int) -> torch.Tensor:
    # Bilinear with antialiasing: averages when shrinking a 480x640 image, interpolates when growing.
    t = torch.as_tensor(x, dtype=torch.float32)
    if tuple(t.shape[-2:]) == (side, side):
        return t
    return F.interpolate(t[None], size=(side, side), mode="bilinear", align_corners=False, antialias=True)[0]


def _clamp01(x: Any) -> Any:
    return x.clamp(0.0, 1.0) if isinstance(x, torch.Tensor) else np.clip(x, 0.0, 1.0)


def make_transform(train: bool, size: int = 224, base: int = 256, seed: int | None = None) -> Compose:
    """MONAI transform of a cropped clip (3, T, H, W) float in 0..1 to (3, T, size, size) float32 in 0..1.

    ``train`` adds the study's augmentations (p = 0.5 horizontal flip; p = 0.5 elastic deformation with
    control points every 32 px and offsets of 1-2, i.e. about 2 px mean / 6 px max displacement at 256;
    random crop) drawn once per call and shared by all frames. ``seed`` makes the draws reproducible.
    """
    crop = crop_size(base)
    steps: list[Any] = [
        Lambda(_fold),
        Lambda(lambda x: _resize(x, base)),
    ]
    if train:
        steps += [
            RandFlip(prob=0.5, spatial_axis=1),  # axis 1 of (H, W): left-right
            Rand2DElastic(spacing=(32, 32), magnitude_range=(1.0, 2.0), prob=0.5, padding_mode="reflection"),
            RandSpatialCrop(roi_size=(crop, crop), random_size=False),
        ]
    else:
        steps.append(CenterSpatialCrop(roi_size=(crop, crop)))
    if crop != size:
        steps.append(Lambda(lambda x: _resize(x, size)))
    steps += [
        Lambda(_clamp01),
        Lambda(_unfold),
        EnsureType(data_type="tensor", dtype=torch.float32, track_meta=False),
    ]
    transform = Compose(steps)
    if seed is not None:
        transform.set_random_state(seed=seed)
    return transform


def prepare_clip(
    clip: Clip,
    indices: Sequence[int],
    box: Box,
    train: bool = False,
    size: int = 224,
    base: int = 256,
    transform: Compose | None = None,
) -> torch.Tensor:
    """Decode ``indices``, crop ``box`` and transform: (3, T, size, size) float32 in 0..1.

    Pass a ``transform`` made once with ``make_transform(train, size, base, seed)`` for reproducible
    training; without one a fresh (unseeded when training) transform is made.
    """
    frames = clip.frames(indices)[:, box.y0 : box.y1, box.x0 : box.x1]  # uint8 until here
    if frames.shape[1] == 0 or frames.shape[2] == 0:
        raise ValueError(f"{clip.sop_instance_uid}: crop {box} is empty for {clip.rows}x{clip.cols} frames")
    x = torch.from_numpy(np.ascontiguousarray(frames.transpose(3, 0, 1, 2))).to(torch.float32).div_(255.0)
    tf = transform if transform is not None else make_transform(train, size, base)
    out = tf(x)
    return torch.as_tensor(out, dtype=torch.float32).contiguous()


def map_to_original(
    maps: np.ndarray, box: Box, rows: int, cols: int, size: int = 224, base: int = 256
) -> np.ndarray:
    """Put per-frame maps from model space back into the source geometry (inverse of the eval path).

    ``maps`` (T, h, w) is resized to ``size``, then to the centre crop, padded with zeros to ``base``
    (the border the model never saw), resized to the box and placed in a (T, rows, cols) float32 zero
    canvas.
    """
    m = torch.as_tensor(np.asarray(maps, dtype=np.float32))
    if m.ndim != 3:
        raise ValueError(f"maps must be (T, h, w), got shape {tuple(m.shape)}")
    crop = crop_size(base)
    m = m[:, None]
    if tuple(m.shape[-2:]) != (crop, crop):
        if tuple(m.shape[-2:]) != (size, size):
            m = F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False)
        m = F.interpolate(m, size=(crop, crop), mode="bilinear", align_corners=False)
    pad = base - crop
    m = F.pad(m, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
    # Slice the box to the frame so that a box that pokes out of the frame cannot misplace the map.
    m = F.interpolate(m, size=(box.height, box.width), mode="bilinear", align_corners=False)[:, 0]
    out = np.zeros((m.shape[0], rows, cols), np.float32)
    y0, x0 = max(box.y0, 0), max(box.x0, 0)
    y1, x1 = min(box.y1, rows), min(box.x1, cols)
    out[:, y0:y1, x0:x1] = m[:, y0 - box.y0 : y1 - box.y0, x0 - box.x0 : x1 - box.x0].numpy()
    return out
