"""Preprocessing: image-region crop, clip sampling, MONAI transforms and the way back to the source."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset

from workers.decode import Clip, load_clip
from workers.prediction import Box
from workers.preprocess import (
    crop_size,
    find_image_region,
    make_transform,
    map_to_original,
    prepare_clip,
    sample_clip_indices,
)

CINE = "color3d_jpeg_baseline.dcm"
CINE_REGION = Box(y0=31, x0=84, y1=415, x1=596)  # its SequenceOfUltrasoundRegions, max corners inclusive


@pytest.fixture(scope="module")
def cine() -> Clip:
    from pydicom.data import get_testdata_file

    return load_clip(str(get_testdata_file(CINE)))


def iou(a: Box, b: Box) -> float:
    h = max(0, min(a.y1, b.y1) - max(a.y0, b.y0))
    w = max(0, min(a.x1, b.x1) - max(a.x0, b.x0))
    inter = h * w
    return inter / (a.height * a.width + b.height * b.width - inter)


def test_region_from_ultrasound_regions(cine: Clip) -> None:
    assert find_image_region(cine) == CINE_REGION


def test_region_added_to_a_copy_is_used(copy_with_new_uid: Callable, tmp_path: Path) -> None:
    path, ds = copy_with_new_uid("US1_UNCR.dcm")  # has no SequenceOfUltrasoundRegions
    regions = []
    for (x0, y0, x1, y1), spatial, kind in [
        ((10, 110, 629, 339), 1, 1),  # 2D tissue: the B-mode image
        ((87, 147, 546, 294), 1, 2),  # 2D colour flow inside it
        ((0, 0, 639, 100), 0, 0),  # no spatial format: the text header, ignored
    ]:
        item = Dataset()
        item.RegionSpatialFormat, item.RegionDataType, item.RegionFlags = spatial, kind, 0
        item.RegionLocationMinX0, item.RegionLocationMinY0 = x0, y0
        item.RegionLocationMaxX1, item.RegionLocationMaxY1 = x1, y1
        regions.append(item)
    ds.SequenceOfUltrasoundRegions = regions
    ds.save_as(path)
    clip = load_clip(path)
    assert clip.regions == (Box(110, 10, 340, 630), Box(147, 87, 295, 547))
    assert find_image_region(clip) == Box(110, 10, 340, 630)


def test_detected_region_of_the_real_cine_excludes_ui(cine: Clip) -> None:
    """Without US regions the moving sector is found; the static text columns and bottom bar are not.

    Frame 0 of the file (viewed while writing this test): sector image x 84..596, y 40..404;
    text "PLA / Gen THI" at x < 75, y < 60; "Crd P21 MI TIS" and the depth scale at x >= 597;
    a button bar at y >= 455.
    """
    box = find_image_region(dataclasses.replace(cine, regions=()), max_probe_frames=12)
    assert iou(box, CINE_REGION) > 0.85
    assert box.x0 >= 75 and box.x1 <= 598  # left and right text columns excluded
    assert box.y1 <= 420  # bottom button bar excluded
    assert box.y0 >= 30 and box.height > 330 and box.width > 480  # but the whole sector kept


def test_single_frame_fallback_excludes_side_text(testdata: Callable[[str], Path]) -> None:
    # 1024x768 echo frame: text at x < 100 on the left, an ECG trace below y 680, sector in between.
    clip = dataclasses.replace(load_clip(testdata("JPGLosslessP14SV1_1s_1f_8b.dcm")), regions=())
    box = find_image_region(clip)
    assert box.x0 > 100 and box.y1 < 680
    assert box.height > 400 and box.width > 600


def test_uniform_loop_gives_whole_frame(make_dataset: Callable[..., Dataset]) -> None:
    clip = load_clip(make_dataset(np.zeros((4, 32, 48), np.uint8)))
    assert find_image_region(clip) == Box(0, 0, 32, 48)


def test_eval_clips_cover_the_whole_loop() -> None:
    idx = sample_clip_indices(120)
    assert idx.shape == (2, 16) and idx.min() >= 0 and idx.max() <= 119
    assert np.all(np.diff(idx, axis=1) > 0)  # each clip runs forward through the loop
    assert idx[:, 0].max() < 8 and idx[:, -1].min() > 110  # each clip spans the sweep
    gaps = np.diff(np.unique(idx))
    assert gaps.max() <= 4  # together they leave no long unseen stretch
    assert np.array_equal(idx, sample_clip_indices(120))  # evaluation is deterministic
    assert sample_clip_indices(1000).shape == (8, 16)  # bounded number of clips
    assert sample_clip_indices(30).shape == (1, 16)


def test_short_loops_repeat_frames() -> None:
    assert sample_clip_indices(1).tolist() == [[0] * 16]
    two = sample_clip_indices(5)[0]
    assert two.tolist() == sorted(two.tolist()) and set(two.tolist()) == {0, 1, 2, 3, 4}


def test_training_clip_is_random_but_seeded() -> None:
    a = sample_clip_indices(120, rng=np.random.default_rng(3))
    b = sample_clip_indices(120, rng=np.random.default_rng(3))
    c = sample_clip_indices(120, rng=np.random.default_rng(4))
    assert a.shape == (1, 16) and np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.all(np.diff(a[0]) >= 7)  # uniform stride of 7.5 frames


def test_eval_transform_shape_and_range() -> None:
    x = torch.rand(3, 16, 300, 410)
    out = make_transform(train=False)(x)
    assert isinstance(out, torch.Tensor) and out.shape == (3, 16, 224, 224) and out.dtype == torch.float32
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert make_transform(train=False, size=112)(x).shape == (3, 16, 112, 112)


def test_train_augmentation_is_shared_by_all_frames_and_seeded() -> None:
    g = torch.Generator().manual_seed(0)
    frame = torch.rand(3, 1, 200, 260, generator=g)
    x = frame.repeat(1, 16, 1, 1)  # 16 identical frames
    outs = [make_transform(train=True, seed=s)(x.clone()) for s in (1, 1, 2)]
    assert outs[0].shape == (3, 16, 224, 224)
    assert torch.equal(outs[0], outs[1])  # same seed, same draw
    for out in outs:
        assert torch.allclose(out[:, 0:1].expand_as(out), out, atol=1e-6)  # one draw for every frame
    draws = [make_transform(train=True, seed=s)(x.clone()) for s in range(2, 8)]
    assert any(not torch.allclose(outs[0], d) for d in draws)


def test_prepare_clip_of_the_real_cine(cine: Clip) -> None:
    idx = sample_clip_indices(cine.n_frames)[0]
    t = prepare_clip(cine, idx, CINE_REGION)
    assert t.shape == (3, 16, 224, 224) and t.dtype == torch.float32
    assert 0.0 <= float(t.min()) and float(t.max()) <= 1.0 and float(t.mean()) > 0.02
    train = prepare_clip(cine, idx, CINE_REGION, train=True, transform=make_transform(True, seed=0))
    assert train.shape == (3, 16, 224, 224)


def test_map_to_original_round_trip() -> None:
    """A map carried through the eval geometry and back lands where it started (inside the crop)."""
    rows, cols, box = 300, 400, Box(40, 60, 280, 380)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    blob = np.exp(-(((yy - 150) / 25) ** 2 + ((xx - 200) / 30) ** 2)).astype(np.float32)
    crop = torch.from_numpy(blob[box.y0 : box.y1, box.x0 : box.x1])[None, None].repeat(3, 2, 1, 1)
    model_space = make_transform(train=False)(crop)[0]  # (T, 224, 224)
    back = map_to_original(model_space.numpy(), box, rows, cols)
    assert back.shape == (2, rows, cols) and back.dtype == np.float32
    assert back[:, : box.y0].max() == 0 and back[:, :, box.x1 :].max() == 0  # zero outside the box
    peak = np.unravel_index(np.argmax(back[0]), back[0].shape)
    assert abs(peak[0] - 150) <= 2 and abs(peak[1] - 200) <= 2
    margin_y = round(box.height * (256 - crop_size()) / 2 / 256) + 2
    margin_x = round(box.width * (256 - crop_size()) / 2 / 256) + 2
    inner = (slice(box.y0 + margin_y, box.y1 - margin_y), slice(box.x0 + margin_x, box.x1 - margin_x))
    assert np.abs(back[0][inner] - blob[inner]).max() < 0.03
    small = map_to_original(np.ones((1, 7, 7), np.float32), box, rows, cols)  # a coarse CAM is upsampled
    assert small[0, 150, 200] == pytest.approx(1.0) and small[0, 0, 0] == 0.0


def test_prepare_clip_rejects_empty_box(cine: Clip) -> None:
    with pytest.raises(ValueError, match="empty"):
        prepare_clip(cine, [0], Box(10, 10, 10, 50))


def test_prepare_clip_on_a_dicom_read_in_memory(testdata: Callable[[str], Path]) -> None:
    clip = load_clip(pydicom.dcmread(testdata("OBXXXX1A_rle_2frame.dcm")))
    box = find_image_region(clip)
    t = prepare_clip(clip, sample_clip_indices(clip.n_frames)[0], box)
    assert t.shape == (3, 16, 224, 224)
    assert torch.equal(t[:, 0], t[:, 7]) and not torch.equal(t[:, 0], t[:, 8])  # frames 0 then 1
