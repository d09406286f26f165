"""The six classifiers: one factory, 2-class logits for 16x224x224 clips, published sizes and costs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from workers.models import ARCHS, build
from workers.models.tin import TemporalInterlace

# Published parameter counts (torchvision model cards, 400 / 1000 classes) minus the head's change to
# 2 classes: (in_features + 1) * (published_classes - 2).
PUBLISHED = {
    "r2plus1d": (31_505_325, 512, 400),
    "r3d": (33_371_472, 512, 400),
    "resnet50": (25_557_032, 2048, 1000),
    "inceptionv3": (27_161_264 - 3_326_696, 2048, 1000),  # 27.2 M includes the auxiliary head (off here)
    "vgg19": (143_667_240, 4096, 1000),
}
# Published MACs for a 16x224x224 clip (static nets: 16 frames, Inception at 299x299).
PUBLISHED_GMAC = {"tin": 65.8, "r2plus1d": 162.0, "r3d": 163.0, "resnet50": 16 * 4.09, "inceptionv3": 16 * 5.71,
                  "vgg19": 16 * 19.63}  # fmt: skip


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def gmacs(arch: str) -> float:
    with torch.device("meta"):  # shapes only: counting costs no compute
        model = build(arch).eval()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.empty(1, 3, 16, 224, 224))
    return counter.get_total_flops() / 2e9


@pytest.mark.parametrize("arch", ARCHS)
def test_full_size_clip_gives_two_logits(arch: str) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = build(arch).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 16, 224, 224))
    assert out.shape == (1, 2) and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "tin"])
def test_parameter_counts_match_published(arch: str) -> None:
    total, features, classes = PUBLISHED[arch]
    expected = total - (features + 1) * (classes - 2)
    assert n_params(build(arch)) == pytest.approx(expected, rel=0.02)


def test_tin_r50_adds_under_half_a_percent_to_resnet50() -> None:
    tin, r50 = n_params(build("tin")), n_params(build("resnet50"))
    assert tin == pytest.approx(23.5e6, rel=0.02)
    assert 0 < tin - r50 < 0.005 * r50
    assert sum(isinstance(m, TemporalInterlace) for m in build("tin").modules()) == 16  # every bottleneck


@pytest.mark.parametrize("arch", ARCHS)
def test_costs_match_published(arch: str) -> None:
    assert gmacs(arch) == pytest.approx(PUBLISHED_GMAC[arch], rel=0.03)


def test_tin_is_at_least_twice_cheaper_than_r2plus1d() -> None:
    assert gmacs("r2plus1d") >= 2 * gmacs("tin")


def test_static_clip_score_is_the_mean_of_its_frames() -> None:
    torch.manual_seed(1)
    model = build("resnet50", frames=3).eval()
    clip = torch.rand(2, 3, 3, 64, 64)
    with torch.no_grad():
        per_frame = torch.stack([model(clip[:, :, t]) for t in range(3)]).mean(0)
        torch.testing.assert_close(model(clip), per_frame, rtol=1e-4, atol=1e-5)
        assert model(clip[:, :, 0]).shape == (2, 2)  # one key frame (N, 3, H, W)


def test_inception_accepts_224_frames_by_resizing_inside() -> None:
    model = build("inceptionv3").eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 224, 224)).shape == (1, 2)


def test_video_nets_refuse_single_frames() -> None:
    with pytest.raises(ValueError, match=r"\(N, 3, T, H, W\)"):
        build("r3d")(torch.rand(1, 3, 64, 64))


def test_unknown_arch_and_option_are_named() -> None:
    with pytest.raises(ValueError, match="resnet3d"):
        build("resnet3d")
    with pytest.raises(ValueError, match="shift_dv"):
        build("tin", shift_dv=8)
    with pytest.raises(ValueError, match="depth"):
        build("tin", depth=101)


def test_local_weights_file_is_loaded_with_torchvision_names(tmp_path: Path) -> None:
    torch.manual_seed(2)
    imagenet_like = torchvision.models.resnet50(weights=None)  # 1000-class head, torchvision key names
    path = tmp_path / "r50.pt"
    torch.save(imagenet_like.state_dict(), path)
    for arch in ("resnet50", "tin"):
        model = build(arch, weights=str(path))
        own = model.state_dict()
        key = "net.layer3.2.conv2.weight" if arch == "resnet50" else "layer3.2.conv2.weight"
        torch.testing.assert_close(own[key], imagenet_like.state_dict()["layer3.2.conv2.weight"])
        first = "net.layer1.0.conv1.weight" if arch == "resnet50" else "layer1.0.conv1.conv.weight"
        torch.testing.assert_close(own[first], imagenet_like.state_dict()["layer1.0.conv1.weight"])
        assert own["net.fc.weight" if arch == "resnet50" else "fc.weight"].shape == (2, 2048)  # head kept
    torch.save({"x": torch.zeros(3)}, tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="junk.pt"):
        build("r3d", weights=str(tmp_path / "junk.pt"))
