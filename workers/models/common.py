"""What every aln-node classifier shares: clip geometry, the Grad-CAM layer and the input contract."""

from __future__ import annotations

import torch
from torch import nn


class ClipClassifier(nn.Module):
    """Base of the six classifiers: input (N, 3, T, H, W) float in [0, 1], output (N, num_classes) logits.

    The clip geometry the model was built for (``frames``, ``size``) is also kept as two integer
    buffers, so it travels inside the state dict and is covered by the bundle's weight hash
    (a bundle whose metadata was edited to another clip length is refused on load).

    Attributes
    ----------
    arch
        Factory name (``tin``, ``r2plus1d``, ``r3d``, ``resnet50``, ``inceptionv3``, ``vgg19``).
    cam_layer
        Name in ``named_modules()`` of the last convolutional stage used for Grad-CAM.
    time_folded
        True when ``cam_layer`` sees frames folded into the batch, (N*T, C, h, w); False for 3D nets,
        whose ``cam_layer`` output is (N, C, T', h, w).
    single_frame
        True when the model also accepts one frame (N, 3, H, W) (the static baselines).
    """

    arch: str = ""
    cam_layer: str = "layer4"
    time_folded: bool = True
    single_frame: bool = False

    def __init__(self, frames: int, size: int) -> None:
        super().__init__()
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        if size < 32:
            raise ValueError(f"size must be >= 32 pixels, got {size}")
        self.frames = int(frames)
        self.size = int(size)
        self.register_buffer("clip_frames", torch.tensor(self.frames, dtype=torch.int64))
        self.register_buffer("clip_size", torch.tensor(self.size, dtype=torch.int64))

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` naming the shape when ``x`` is not a clip (or frame) batch."""
        ok_dims = (4, 5) if self.single_frame else (5,)
        if x.dim() not in ok_dims or x.shape[1] != 3:
            want = "(N, 3, T, H, W) or (N, 3, H, W)" if self.single_frame else "(N, 3, T, H, W)"
            raise ValueError(f"{self.arch}: expected input {want}, got {tuple(x.shape)}")


def fold_time(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(N, C, T, H, W) -> (N*T, C, H, W) with frames of one clip adjacent; returns (folded, N, T)."""
    n, c, t, h, w = x.shape
    return x.transpose(1, 2).reshape(n * t, c, h, w), n, t
