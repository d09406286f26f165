"""Grad-CAM secondary captures: valid SC IODs, readable burned-in panel, overlay where the CAM is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest_results import (
    BLOB_CENTRE,
    CAM_FRAMES,
    KEY_FRAME,
    cam_frames_rgb,
    dciodvfy_errors,
    key_frame_rgb,
    make_model,
    make_prediction,
    round_trip,
    save,
    source_header,
)
from pydicom.dataset import Dataset

from workers.errors import ResultError
from workers.results import build_cine_sc, build_key_frame_sc
from workers.results.sc import MULTIFRAME_TRUE_COLOR_SC_STORAGE, SC_IMAGE_STORAGE


@pytest.fixture
def source() -> Dataset:
    return source_header()


def assert_common_sc_header(sc: Dataset, source: Dataset) -> None:
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    assert sc.SeriesInstanceUID != source.SeriesInstanceUID
    assert sc.PatientID == source.PatientID
    assert list(sc.ImageType) == ["DERIVED", "SECONDARY"]
    assert sc.ConversionType == "WSD"
    assert sc.BurnedInAnnotation == "YES"
    assert sc.Manufacturer == "aln-node"
    assert sc.SeriesDescription.startswith("AI ALN heatmap — research use, not for diagnosis")
    assert (sc.SamplesPerPixel, sc.PhotometricInterpretation, sc.PlanarConfiguration) == (3, "RGB", 0)
    assert (sc.BitsAllocated, sc.BitsStored) == (8, 8)
    assert sc.Columns == source.Columns and sc.Rows > source.Rows  # panel appended below the frame
    (reference,) = sc.SourceImageSequence
    assert reference.ReferencedSOPClassUID == source.SOPClassUID
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert reference.PurposeOfReferenceCodeSequence[0].CodeValue == "121324"
    assert "Grad-CAM" in sc.DerivationDescription


def test_key_frame_sc_round_trips_with_a_reference_to_the_key_frame(source: Dataset) -> None:
    sc = round_trip(build_key_frame_sc(make_prediction(), source, key_frame_rgb(), threshold=0.5))

    assert sc.SOPClassUID == SC_IMAGE_STORAGE
    assert_common_sc_header(sc, source)
    assert sc.SourceImageSequence[0].ReferencedFrameNumber == KEY_FRAME + 1
    assert sc.pixel_array.shape == (sc.Rows, 640, 3)


def test_key_frame_sc_shows_the_overlay_at_the_blob_and_the_raw_frame_elsewhere(source: Dataset) -> None:
    raw = key_frame_rgb()
    pixels = round_trip(build_key_frame_sc(make_prediction(), source, raw, threshold=0.5)).pixel_array
    image = pixels[: raw.shape[0]].astype(int)

    cy, cx = BLOB_CENTRE
    # At the CAM maximum jet is dark red: red up, blue down, clearly off the grey echo texture.
    assert image[cy, cx, 0] - image[cy, cx, 2] > 60
    assert np.abs(image[cy - 10 : cy + 10, cx - 10 : cx + 10] - raw[cy - 10 : cy + 10, cx - 10 : cx + 10]).mean() > 20
    # Far from the blob (no CAM, away from the crop's corner marks) the frame is untouched, 1:1.
    assert np.array_equal(image[150:200, 10:60], raw[150:200, 10:60].astype(int))


def test_key_frame_sc_has_a_burned_in_banner(source: Dataset) -> None:
    raw = key_frame_rgb()
    synthetic = build_key_frame_sc(make_prediction(), source, raw, threshold=0.5).pixel_array
    clinical = build_key_frame_sc(
        make_prediction(model=make_model(synthetic_only=False)), source, raw, threshold=0.5
    ).pixel_array
    panel = synthetic[raw.shape[0] :]

    bright = (panel.max(axis=2) > 150).mean()
    assert 0.02 < bright < 0.5  # text and colour bar, not an empty or saturated strip
    assert len(np.unique(panel.reshape(-1, 3), axis=0)) > 50  # anti-aliased text and the colour gradient
    # The synthetic-data warning is an extra line of text: the clinical model's panel is shorter.
    assert clinical.shape[0] < synthetic.shape[0]


def test_banner_changes_with_the_probability(source: Dataset) -> None:
    raw = key_frame_rgb()
    low = build_key_frame_sc(make_prediction(probability=0.12), source, raw, threshold=0.5).pixel_array
    high = build_key_frame_sc(make_prediction(probability=0.87), source, raw, threshold=0.5).pixel_array
    rows = raw.shape[0]

    assert np.array_equal(low[:rows], high[:rows])
    assert not np.array_equal(low[rows:], high[rows:])


def test_cine_sc_has_one_overlay_frame_per_cam_frame_at_the_source_pace(source: Dataset) -> None:
    sc = round_trip(build_cine_sc(make_prediction(), source, cam_frames_rgb(), threshold=0.5))

    assert sc.SOPClassUID == MULTIFRAME_TRUE_COLOR_SC_STORAGE
    assert_common_sc_header(sc, source)
    assert sc.NumberOfFrames == len(CAM_FRAMES)
    assert list(sc.SourceImageSequence[0].ReferencedFrameNumber) == [f + 1 for f in CAM_FRAMES]
    assert sc.FrameIncrementPointer == pydicom.tag.Tag("FrameTime")
    assert float(sc.FrameTime) == pytest.approx(8 * float(source.FrameTime), rel=1e-3)
    pixels = sc.pixel_array
    assert pixels.shape == (len(CAM_FRAMES), sc.Rows, 640, 3)
    cy, cx = BLOB_CENTRE
    key = CAM_FRAMES.index(KEY_FRAME)
    # The overlay follows the CAM: drawn at the key frame, absent where the CAM is under the floor.
    raw = cam_frames_rgb()
    window = np.s_[cy - 10 : cy + 10, cx - 10 : cx + 10]
    assert np.abs(pixels[key][window].astype(int) - raw[key][window]).mean() > 20
    assert np.array_equal(pixels[-1][window], raw[-1][window])


def test_cine_sc_with_irregular_sampling_uses_a_frame_time_vector(source: Dataset, tmp_path: Path) -> None:
    frames = (0, 8, 40, 41, 100)
    all_frames = dict(zip(CAM_FRAMES, cam_frames_rgb(), strict=True))
    rgb = np.stack([all_frames.get(f, all_frames[40]) for f in frames])
    cam = make_prediction().cam[[0, 1, 5, 5, 12]]
    prediction = make_prediction(cam_frames=frames, cam=cam)
    sc = round_trip(build_cine_sc(prediction, source, rgb, threshold=0.5))

    assert sc.FrameIncrementPointer == pydicom.tag.Tag("FrameTimeVector")
    step = float(source.FrameTime)
    assert [float(v) for v in sc.FrameTimeVector] == pytest.approx([0, 8 * step, 32 * step, step, 59 * step],
                                                                  rel=1e-3)
    assert dciodvfy_errors(save(sc, tmp_path / "cine.dcm")) == []


def test_sc_uids_are_stable_and_both_captures_share_one_series(source: Dataset) -> None:
    prediction = make_prediction()
    key = build_key_frame_sc(prediction, source, key_frame_rgb(), threshold=0.5)
    key_again = build_key_frame_sc(make_prediction(), source_header(), key_frame_rgb(), threshold=0.5)
    cine = build_cine_sc(prediction, source, cam_frames_rgb(), threshold=0.5)
    other = build_key_frame_sc(make_prediction(model=make_model(model_uid="1.2.3.999")), source,
                               key_frame_rgb(), threshold=0.5)

    assert key.SOPInstanceUID == key_again.SOPInstanceUID
    assert key.SeriesInstanceUID == key_again.SeriesInstanceUID == cine.SeriesInstanceUID
    assert key.SOPInstanceUID != cine.SOPInstanceUID
    assert other.SOPInstanceUID != key.SOPInstanceUID and other.SeriesInstanceUID != key.SeriesInstanceUID


def test_sc_copies_laterality_and_builds_without_type2_attributes(source: Dataset, tmp_path: Path) -> None:
    source.ImageLaterality = "R"
    source.Laterality = "R"
    for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "ReferringPhysicianName", "StudyID"):
        delattr(source, keyword)
    prediction = make_prediction()
    key = build_key_frame_sc(prediction, source, key_frame_rgb(), threshold=0.5)
    cine = build_cine_sc(prediction, source, cam_frames_rgb(), threshold=0.5)

    for sc in (key, cine):
        # General Series Laterality (2C) must be absent when Image Laterality is present.
        assert sc.ImageLaterality == "R" and "Laterality" not in sc
        assert sc.PatientBirthDate == "" and sc.AccessionNumber == ""
        assert dciodvfy_errors(save(sc, tmp_path / f"{sc.SOPInstanceUID}.dcm")) == []


def test_sc_copies_series_laterality_when_the_source_has_only_that(source: Dataset) -> None:
    source.Laterality = "L"
    sc = build_key_frame_sc(make_prediction(), source, key_frame_rgb(), threshold=0.5)

    assert sc.Laterality == "L" and "ImageLaterality" not in sc


def test_sc_pass_dciodvfy_for_the_real_source(source: Dataset, tmp_path: Path) -> None:
    prediction = make_prediction()
    key = build_key_frame_sc(prediction, source, key_frame_rgb(), threshold=0.5)
    cine = build_cine_sc(prediction, source, cam_frames_rgb(), threshold=0.5)

    assert dciodvfy_errors(save(key, tmp_path / "key.dcm")) == []
    assert dciodvfy_errors(save(cine, tmp_path / "cine.dcm")) == []


def test_sc_refuses_frames_of_the_wrong_geometry(source: Dataset) -> None:
    with pytest.raises(ResultError, match=str(source.SOPInstanceUID)):
        build_key_frame_sc(make_prediction(), source, np.zeros((240, 320, 3), np.uint8), threshold=0.5)
    with pytest.raises(ResultError, match="frames"):
        build_cine_sc(make_prediction(), source, cam_frames_rgb()[:3], threshold=0.5)
    with pytest.raises(ResultError, match="threshold"):
        build_key_frame_sc(make_prediction(), source, key_frame_rgb(), threshold=50)


def test_narrow_frames_put_the_colour_bar_below_the_text_and_wrap_long_lines() -> None:
    from workers.results import overlay

    long_line = overlay.BannerLine((("ALN metastasis probability 99.4 % (threshold 50 %) at frame 14", overlay.WHITE),))
    lines = [long_line, overlay.BannerLine((("RESEARCH USE - NOT FOR DIAGNOSTIC USE", overlay.YELLOW),))]
    frame, cam = np.full((160, 208, 3), 90, np.uint8), np.zeros((160, 208), np.float32)
    narrow = overlay.render_frame(frame, cam, None, lines)
    wide = overlay.render_frame(np.full((160, 640, 3), 90, np.uint8), np.zeros((160, 640), np.float32), None, lines)
    layout = overlay._layout(208, lines)
    assert layout.stacked and not overlay._layout(640, lines).stacked
    drawn = [" ".join(t.strip() for t, _ in parts if t.strip()) for parts in layout.text]
    assert len(drawn) == 3 and " ".join(drawn).split() == " ".join(line.text for line in lines).split()  # wrapped, whole
    assert all(overlay._font(layout.font_size).getlength(t) <= 208 - 2 * layout.margin for t in drawn)
    panel = narrow[161:].astype(int)
    blue = (panel[..., 2] > 200) & (panel[..., 0] < 80)  # the jet colour bar's blue end; no text is blue
    rows_with_bar = np.flatnonzero(blue.any(axis=1))
    assert rows_with_bar.size and rows_with_bar.min() >= layout.margin + layout.text_height - 2
    assert narrow.shape[0] == 160 + 1 + layout.height and wide.shape[0] == 160 + 1 + overlay._layout(640, lines).height


def test_cine_sc_of_a_narrow_phantom_loop_gives_every_frame_the_same_panel(tmp_path: Path) -> None:
    """Regression (make demo): on a 208-px-wide loop the banner wraps, and frame numbers of one and two
    digits wrapped differently, so the rendered frames had different heights."""
    from conftest_models import make_tiny_bundle

    from workers.decode import load_clip
    from workers.inference import predict
    from workers.research.phantom import generate

    (case,) = generate(tmp_path / "ph", 1, seed=3, frames=24, size=(160, 208))
    prediction = predict(make_tiny_bundle(tmp_path / "bundle"), case.path, device="cpu")
    assert min(prediction.cam_frames) < 9 < max(prediction.cam_frames)  # frame numbers of 1 and 2 digits
    source = pydicom.dcmread(case.path, stop_before_pixels=True)
    frames = load_clip(case.path).frames(list(prediction.cam_frames))
    sc = build_cine_sc(prediction, source, frames, threshold=0.5)
    assert (sc.NumberOfFrames, sc.Columns) == (len(prediction.cam_frames), 208) and sc.Rows > 160
    assert dciodvfy_errors(save(sc, tmp_path / "sc.dcm")) == []
