"""TIN's temporal interlace: exact shifts, linear interpolation, gradients to offsets and weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from workers.models import build
from workers.models.tin import OffsetNet, TemporalInterlace, WeightNet, interlace_shift


def rolled(data: torch.Tensor, shifts: list[list[int]]) -> torch.Tensor:
    """Reference: torch.roll along time per (clip, group), wrapped-around frames zeroed."""
    b, t, c = data.shape[:3]
    g = len(shifts[0])
    out = torch.zeros_like(data)
    for i in range(b):
        for j in range(g):
            s = shifts[i][j]
            chans = slice(j * c // g, (j + 1) * c // g)
            r = torch.roll(data[i, :, chans], s, dims=0)
            if s > 0:
                r[:s] = 0
            elif s < 0:
                r[s:] = 0
            out[i, :, chans] = r
    return out


def test_integer_offsets_are_zero_padded_rolls() -> None:
    torch.manual_seed(0)
    data = torch.rand(2, 8, 8, 3, 3)
    shifts = [[1, -2, 0, 3], [-1, 2, -3, 8]]
    out = interlace_shift(data, torch.tensor(shifts, dtype=torch.float32))
    torch.testing.assert_close(out, rolled(data, shifts))


def test_fractional_offsets_interpolate_between_neighbouring_shifts() -> None:
    torch.manual_seed(1)
    data = torch.rand(1, 6, 4, 5)
    out = interlace_shift(data, torch.tensor([[0.25, -1.5]]))
    low = rolled(data, [[0, -2]])
    high = rolled(data, [[1, -1]])
    expected = torch.cat(
        [0.75 * low[:, :, :2] + 0.25 * high[:, :, :2], 0.5 * low[:, :, 2:] + 0.5 * high[:, :, 2:]], 2
    )
    torch.testing.assert_close(out, expected)


def test_shift_gradcheck_wrt_input_and_offsets() -> None:
    torch.manual_seed(2)
    data = torch.rand(2, 5, 4, 3, dtype=torch.float64, requires_grad=True)
    offsets = torch.tensor([[0.3, -1.6], [1.2, -0.45]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(interlace_shift, (data, offsets), eps=1e-6, atol=1e-6)


def test_offsets_and_weights_start_inside_their_ranges() -> None:
    pooled = torch.randn(3, 16, 8) * 10
    offsets = OffsetNet(16, 8)(pooled)
    weights = WeightNet(16)(pooled)
    assert offsets.shape == (3, 2) and bool(((offsets > -2) & (offsets < 2)).all())
    assert weights.shape == (3, 8, 2) and bool(((weights > 0) & (weights < 2)).all())
    # at initialisation: half a frame of shift and unit weights, as in the reference implementation
    fresh = OffsetNet(16, 8)
    torch.nn.init.zeros_(fresh.fc2.weight)
    torch.testing.assert_close(fresh(pooled), torch.full((3, 2), 0.5), atol=1e-3, rtol=0)


def test_interlace_touches_only_the_shifted_channels() -> None:
    module = TemporalInterlace(64, frames=4, shift_div=4)
    x = torch.rand(2 * 4, 64, 5, 5)
    y = module(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y[:, 16:], x[:, 16:])
    assert not torch.allclose(y[:, :16], x[:, :16])


def test_one_backward_pass_reaches_offsetnet_and_weightnet_of_every_block() -> None:
    torch.manual_seed(3)
    model = build("tin", depth=18, frames=4, size=64).train()
    loss = F.cross_entropy(model(torch.rand(2, 3, 4, 64, 64)), torch.tensor([0, 1]))
    loss.backward()
    modules = [m for m in model.modules() if isinstance(m, TemporalInterlace)]
    assert len(modules) == 8  # every basic block of ResNet-18
    for m in modules:
        for name, p in [*m.offset_net.named_parameters(), *m.weight_net.named_parameters()]:
            assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


def test_clip_length_is_checked() -> None:
    model = build("tin", depth=18, frames=4, size=64)
    with pytest.raises(ValueError, match="4 frames"):
        model(torch.rand(1, 3, 5, 64, 64))
