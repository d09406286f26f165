"""Grad-CAM over a whole clip with MONAI, and the key frame it points at.

The study explains its video models with Grad-CAM on the last convolutional stage and shows the
"key frame" of the loop. MONAI's ``GradCAM.compute_map`` gives the raw map at that stage:

- time-folded 2D models (TIN, static nets): (T, 1, h, w) for one clip -> reshaped to (1, 1, T, h, w);
- 3D nets: (1, 1, T', h, w) with T' = T / 8 -> time is upsampled (coarse key frame).

The map is then upsampled to the input (T, H, W) and min-max normalised over the *whole clip*, so frames
stay comparable (MONAI's default normaliser works per image and maps (min, max) to (1, 0), i.e. inverts:
it is not used). The key frame is the frame whose map has the highest *peak* (max over pixels): a lesion
seen sharply in a few frames should win over diffuse attention spread over many.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from monai.visualize import GradCAM

from workers.models import ClipClassifier

logger = logging.getLogger(__name__)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def make_explainer(model: ClipClassifier) -> GradCAM:
    """A MONAI Grad-CAM on ``model.cam_layer``. It registers hooks for good: make one per model and reuse it."""
    return GradCAM(nn_module=model, target_layers=model.cam_layer, postprocessing=_identity)


@contextmanager
def _frozen(model: torch.nn.Module) -> Iterator[None]:
    """Stop parameter gradients during Grad-CAM (the map needs activation gradients only): saves memory."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def normalise_clip(maps: torch.Tensor) -> torch.Tensor:
    """Min-max over the whole tensor to [0, 1]; a constant map becomes all zeros."""
    lo, hi = maps.min(), maps.max()
    if float(hi - lo) <= 1e-12:
        return torch.zeros_like(maps)
    return (maps - lo) / (hi - lo)


def clip_cam(
    model: ClipClassifier,
    explainer: GradCAM,
    clip: torch.Tensor,
    class_idx: int,
    autocast: torch.autocast | None = None,
) -> np.ndarray:
    """Grad-CAM of one clip for ``class_idx``: (T, H, W) float32 in [0, 1] in the input geometry.

    Parameters
    ----------
    model, explainer
        The classifier and its :func:`make_explainer`.
    clip
        (1, 3, T, H, W) float in [0, 1] on the model's device (batch 1: MONAI's class score is B x B
        otherwise).
    class_idx
        The class whose evidence is shown (aln-node passes the predicted class).
    autocast
        An autocast context (CUDA) or None.
    """
    if clip.dim() != 5 or clip.shape[0] != 1:
        raise ValueError(f"clip_cam wants one clip (1, 3, T, H, W), got {tuple(clip.shape)}")
    _, _, t, h, w = clip.shape
    # Grad-CAM needs d(score)/d(activations of the CAM layer) only. Making that layer's *input* the
    # graph leaf (parameters frozen, clip without grad) keeps everything before it out of the graph:
    # backward runs through the last stage and the head instead of the whole network (about 3x
    # cheaper on a CPU), with the same map.
    layer = dict(model.named_modules())[model.cam_layer]
    leaf = layer.register_forward_pre_hook(lambda _m, args: (args[0].detach().requires_grad_(True), *args[1:]))
    try:
        with _frozen(model), torch.enable_grad(), autocast if autocast is not None else contextlib.nullcontext():
            raw = explainer.compute_map(clip.detach(), class_idx=class_idx)
    finally:
        leaf.remove()
    raw = raw.detach().float()
    if model.time_folded:  # (N*T, 1, h', w') -> (N, 1, T, h', w')
        raw = raw.view(1, t, 1, *raw.shape[-2:]).transpose(1, 2)
    maps = F.interpolate(raw, size=(t, h, w), mode="trilinear", align_corners=False)[0, 0]
    return normalise_clip(maps).cpu().numpy().astype(np.float32)


def key_frame_position(cam: np.ndarray) -> int:
    """Position in the clip (0..T-1) of the frame whose Grad-CAM peak is highest (first on ties)."""
    if cam.ndim != 3 or cam.shape[0] == 0:
        raise ValueError(f"cam must be (T, H, W) with T >= 1, got {cam.shape}")
    peaks = cam.reshape(cam.shape[0], -1).max(axis=1)
    if float(peaks.max()) <= 0.0:  # no evidence anywhere: fall back to the middle of the clip
        return cam.shape[0] // 2
    return int(np.argmax(peaks))
