"""Temporal Interlace Network (TIN) in plain PyTorch.

Reference: H. Shao, S. Qian, Y. Liu, "Temporal Interlacing Network", AAAI 2020 (arXiv:2001.06499),
the video network of the ALN study (its ref. 30).

Idea: a 2D ResNet sees the T frames of a clip folded into the batch. Before the first convolution of
the residual branch of every block, a *Temporal Interlace* module takes the first ``C / shift_div``
channels, splits them into four groups and moves each group along time by a learned, fractional
offset: two offsets per clip come from an *OffsetNet* and are used together with their negatives
(past -> future and future -> past). A *WeightNet* scales every shifted frame by a learned weight in
(0, 2). So information is exchanged between neighbouring frames at the cost of a 2D network, without
3D convolution. Class scores of the frames are averaged after the classifier (TSN consensus).

The fractional shift is a linear interpolation between the two neighbouring integer shifts with zero
padding at the clip ends. It is written as a (T x T) interpolation matrix with hat-function entries
``max(0, 1 - |t - s - tau|)`` applied by ``einsum``: for an integer ``s`` it is exactly a zero-padded
roll, for a fractional one it mixes the floor and ceil shifts, and the offsets get gradients, with no
custom CUDA operator (the authors' version uses one).
"""

from __future__ import annotations

import logging

import torch
import torchvision
from torch import nn

from workers.models.common import ClipClassifier, fold_time

logger = logging.getLogger(__name__)

#: OffsetNet's last bias, as in the reference implementation: 4*sigmoid(0.5108)-2 = 0.5 frames at start.
_OFFSET_BIAS = 0.5108


def interlace_shift(data: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Shift channel groups along time by fractional offsets, zero padded.

    Parameters
    ----------
    data
        (B, T, C, ...) features; channels are split into ``G = offsets.shape[1]`` equal groups.
    offsets
        (B, G) shifts in frames. A positive shift moves features to later frames:
        ``out[:, t] = data[:, t - s]`` (zero where ``t - s`` is outside the clip), linearly
        interpolated between ``floor(s)`` and ``floor(s) + 1``.

    Returns
    -------
    torch.Tensor
        Same shape and dtype as ``data``; differentiable w.r.t. ``data`` and ``offsets``.
    """
    b, t, c = data.shape[:3]
    g = offsets.shape[1]
    if offsets.shape[0] != b or c % g:
        raise ValueError(f"offsets {tuple(offsets.shape)} do not fit data {tuple(data.shape)} ({c} channels)")
    # the interpolation matrix is built in at least float32 (half precision cannot resolve 15.7 - 15)
    offsets = offsets.to(torch.promote_types(offsets.dtype, torch.float32))
    steps = torch.arange(t, device=data.device, dtype=offsets.dtype)
    source = steps.view(1, 1, t) - offsets.unsqueeze(-1)  # (B, G, T_out): where each output samples
    kernel = (1.0 - (source.unsqueeze(-1) - steps).abs()).clamp(min=0.0)  # (B, G, T_out, T_in)
    grouped = data.reshape(b, t, g, -1)
    out = torch.einsum("bgij,bjgk->bigk", kernel.to(grouped.dtype), grouped)
    return out.reshape(data.shape)


class OffsetNet(nn.Module):
    """Pooled (B, C', T) descriptor -> Conv1d over time -> MLP -> (B, groups) offsets in (-2, 2)."""

    def __init__(self, channels: int, frames: int, groups: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, 1, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(frames, frames)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(frames, groups)
        nn.init.constant_(self.fc2.bias, _OFFSET_BIAS)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        n, _, t = pooled.shape
        x = self.conv(pooled).view(n, t)
        x = self.fc2(self.relu(self.fc1(x)))
        return 4.0 * torch.sigmoid(x) - 2.0


class WeightNet(nn.Module):
    """Pooled (B, C', T) descriptor -> (B, T, groups) per-frame weights in (0, 2), 1 at start."""

    def __init__(self, channels: int, groups: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, groups, kernel_size=3, padding=1)
        assert self.conv.bias is not None
        nn.init.zeros_(self.conv.bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return 2.0 * torch.sigmoid(self.conv(pooled)).permute(0, 2, 1)


class TemporalInterlace(nn.Module):
    """The interlace module on time-folded features (N*T, C, H, W) -> same shape."""

    def __init__(self, channels: int, frames: int, shift_div: int = 4, groups: int = 2) -> None:
        super().__init__()
        fold = channels // shift_div
        if channels % shift_div or fold % (2 * groups):
            raise ValueError(
                f"{channels} channels cannot be split by shift_div={shift_div} into {2 * groups} groups"
            )
        self.frames, self.fold, self.groups = frames, fold, groups
        self.offset_net = OffsetNet(fold, frames, groups)
        self.weight_net = WeightNet(fold, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nt, c, h, w = x.shape
        n = nt // self.frames
        desc = x[:, : self.fold].reshape(n, self.frames, self.fold, h, w)
        pooled = desc.mean(dim=(3, 4)).permute(0, 2, 1)  # (N, fold, T): only time and channel information
        offsets = self.offset_net(pooled)  # (N, groups)
        offsets = torch.cat([offsets, -offsets], dim=1)  # four groups: +a, +b, -a, -b
        weights = self.weight_net(pooled).repeat(1, 1, 2)  # (N, T, 2*groups), same order as the offsets
        shifted = interlace_shift(desc, offsets)
        per_group = shifted.reshape(n, self.frames, 2 * self.groups, self.fold // (2 * self.groups), h, w)
        per_group = per_group * weights.to(per_group.dtype)[..., None, None, None]
        return torch.cat([per_group.reshape(nt, self.fold, h, w), x[:, self.fold :]], dim=1)


class InterlacedConv(nn.Module):
    """A block's first residual-branch convolution preceded by a :class:`TemporalInterlace`."""

    def __init__(self, conv: nn.Conv2d, frames: int, shift_div: int) -> None:
        super().__init__()
        self.interlace = TemporalInterlace(conv.in_channels, frames, shift_div)
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.interlace(x))


_RESNETS = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34, 50: torchvision.models.resnet50}


class TIN(ClipClassifier):
    """TIN-ResNet (depth 50 as in the study; 18/34 basic-block variants for small demos).

    Parameters
    ----------
    num_classes
        Output logits (2: no ALN metastasis, ALN metastasis).
    depth
        ResNet depth: 50 (bottleneck; interlace before the first 1x1 conv) or 18/34 (basic block;
        interlace before conv1).
    frames
        Clip length T; fixed at build time because OffsetNet's MLP runs over time.
    shift_div
        1/shift_div of the channels are interlaced (4 as in the paper).
    dropout
        Dropout before the classifier (TSN head, 0.5 in the reference configs).
    size
        Nominal input size (recorded; the network itself accepts any size >= 32).
    """

    arch = "tin"
    cam_layer = "layer4"
    time_folded = True

    def __init__(
        self,
        num_classes: int = 2,
        depth: int = 50,
        frames: int = 16,
        shift_div: int = 4,
        dropout: float = 0.5,
        size: int = 224,
    ) -> None:
        super().__init__(frames, size)
        if depth not in _RESNETS:
            raise ValueError(f"tin: depth must be one of {sorted(_RESNETS)}, got {depth}")
        self.depth = depth
        base = _RESNETS[depth](weights=None, num_classes=num_classes)
        self.conv1, self.bn1, self.relu, self.maxpool = base.conv1, base.bn1, base.relu, base.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            base.layer1,
            base.layer2,
            base.layer3,
            base.layer4,
        )
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                block.conv1 = InterlacedConv(block.conv1, frames, shift_div)
        self.avgpool = base.avgpool
        self.dropout = nn.Dropout(dropout)
        self.fc = base.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if x.shape[2] != self.frames:
            raise ValueError(f"tin: built for {self.frames} frames, got a clip of {x.shape[2]}")
        y, n, t = fold_time(x)
        y = self.maxpool(self.relu(self.bn1(self.conv1(y))))
        y = self.layer4(self.layer3(self.layer2(self.layer1(y))))
        y = self.fc(self.dropout(torch.flatten(self.avgpool(y), 1)))
        return y.view(n, t, -1).mean(dim=1)  # TSN consensus: average the frames' class scores
