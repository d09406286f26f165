"""The synthetic breast-ultrasound phantom: valid DICOM, honest labels, a feature only in part of the sweep."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy.stats import mannwhitneyu

from tests.helpers import require_tool
from workers.research.phantom import (
    PhantomCase,
    describe,
    generate,
    main,
    make_loop,
    sample_scene,
    sample_sweep,
)

SMALL = {"frames": 16, "size": (120, 160)}
SYNTAX_UIDS = {"jpeg": "1.2.840.10008.1.2.4.50", "rle": "1.2.840.10008.1.2.5", "explicit": "1.2.840.10008.1.2.1"}
Sets = dict[str, tuple[Path, list[PhantomCase]]]


def _region(ds: pydicom.Dataset) -> tuple[int, int, int, int]:
    item = ds.SequenceOfUltrasoundRegions[0]
    return item.RegionLocationMinY0, item.RegionLocationMinX0, item.RegionLocationMaxY1, item.RegionLocationMaxX1


def _auc(values: np.ndarray, labels: np.ndarray) -> float:
    """AUC of the best univariate logistic model on ``values``: it is monotone, so max(AUC, 1 - AUC)."""
    u = mannwhitneyu(values[labels == 1], values[labels == 0]).statistic
    auc = float(u) / ((labels == 1).sum() * (labels == 0).sum())
    return max(auc, 1 - auc)


@pytest.mark.parametrize("syntax", ["jpeg", "rle", "explicit"])
def test_files_pass_dciodvfy(phantom_sets: Sets, syntax: str) -> None:
    dciodvfy = require_tool("dciodvfy")  # fails under CI when missing, never a silent skip
    _, cases = phantom_sets[syntax]
    for case in cases[:2]:
        run = subprocess.run([dciodvfy, "-new", str(case.path)], capture_output=True, text=True, timeout=60)
        report = run.stdout + run.stderr
        assert "USMultiFrameImage" in report
        assert [line for line in report.splitlines() if line.startswith("Error")] == []


@pytest.mark.parametrize("syntax", ["jpeg", "rle", "explicit"])
def test_files_decode_as_us_multiframe(phantom_sets: Sets, syntax: str) -> None:
    _, cases = phantom_sets[syntax]
    ds = pydicom.dcmread(cases[0].path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.3.1"
    assert ds.file_meta.TransferSyntaxUID == SYNTAX_UIDS[syntax]
    assert ds.Manufacturer == "aln-node phantom"
    assert ds.PatientName == "PHANTOM^5-0000" and ds.PatientID == "PH5-0000"
    assert ds.FrameIncrementPointer == 0x00181063 and float(ds.FrameTime) == 50.0
    assert ds.PhotometricInterpretation == ("YBR_FULL_422" if syntax == "jpeg" else "MONOCHROME2")
    pixels = ds.pixel_array
    assert pixels.shape == ((16, 120, 160, 3) if syntax == "jpeg" else (16, 120, 160))
    item = ds.SequenceOfUltrasoundRegions[0]
    assert (item.RegionSpatialFormat, item.RegionDataType) == (1, 1)
    assert (item.PhysicalUnitsXDirection, item.PhysicalUnitsYDirection) == (3, 3)
    assert 0.01 < item.PhysicalDeltaY < 0.1  # cm per pixel of a 3.5-4.5 cm deep image


def test_lossless_syntaxes_hold_the_same_pixels_and_jpeg_is_close(phantom_sets: Sets) -> None:
    arrays = {s: pydicom.dcmread(phantom_sets[s][1][1].path).pixel_array for s in ("jpeg", "rle", "explicit")}
    assert np.array_equal(arrays["rle"], arrays["explicit"])
    assert np.abs(arrays["jpeg"][..., 0].astype(int) - arrays["explicit"]).mean() < 4


def test_ui_is_static_and_outside_the_region(phantom_sets: Sets) -> None:
    ds = pydicom.dcmread(phantom_sets["explicit"][1][0].path)
    pixels = ds.pixel_array
    y0, x0, y1, x1 = _region(ds)
    outside = np.ones(pixels.shape[1:], bool)
    outside[y0 : y1 + 1, x0 : x1 + 1] = False
    assert (pixels[:, outside] == pixels[0, outside]).all()  # burned-in UI does not move
    assert pixels[0, :y0].max() > 150  # burned-in text is there
    assert (pixels[1:, y0 : y1 + 1, x0 : x1 + 1] != pixels[:-1, y0 : y1 + 1, x0 : x1 + 1]).any()  # the sweep moves


def test_manifest_lists_every_loop_with_its_labels(phantom_sets: Sets) -> None:
    folder, cases = phantom_sets["rle"]
    with (folder / "manifest.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6
    assert {"path", "label", "patient_id", "case_id", "true_label", "frames", "positive_frames"} <= set(rows[0])
    assert sum(int(r["label"]) for r in rows) == 3  # positive_rate 0.5, exact
    assert [r["label"] for r in rows] == [r["true_label"] for r in rows]  # no label noise asked
    assert len({r["patient_id"] for r in rows}) == 6
    for row, case in zip(rows, cases, strict=True):
        assert (folder / row["path"]).is_file() and (folder / row["mask_path"]).is_file()
        ds = pydicom.dcmread(folder / row["path"], stop_before_pixels=True)
        assert ds.PatientID == row["patient_id"] and ds.SOPInstanceUID == row["sop_instance_uid"]
        assert int(row["frames"]) == ds.NumberOfFrames == 16
        assert int(row["positive_frames"]) == len(case.frames_with_feature)
        assert (int(row["positive_frames"]) > 0) == (row["true_label"] == "1")
        assert int(row["static_frame"]) == case.static_frame and 0 <= case.static_frame < 16


def test_masks_mark_the_feature_inside_the_region_in_a_contiguous_part(phantom_sets: Sets) -> None:
    folder, cases = phantom_sets["explicit"]
    for case in cases:
        ds = pydicom.dcmread(case.path, stop_before_pixels=True)
        with np.load(case.mask_path) as npz:
            mask, frames = npz["mask"], npz["frames_with_feature"]
        assert mask.shape == (16, ds.Rows, ds.Columns) and mask.dtype == bool
        assert list(frames) == list(np.flatnonzero(mask.any(axis=(1, 2))))
        if case.true_label == 0:
            assert frames.size == 0
            continue
        assert np.array_equal(frames, np.arange(frames[0], frames[-1] + 1))  # contiguous
        assert 0.2 <= len(frames) / 16 <= 0.4
        y0, x0, y1, x1 = _region(ds)
        rows, cols = np.nonzero(mask.any(axis=0))
        assert rows.min() >= y0 and rows.max() <= y1 and cols.min() >= x0 and cols.max() <= x1


def test_feature_covers_20_to_40_percent_of_positive_sweeps_and_never_negatives() -> None:
    for seed in range(30):
        for frames in (8, 16, 48):
            scene = sample_scene(np.random.default_rng(seed), seed % 2, frames, (240, 320))
            meta = describe(scene, sample_sweep(np.random.default_rng(seed + 100), scene))
            f = meta.frames_with_feature
            if scene.label == 0:
                assert f.size == 0
                continue
            assert 0.2 <= len(f) / frames <= 0.4 and np.array_equal(f, np.arange(f[0], f[-1] + 1))
            assert set(f) <= set(meta.lesion_frames)  # the feature lies on the lesion, inside the sweep


def test_feature_is_what_differs_between_classes_and_only_where_masked() -> None:
    """Same seed, both labels: same breast, lesion, motion and speckle; only the feature differs."""
    pos, mask, meta = make_loop(np.random.default_rng(7), 1, 24, (180, 240))
    neg, neg_mask, _ = make_loop(np.random.default_rng(7), 0, 24, (180, 240))
    assert not neg_mask.any()
    diff = np.abs(pos.astype(int) - neg.astype(int))
    feature = meta.frames_with_feature
    far = [t for t in range(24) if min(abs(t - f) for f in feature) >= 3]
    assert far and diff[far].max() == 0  # the rest of the sweep is untouched
    in_mask = diff[feature][mask[feature]].mean()
    assert in_mask > 15  # plainly visible: tens of grey levels in the marked structure
    assert diff[feature][~mask[feature]].mean() < in_mask / 10


def test_static_frame_is_the_lesion_s_largest_section() -> None:
    """The static image (what a sonographer stores) shows the lesion at its widest, in both classes."""
    for seed in range(6):
        _, _, meta = make_loop(np.random.default_rng(seed), seed % 2, 24, (96, 128))
        assert meta.static_frame in meta.lesion_frames
        centre = (meta.sweep.elevation - meta.scene.lesion.elev_center) ** 2
        assert meta.static_frame == int(np.argmin(centre))


def test_nuisance_parameters_alone_do_not_predict_the_label() -> None:
    labels = np.arange(400) % 2
    metas = []
    for seed, label in enumerate(labels):
        scene = sample_scene(np.random.default_rng([9, seed]), int(label), 48, (240, 320))
        metas.append(describe(scene, sample_sweep(np.random.default_rng([10, seed]), scene)))
    names = metas[0].nuisance().keys()
    aucs = {k: _auc(np.array([m.nuisance()[k] for m in metas]), labels) for k in names}
    assert len(aucs) >= 10
    assert max(aucs.values()) < 0.6, aucs


def test_image_brightness_alone_does_not_predict_the_label() -> None:
    labels = np.arange(40) % 2
    means = []
    for seed, label in enumerate(labels):
        frames, _, meta = make_loop(np.random.default_rng([11, seed]), int(label), 8, (96, 128))
        r = meta.region
        means.append(frames[:, r.y0 : r.y1, r.x0 : r.x1].mean())
    assert _auc(np.array(means), labels) < 0.75


def test_same_seed_same_pixels_and_uids(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", 2, seed=3, syntax="jpeg", **SMALL)  # type: ignore[arg-type]
    b = generate(tmp_path / "b", 2, seed=3, syntax="jpeg", **SMALL)  # type: ignore[arg-type]
    c = generate(tmp_path / "c", 2, seed=4, syntax="jpeg", **SMALL)  # type: ignore[arg-type]
    for x, y, z in zip(a, b, c, strict=True):
        dx, dy, dz = (pydicom.dcmread(case.path) for case in (x, y, z))
        assert dx.PixelData == dy.PixelData and dx.PixelData != dz.PixelData
        for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            assert dx[key].value == dy[key].value != dz[key].value
    assert (tmp_path / "a/manifest.csv").read_bytes() == (tmp_path / "b/manifest.csv").read_bytes()


def test_label_noise_flips_recorded_labels_but_not_true_ones(tmp_path: Path) -> None:
    cases = generate(tmp_path, 20, seed=1, frames=4, size=(64, 96), syntax="explicit", label_noise=0.4)
    assert sum(c.true_label for c in cases) == 10
    flipped = [c for c in cases if c.label != c.true_label]
    assert 2 <= len(flipped) <= 14
    assert all(bool(c.frames_with_feature) == (c.true_label == 1) for c in cases)  # pixels follow the truth


def test_several_loops_per_patient_share_patient_study_and_label(tmp_path: Path) -> None:
    cases = generate(tmp_path, 5, seed=2, frames=4, size=(64, 96), syntax="explicit", loops_per_patient=2)
    assert [c.patient_id for c in cases] == ["PH2-0000", "PH2-0000", "PH2-0001", "PH2-0001", "PH2-0002"]
    assert cases[0].study_instance_uid == cases[1].study_instance_uid != cases[2].study_instance_uid
    assert cases[0].true_label == cases[1].true_label and cases[2].true_label == cases[3].true_label
    assert len({c.sop_instance_uid for c in cases}) == 5


def test_cli_writes_a_data_set_and_reports_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--out", str(tmp_path), "--n", "3", "--seed", "2", "--frames", "5", "--size", "64x96"]
    assert main([*argv, "--syntax", "rle", "--positive-rate", "0.34", "--label-noise", "0"]) == 0
    assert "wrote 3 loops (1 positive" in capsys.readouterr().out
    assert len(list((tmp_path / "dicom").glob("*.dcm"))) == 3
    assert main([*argv, "--positive-rate", "1.5"]) == 2
    assert "positive_rate" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*argv, "--size", "big"])
