"""The classifiers of the ALN study behind one factory: ``build(arch, **options)``.

Every model takes a clip (N, 3, T, H, W) float in [0, 1] and returns (N, 2) logits
(class 0 = no ALN metastasis, class 1 = ALN metastasis). Weights are random unless a local state
dict is given with ``weights=PATH``; nothing is ever downloaded.

=============  ==========================================  ==================================
arch           network                                     options (defaults)
=============  ==========================================  ==================================
tin            TIN-ResNet (Shao et al. 2020)               depth=50, frames=16, shift_div=4,
                                                           dropout=0.5, size=224
r2plus1d       torchvision R(2+1)D-18                      frames=16, size=224
r3d            torchvision R3D-18                          frames=16, size=224
resnet50       torchvision ResNet-50 per frame             frames=16, size=224
inceptionv3    torchvision Inception-v3 per frame (299)    frames=16, size=224
vgg19          torchvision VGG-19 per frame                frames=16, size=224
=============  ==========================================  ==================================
All take ``num_classes=2`` and ``cam_layer``: the module Grad-CAM reads (default the last stage,
``layer4`` / ``net.layer4``; ``net.features.35`` for VGG). ``layer3`` gives a map twice as fine (7x7 instead
of 4x4 at 112 px), at the cost of a backward pass through one more stage.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch

from workers.models.common import ClipClassifier
from workers.models.static import FrameClassifier
from workers.models.tin import TIN
from workers.models.video3d import Video3D

logger = logging.getLogger(__name__)

VIDEO_ARCHS: tuple[str, ...] = ("tin", "r2plus1d", "r3d")
STATIC_ARCHS: tuple[str, ...] = ("resnet50", "inceptionv3", "vgg19")
ARCHS: tuple[str, ...] = VIDEO_ARCHS + STATIC_ARCHS

__all__ = ["ARCHS", "STATIC_ARCHS", "VIDEO_ARCHS", "ClipClassifier", "build", "load_weights"]


def build(arch: str, **options: Any) -> ClipClassifier:
    """Build a classifier by name.

    Parameters
    ----------
    arch
        One of :data:`ARCHS`.
    **options
        Constructor options (see the module table); ``weights=PATH`` loads a local state dict.

    Raises
    ------
    ValueError
        Unknown arch or option, naming it.
    """
    options = dict(options)
    weights = options.pop("weights", None)
    cam_layer = options.pop("cam_layer", None)
    try:
        model: ClipClassifier
        if arch == "tin":
            model = TIN(**options)
        elif arch in ("r2plus1d", "r3d"):
            model = Video3D(arch, **options)
        elif arch in STATIC_ARCHS:
            model = FrameClassifier(arch, **options)
        else:
            raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    except TypeError as exc:  # an option the constructor does not take
        raise ValueError(f"bad option for arch {arch!r}: {exc}") from exc
    if cam_layer is not None:
        stages = [n for n, _ in model.named_modules() if re.fullmatch(r"(net\.)?layer\d|net\.features\.\d+|net\.Mixed_\w+", n)]
        if cam_layer not in stages:
            raise ValueError(f"cam_layer {cam_layer!r} is not a stage of {arch}; expected one of {', '.join(stages)}")
        model.cam_layer = str(cam_layer)
    if weights is not None:
        load_weights(model, weights)
    return model


def _candidates(key: str) -> list[str]:
    """Names a foreign state-dict key may have in our wrappers (``net.`` prefix, TIN's wrapped conv1)."""
    tin_key = re.sub(r"^(layer\d\.\d+\.conv1)\.weight$", r"\1.conv.weight", key)
    return [key, "net." + key, tin_key]


def load_weights(model: ClipClassifier, path: str | Path) -> None:
    """Load a local state dict into ``model``; tolerant of torchvision key names and a foreign head.

    Tensors whose shape differs (e.g. a 1000-class ImageNet head) are skipped with a warning.

    Raises
    ------
    ValueError
        The file holds no tensor that fits the model (naming the file).
    """
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    own = model.state_dict()
    matched: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for key, value in state.items():
        target = next((k for k in _candidates(str(key)) if k in own), None)
        if target is None or own[target].shape != value.shape:
            skipped.append(str(key))
            continue
        matched[target] = value
    if not matched:
        raise ValueError(f"weights file {path} has no tensor that fits a {model.arch} model")
    model.load_state_dict(matched, strict=False)
    if skipped:
        logger.warning(
            "weights %s: %d tensors skipped (name or shape differs), e.g. %s", path, len(skipped), skipped[:3]
        )
    logger.info("weights %s: loaded %d of %d tensors into %s", path, len(matched), len(own), model.arch)
