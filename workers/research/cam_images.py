"""Grad-CAM overlay PNGs of ``alnnode evaluate --bundle``: per loop, the key frame and a strip of sampled
frames with the heatmap blended in (the colours and opacity of the node's secondary captures)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

STRIP_FRAMES = 8  # frames in the strip below the key frame
STRIP_HEIGHT = 120  # pixels


def _safe(case_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", case_id)[:100] or "case"


def cam_figure(frames: np.ndarray, cams: np.ndarray, frame_ids: list[int], key_frame: int) -> np.ndarray:
    """(H', W, 3) uint8: the key frame overlay on top, below it up to :data:`STRIP_FRAMES` overlays in order."""
    from PIL import Image

    from workers.results.overlay import blend_cam

    blended = [blend_cam(f, c) for f, c in zip(frames, cams, strict=True)]
    key = blended[frame_ids.index(key_frame)]
    width = key.shape[1]
    tile_w = max(1, width // max(1, len(blended)))
    tiles = []
    for img in blended:
        h = max(1, round(img.shape[0] * tile_w / img.shape[1]))
        tiles.append(np.asarray(Image.fromarray(img).resize((tile_w, h), Image.Resampling.BILINEAR)))
    strip = np.zeros((max(t.shape[0] for t in tiles), width, 3), np.uint8)
    for i, t in enumerate(tiles):
        strip[: t.shape[0], i * tile_w : (i + 1) * tile_w] = t
    return np.concatenate([key, np.zeros((4, width, 3), np.uint8), strip])


def write_cam_png(out_dir: Path, case_id: str, path: Path, prediction: Any) -> Path | None:
    """Write ``out_dir/CASE.png`` for one prediction (``cam``, ``cam_frames``, ``key_frame``); None without a CAM."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from workers.decode import load_clip

    cam_frames = [int(f) for f in prediction.cam_frames]
    if not cam_frames or int(prediction.key_frame) not in cam_frames:
        return None
    pick = sorted({cam_frames[int(i)] for i in np.linspace(0, len(cam_frames) - 1, min(STRIP_FRAMES, len(cam_frames)))}
                  | {int(prediction.key_frame)})  # fmt: skip
    frames = load_clip(path).frames(pick)
    cams = np.asarray(prediction.cam)[[cam_frames.index(f) for f in pick]]
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{_safe(case_id)}.png"
    info = PngInfo()
    info.add_text("Comment", "Grad-CAM of an aln-node model; research use only, not for diagnostic use")
    Image.fromarray(cam_figure(frames, cams, pick, int(prediction.key_frame))).save(target, pnginfo=info)
    return target
