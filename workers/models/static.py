"""Static-image baselines of the study: ResNet50, InceptionV3 and VGG19 applied frame by frame.

A clip (N, 3, T, H, W) is folded to (N*T, 3, H, W), classified frame by frame and the logits are
averaged over the frames (the study's "every frame, mean" ablation). One frame (N, 3, H, W) is
classified as it is (the key-frame use). torchvision networks, ``weights=None`` always.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from workers.models.common import ClipClassifier, fold_time


def _resnet50(num_classes: int) -> nn.Module:
    return torchvision.models.resnet50(weights=None, num_classes=num_classes)


def _inception_v3(num_classes: int) -> nn.Module:
    # aux_logits off: the auxiliary head only helps ImageNet-scale training and would change the output
    # type; init_weights=True gives torchvision's truncated-normal init without the deprecation warning.
    return torchvision.models.inception_v3(
        weights=None, num_classes=num_classes, aux_logits=False, init_weights=True, transform_input=False
    )


def _vgg19(num_classes: int) -> nn.Module:
    return torchvision.models.vgg19(weights=None, num_classes=num_classes)


# arch -> (constructor, Grad-CAM layer: the last convolution's activation, native input size or 0)
_NETS: dict[str, tuple[Callable[[int], nn.Module], str, int]] = {
    "resnet50": (_resnet50, "net.layer4", 0),
    "inceptionv3": (_inception_v3, "net.Mixed_7c", 299),
    "vgg19": (_vgg19, "net.features.35", 0),
}


class FrameClassifier(ClipClassifier):
    """A 2D classifier over frames; InceptionV3 input is resized to 299x299 inside (bilinear)."""

    time_folded = True
    single_frame = True

    def __init__(self, arch: str, num_classes: int = 2, frames: int = 16, size: int = 224) -> None:
        super().__init__(frames, size)
        if arch not in _NETS:
            raise ValueError(f"static: unknown arch {arch!r}; expected one of {sorted(_NETS)}")
        make, self.cam_layer, self.native = _NETS[arch]
        self.arch = arch
        self.net = make(num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if x.dim() == 4:
            return self.net(self._resize(x))
        frames, n, t = fold_time(x)
        return self.net(self._resize(frames)).view(n, t, -1).mean(dim=1)

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        if self.native and tuple(x.shape[-2:]) != (self.native, self.native):
            return F.interpolate(x, size=(self.native, self.native), mode="bilinear", align_corners=False)
        return x
