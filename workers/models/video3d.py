"""The study's 3D-convolution baselines: R(2+1)D-18 and ResNet-3D-18 (ALN study refs. 27 and 29).

Why torchvision's ``r2plus1d_18`` / ``r3d_18`` and not MONAI's ``monai.networks.nets.resnet``:
they are the published video-classification networks of Tran et al. ("A Closer Look at
Spatiotemporal Convolutions for Action Recognition", CVPR 2018) with the published costs
(R(2+1)D-18 31.5 M parameters and about 162 GMAC, R3D-18 33.4 M and about 163 GMAC for a 16x224x224
clip), which is what the study compared TIN against. MONAI's 3D ResNet is a medical-volume network:
its stem differs (an integer ``conv1_t_size``/``conv1_t_stride`` applies to all three axes, 7x7x7
with stride 1 costs about 131 GMAC), R(2+1)D does not exist there, and parity with the published
numbers would have to be re-derived. ``weights=None`` always: nothing is downloaded.
"""

from __future__ import annotations

import torch
import torchvision

from workers.models.common import ClipClassifier

_NETS = {"r2plus1d": torchvision.models.video.r2plus1d_18, "r3d": torchvision.models.video.r3d_18}


class Video3D(ClipClassifier):
    """A torchvision 18-layer video ResNet with a ``num_classes`` head, input (N, 3, T, H, W) in [0, 1].

    Grad-CAM reads ``net.layer4``, whose output is (N, 512, T/8, H/16, W/16): the time axis is
    coarse (2 steps for 16 frames), so the key frame of these nets is coarse too.
    """

    time_folded = False
    cam_layer = "net.layer4"

    def __init__(self, arch: str, num_classes: int = 2, frames: int = 16, size: int = 224) -> None:
        super().__init__(frames, size)
        if arch not in _NETS:
            raise ValueError(f"video3d: unknown arch {arch!r}; expected one of {sorted(_NETS)}")
        self.arch = arch
        self.net = _NETS[arch](weights=None, num_classes=num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.net(x)
