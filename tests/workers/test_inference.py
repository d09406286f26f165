"""predict(): a DICOM loop in, probability + Grad-CAM + key frame out, as the result writers need them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from conftest_models import (
    BLOB_SIZE,
    TINY,
    blob_clip,
    make_tiny_bundle,
    small_tin,
    train_blob_tin,
    write_us_loop,
)
from pydicom.data import get_testdata_file

from workers.bundle import load_bundle, save_bundle
from workers.gradcam import clip_cam, key_frame_position, make_explainer
from workers.inference import get_bundle, predict
from workers.models import ClipClassifier

CINE = "color3d_jpeg_baseline.dcm"  # 120 frames, 480 x 640, JPEG baseline


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tin-tiny")


@pytest.fixture(scope="module")
def cine_path() -> str:
    return str(get_testdata_file(CINE))


def test_prediction_of_a_real_cine_loop(tiny_bundle: Path, cine_path: str) -> None:
    torch.set_num_threads(2)
    p = predict(tiny_bundle, cine_path, device="cpu")
    n_clips = p.frame_indices.shape[0]
    assert p.frame_indices.shape == (n_clips, 8) and n_clips >= 1
    assert p.clip_logits.shape == (n_clips, 2) and p.clip_logits.dtype == np.float32
    probs = torch.softmax(torch.from_numpy(p.clip_logits), 1)[:, 1]
    assert p.probability == pytest.approx(float(probs.mean()), abs=1e-6)
    best = int(p.extra["best_clip"])
    assert p.cam_frames == tuple(sorted(set(p.frame_indices[best].tolist())))
    assert p.key_frame in p.cam_frames
    assert p.cam.shape == (len(p.cam_frames), 480, 640) and p.cam.dtype == np.float32
    assert 0.0 <= float(p.cam.min()) and float(p.cam.max()) <= 1.0 and float(p.cam.max()) > 0.5
    outside = np.ones((480, 640), bool)
    outside[p.crop.y0 : p.crop.y1, p.crop.x0 : p.crop.x1] = False
    assert float(p.cam[:, outside].max(initial=0.0)) == 0.0
    assert p.model.untrained and p.model.arch == "tin" and p.device == "cpu" and p.seconds > 0
    assert p.sop_instance_uid == pydicom.dcmread(cine_path, stop_before_pixels=True).SOPInstanceUID

    again = predict(tiny_bundle, pydicom.dcmread(cine_path), device="cpu")  # a dataset works as well
    assert again.probability == p.probability and again.key_frame == p.key_frame
    np.testing.assert_array_equal(again.cam, p.cam)


def test_cpu_bf16_precision_agrees_with_fp32(tiny_bundle: Path, cine_path: str) -> None:
    exact = predict(tiny_bundle, cine_path, device="cpu", precision="fp32")
    fast = predict(tiny_bundle, cine_path, device="cpu", precision="bf16")
    assert fast.probability == pytest.approx(exact.probability, abs=0.03)
    assert fast.cam.shape == exact.cam.shape and float(np.abs(fast.cam - exact.cam).mean()) < 0.05
    with pytest.raises(ValueError, match="precision 'fp8' is not one of fp32, bf16, auto"):
        predict(tiny_bundle, cine_path, device="cpu", precision="fp8")


def test_options_clip_count_and_no_explanation(tiny_bundle: Path, cine_path: str) -> None:
    p = predict(load_bundle(tiny_bundle), cine_path, n_clips=2, explain=False)
    assert p.frame_indices.shape == (2, 8)
    assert p.cam.shape == (0, 480, 640) and p.cam_frames == ()
    assert p.key_frame in p.frame_indices[int(p.extra["best_clip"])]


def test_short_loop_repeats_frames_and_gives_one_map_per_source_frame(tiny_bundle: Path) -> None:
    path = get_testdata_file("OBXXXX1A_rle_2frame.dcm")  # 2 frames, palette colour
    assert path is not None
    p = predict(tiny_bundle, path)
    assert p.cam_frames == (0, 1) and p.cam.shape == (2, 600, 800)


def test_bundle_is_loaded_once_and_reloaded_when_its_weights_change(tmp_path: Path) -> None:
    path = save_bundle(
        small_tin(seed=1), tmp_path / "b", arch="tin", options=dict(TINY), name="x", synthetic_only=True
    )
    first = get_bundle(path, "cpu")
    assert get_bundle(path, "cpu") is first
    shutil.rmtree(path)
    save_bundle(small_tin(seed=2), path, arch="tin", options=dict(TINY), name="x", synthetic_only=True)
    second = get_bundle(path, "cpu")
    assert second is not first and second.info.model_uid != first.info.model_uid


@pytest.fixture(scope="module")
def blob_model() -> ClipClassifier:
    torch.set_num_threads(2)
    return train_blob_tin(seed=0, steps=10)


@pytest.fixture(scope="module")
def blob_bundle(blob_model: ClipClassifier, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_bundle(
        blob_model,
        tmp_path_factory.mktemp("blob") / "bundle",
        arch="tin",
        name="blob",
        synthetic_only=True,
        options={"depth": 18, "frames": 8, "size": BLOB_SIZE, "dropout": 0.0},
    )


# Blob centres (row, col) in frames 3, 4, 5 of an 8-frame 128 px loop: left -> right, top -> bottom.
MOVERS = {"left_to_right": [(64, 24), (60, 64), (56, 104)], "top_to_bottom": [(24, 88), (64, 64), (104, 40)]}


@pytest.mark.parametrize("motion", sorted(MOVERS))
def test_key_frame_and_cam_peak_follow_a_moving_blob(
    blob_model: ClipClassifier, blob_bundle: Path, tmp_path: Path, motion: str
) -> None:
    centres = MOVERS[motion]
    clip, where = blob_clip(np.random.default_rng(7), True, centres=centres, start=3)
    blob_frames = [k for k, c in enumerate(where) if c is not None]
    assert blob_frames == [3, 4, 5]

    cam = clip_cam(blob_model, make_explainer(blob_model), clip[None], class_idx=1)  # model space
    assert key_frame_position(cam) in blob_frames

    p = predict(
        blob_bundle, write_us_loop(tmp_path / "blob.dcm", clip), device="cpu"
    )  # through DICOM, crop, resize
    assert p.probability > 0.9
    assert p.frame_indices.tolist() == [list(range(8))] and p.key_frame in blob_frames
    peaks = [np.unravel_index(int(np.argmax(p.cam[k])), p.cam[k].shape) for k in blob_frames]
    key_peak = peaks[blob_frames.index(p.key_frame)]
    key_centre = where[p.key_frame]
    assert key_centre is not None
    assert np.hypot(key_peak[0] - key_centre[0], key_peak[1] - key_centre[1]) <= BLOB_SIZE / 4
    axis = 1 if motion == "left_to_right" else 0
    assert peaks[-1][axis] - peaks[0][axis] >= BLOB_SIZE / 4  # the peak moves with the blob

    blank, _ = blob_clip(np.random.default_rng(8), False)
    assert predict(blob_bundle, write_us_loop(tmp_path / "blank.dcm", blank), device="cpu").probability < 0.1


def test_grad_cam_explains_the_metastasis_class_whatever_the_verdict(tmp_path: Path) -> None:
    """The map must explain the score the SR reports: with a threshold other than 0.5 the argmax class of one
    clip can be the opposite verdict, so Grad-CAM is always taken for class 1 (ALN metastasis)."""
    model = small_tin(seed=3)
    with torch.no_grad():  # a model that is sure there is no metastasis
        model.fc.bias.copy_(torch.tensor([4.0, -4.0]))
    bundle = save_bundle(model, tmp_path / "neg", arch="tin", options=dict(TINY), name="neg", synthetic_only=True)
    clip, _ = blob_clip(np.random.default_rng(1), positive=True)
    loop = write_us_loop(tmp_path / "blob.dcm", clip)

    p = predict(bundle, loop, device="cpu")

    assert p.probability < 0.1
    assert p.extra["cam_class"] == 1.0
    assert p.ood_score is None and p.temperature == 1.0 and p.assessable  # no statistics in this bundle
