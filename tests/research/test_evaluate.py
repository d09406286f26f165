"""`alnnode evaluate` end to end: CSVs in, metrics.json + report.md/html + PNGs out."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from workers.prediction import Box, ModelInfo, Prediction
from workers.research import evaluate, stats

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MODEL_KEYS = {"n", "tp", "fp", "tn", "fn", "accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "kappa",
              "auc", "auc_ci_low", "auc_ci_high", "kappa_se", "threshold",
              *(f"{m}_ci_{s}" for m in ("accuracy", "sensitivity", "specificity", "ppv", "npv")
                for s in ("low", "high"))}
COMPARISON_KEYS = {"a", "b", "paired", "auc_diff", "z", "p_value", "ci_low", "ci_high"}


def _write(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def _cases(n: int = 60, seed: int = 3) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 3 == 0).astype(int)  # 20 positives of 60, like test set A's 21/61
    video = 1 / (1 + np.exp(-(2.2 * y - 1.1 + rng.normal(0, 0.9, n))))
    static = 1 / (1 + np.exp(-(1.2 * y - 0.6 + rng.normal(0, 1.0, n))))
    return [f"case{i:03d}" for i in range(n)], y, np.round(video, 4), np.round(static, 4)


@pytest.fixture
def study(tmp_path: Path) -> dict[str, Path]:
    ids, y, video, static = _cases()
    a = _write(tmp_path / "tin.csv", ["case_id", "label", "score"], [list(r) for r in zip(ids, y, video, strict=True)])
    b = _write(tmp_path / "resnet50.csv", ["case_id", "label", "score"],
               [list(r) for r in zip(ids, y, static, strict=True)])
    rng = np.random.default_rng(11)
    rows: list[list[object]] = []
    for reader, err in (("junior", 0.35), ("senior", 0.15)):
        flip = rng.random(y.size) < err
        rows += [[c, reader, int(t ^ f)] for c, t, f in zip(ids, y, flip, strict=True)]
    r = _write(tmp_path / "readers.csv", ["case_id", "reader", "call"], rows)
    return {"a": a, "b": b, "readers": r, "out": tmp_path / "out"}


def test_end_to_end_writes_metrics_report_and_figures(study: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = study["out"]
    rc = evaluate.main(["--predictions", str(study["a"]), str(study["b"]), "--readers", str(study["readers"]),
                        "--out", str(out)])
    assert rc == 0
    assert "tin: AUC" in capsys.readouterr().out
    text = (out / "metrics.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    metrics = json.loads(text)
    assert set(metrics["models"]) == {"tin", "resnet50"}
    for row in metrics["models"].values():
        assert MODEL_KEYS <= set(row)
        assert row["n"] == 60 and row["tp"] + row["fn"] == 20 and row["threshold"] == 0.5
        assert row["auc_ci_low"] <= row["auc"] <= row["auc_ci_high"]
    ids, y, video, static = _cases()
    assert metrics["models"]["tin"]["auc"] == pytest.approx(stats.auc_delong(y, video).auc)
    (comp,) = metrics["comparisons"]
    assert COMPARISON_KEYS <= set(comp)
    assert comp["paired"] is True and comp["n_pairs"] == 60 and comp["mcnemar"]["method"]
    ref = stats.delong_paired(y, video, static)
    assert comp["p_value"] == pytest.approx(ref.p_value) and comp["auc_diff"] == pytest.approx(ref.auc_diff)
    junior = metrics["readers"]["junior"]
    assert {"accuracy", "accuracy_ci_low", "kappa", "kappa_se", "f1"} <= set(junior)
    assert set(junior["mcnemar"]) == {"tin", "resnet50"}
    assert junior["mcnemar"]["tin"]["accuracy"]["method"] in {"exact binomial", "chi-square, continuity-corrected"}
    assert metrics["readers"]["senior"]["accuracy"] > junior["accuracy"]

    for png in ("roc.png", "pr.png"):
        data = (out / png).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    md = (out / "report.md").read_text()
    assert "| tin |" in md and "| Finding | junior | senior | tin | resnet50 |" in md
    assert "![roc](roc.png) ![pr](pr.png)" in md
    assert f"{metrics['models']['tin']['auc']:.3f}" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "<table>" in html and "junior" in html


def test_partial_overlap_pairs_on_shared_cases_and_says_how_many(tmp_path: Path) -> None:
    ids, y, video, static = _cases()
    a = _write(tmp_path / "a.csv", ["case_id", "label", "score"], [list(r) for r in zip(ids, y, video, strict=True)])
    b = _write(tmp_path / "b.csv", ["case_id", "label", "score"],
               [list(r) for r in zip(ids[15:], y[15:], static[15:], strict=True)])
    assert evaluate.main(["--predictions", str(a), str(b), "--out", str(tmp_path / "o")]) == 0
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    (comp,) = metrics["comparisons"]
    assert comp["paired"] and comp["n_pairs"] == 45
    assert comp["p_value"] == pytest.approx(stats.delong_paired(y[15:], video[15:], static[15:]).p_value)
    assert any("45 shared case ids" in w for w in metrics["warnings"])


def test_disjoint_cases_use_unpaired_delong(tmp_path: Path) -> None:
    ids, y, video, _ = _cases(60, seed=3)
    ids2, y2, _, static = _cases(50, seed=4)
    a = _write(tmp_path / "siteA.csv", ["case_id", "label", "score"], [list(r) for r in zip(ids, y, video, strict=True)])
    b = _write(tmp_path / "siteB.csv", ["case_id", "label", "score"],
               [[f"b{c}", t, s] for c, t, s in zip(ids2, y2, static, strict=True)])
    assert evaluate.main(["--predictions", str(a), str(b), "--out", str(tmp_path / "o")]) == 0
    (comp,) = json.loads((tmp_path / "o" / "metrics.json").read_text())["comparisons"]
    ref = stats.delong_unpaired(y, video, y2, static)
    assert comp["paired"] is False and comp["n_pairs"] == 0
    assert (comp["z"], comp["p_value"], comp["df"]) == pytest.approx((ref.statistic, ref.p_value, ref.df))


def test_threshold_per_model_and_undefined_ppv_is_null(tmp_path: Path) -> None:
    ids, y, video, _ = _cases()
    a = _write(tmp_path / "tin.csv", ["case_id", "label", "score"], [list(r) for r in zip(ids, y, video, strict=True)])
    out = tmp_path / "o"
    assert evaluate.main(["--predictions", str(a), "--threshold", "tin=1.0", "--out", str(out)]) == 0
    text = (out / "metrics.json").read_text()
    row = json.loads(text)["models"]["tin"]
    assert row["threshold"] == 1.0 and row["tp"] + row["fp"] == 0
    assert row["ppv"] is None and row["ppv_ci_low"] is None and "NaN" not in text
    assert any("ppv undefined" in w for w in json.loads(text)["warnings"])
    assert "n/a" in (out / "report.md").read_text()


BAD_INPUTS = [
    ("case_id,label,prob\nc1,0,0.1\nc2,1,0.9\n", "missing column 'score'"),
    ("case_id,label,score\nc1,0,0.1\nc2,2,0.9\n", "label '2' is not 0 or 1"),
    ("case_id,label,score\nc1,0,0.1\nc2,1,1.5\n", "score '1.5'"),
    ("case_id,label,score\nc1,0,0.1\nc2,1,abc\n", "score 'abc'"),
    ("case_id,label,score\nc1,0,0.1\nc1,1,0.9\n", "duplicate case_id 'c1'"),
    ("case_id,label,score\nc1,1,0.1\nc2,1,0.9\n", "AUC undefined"),
    ("case_id,label,score\n", "no rows"),
]


@pytest.mark.parametrize(("content", "message"), BAD_INPUTS)
def test_bad_predictions_give_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    assert evaluate.main(["--predictions", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and str(bad) in err
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_bad_readers_and_disagreeing_labels(study: dict[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    readers = _write(tmp_path / "r.csv", ["case_id", "reader", "call"], [["case000", "A", 1], ["nope", "A", 0]])
    assert evaluate.main(["--predictions", str(study["a"]), "--readers", str(readers), "--out", str(tmp_path / "o")]) == 2
    assert "case_id 'nope' has no label" in capsys.readouterr().err
    readers = _write(tmp_path / "r.csv", ["case_id", "reader", "call"], [["case000", "A", "yes"]])
    assert evaluate.main(["--predictions", str(study["a"]), "--readers", str(readers), "--out", str(tmp_path / "o")]) == 2
    assert "call 'yes' is not 0 or 1" in capsys.readouterr().err
    ids, y, video, _ = _cases()
    flipped = _write(tmp_path / "flipped.csv", ["case_id", "label", "score"],
                     [[c, 1 - t, s] for c, t, s in zip(ids, y, video, strict=True)])
    assert evaluate.main(["--predictions", str(study["a"]), str(flipped), "--out", str(tmp_path / "o")]) == 2
    assert "case_id 'case000': label" in capsys.readouterr().err
    assert evaluate.main(["--predictions", str(study["a"]), "--threshold", "1.2", "--out", str(tmp_path / "o")]) == 2
    assert "--threshold '1.2'" in capsys.readouterr().err


# ------------------------------------------------------------------------------- bundle run + Grad-CAM
def _tiny_loop(path: Path, number: int, frames: int = 2) -> Path:
    """A minimal 2-frame 4x4 grey US multi-frame object whose InstanceNumber tells the stand-in predictor
    which loop it is."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"  # Ultrasound Multi-frame Image Storage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality, ds.InstanceNumber, ds.NumberOfFrames = "US", number, frames
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = bytes(16 * frames)
    ds.save_as(path, enforce_file_format=True)
    return path


def _loop_manifest(tmp_path: Path, n: int = 12) -> tuple[Path, np.ndarray]:
    """Loops (stand-in files), a manifest and masks/CASE.npz with a lesion box per frame; one mask missing."""
    root = tmp_path / "loops"
    (root / "masks").mkdir(parents=True)
    y = (np.arange(n) % 2).astype(int)
    rows = []
    for i in range(n):
        _tiny_loop(root / f"loop{i}.dcm", i)
        rows.append([f"loop{i}.dcm", y[i], f"P{i}", f"case{i}"])
        if i == n - 1:
            continue  # a case without a mask is left out, not an error
        mask = np.zeros((8, 32, 32), bool)
        if i != n - 2:  # case 10's mask is empty (nothing to point at): left out and counted
            mask[:, 10:20, 10:20] = True
        np.savez_compressed(root / "masks" / f"case{i}.npz", mask=mask)
    return _write(root / "manifest.csv", ["path", "label", "patient_id", "case_id"], rows), y


def _predict(bundle: Path, path: Path) -> Prediction:
    """Deterministic stand-in for workers.inference.predict: CAM peak in the lesion for even-numbered loops."""
    i = int(pydicom.dcmread(path, stop_before_pixels=True).InstanceNumber)
    cam = np.zeros((2, 32, 32), np.float32)
    cam[1, 15, 15 if i % 2 == 0 else 28] = 1.0
    return Prediction(sop_instance_uid=f"1.2.3.{i}", probability=0.2 + 0.05 * i,
                      clip_logits=np.zeros((1, 2), np.float32), frame_indices=np.arange(16)[None], key_frame=5,
                      cam=cam, cam_frames=(1, 5), crop=Box(0, 0, 32, 32),
                      model=ModelInfo("tin-demo", "tin", "0.1.0", "1.2.9", synthetic_only=True))


def test_bundle_run_writes_predictions_and_pointing_game(tmp_path: Path) -> None:
    manifest, y = _loop_manifest(tmp_path)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    out = tmp_path / "out"
    name, csv_path = evaluate.run_bundle(bundle, manifest, out, predict=_predict)
    assert name == "tin-demo" and csv_path == out / "predictions.csv"
    with csv_path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["key_frame"] for r in rows] == ["5"] * 12 and rows[3]["cam_peak_x"] == "28"
    model = evaluate.read_predictions(csv_path, name=name)
    result = evaluate.evaluate([model], {name: 0.5}, manifest=manifest)
    loc = result.metrics["localisation"]["tin-demo"]
    # 10 cases with a lesion mask; even loops 0,2,..,8 (5 cases) peak at (15,15) inside the box, odd ones
    # at x = 28 outside; case 10 has an empty mask, case 11 none
    assert (loc["n"], loc["hits"], loc["missing_masks"], loc["empty_masks"]) == (10, 5, 1, 1)
    assert loc["share"] == pytest.approx(5 / 10)
    assert any("1 case(s) without masks" in w for w in result.metrics["warnings"])


def test_predictions_with_cam_peaks_and_manifest_report_localisation(tmp_path: Path) -> None:
    manifest, _ = _loop_manifest(tmp_path)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    _, csv_path = evaluate.run_bundle(bundle, manifest, tmp_path / "run", predict=_predict)
    out = tmp_path / "out"
    assert evaluate.main(["--predictions", str(csv_path), "--manifest", str(manifest), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert math.isclose(metrics["localisation"]["predictions"]["share"], 5 / 10)
    assert "Pointing game" in (out / "report.md").read_text()
    # odd loops peak at (15, 28), 9 px right of the mask's last column (19): hits with a 9-px tolerance
    assert evaluate.main(["--predictions", str(csv_path), "--manifest", str(manifest), "--out", str(out),
                          "--pointing-tolerance", "9", "--overwrite"]) == 0  # fmt: skip
    loc = json.loads((out / "metrics.json").read_text())["localisation"]["predictions"]
    assert (loc["tolerance_px"], loc["hits"], loc["share"], loc["hits_strict"], loc["share_strict"]) == (9, 10, 1.0, 5, 0.5)


def test_negative_pointing_tolerance_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv_path = _write(tmp_path / "p.csv", ["case_id", "label", "score"], [["a", 1, 0.9], ["b", 0, 0.2]])
    assert evaluate.main(["--predictions", str(csv_path), "--out", str(tmp_path / "o"), "--pointing-tolerance", "-2"]) == 2
    assert "--pointing-tolerance -2.0: must be >= 0 pixels" in capsys.readouterr().err


def test_manifest_static_frame_is_read_and_bad_values_named(tmp_path: Path) -> None:
    for i, name in enumerate(("a.dcm", "b.dcm")):
        _tiny_loop(tmp_path / name, i, frames=8)
    good = _write(tmp_path / "m.csv", ["path", "label", "patient_id", "static_frame"], [["a.dcm", 1, "p1", 7], ["b.dcm", 0, "p2", ""]])
    assert [r.static_frame for r in evaluate.read_manifest(good)] == [7, None]
    bad = _write(tmp_path / "bad.csv", ["path", "label", "patient_id", "static_frame"], [["a.dcm", 1, "p1", "-3"]])
    with pytest.raises(evaluate.EvaluationError, match=r"bad.csv line 2: static_frame '-3' is not a frame index"):
        evaluate.read_manifest(bad)


def test_bundle_missing_manifest_is_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate.main(["--bundle", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "--bundle needs --manifest" in capsys.readouterr().err


def test_tiny_sample_gives_nulls_and_warnings_not_a_crash(tmp_path: Path) -> None:
    a = _write(tmp_path / "one.csv", ["case_id", "label", "score"], [["a", 1, 0.9], ["b", 0, 0.2], ["c", 0, 0.5]])
    b = _write(tmp_path / "two.csv", ["case_id", "label", "score"], [["a", 1, 0.3], ["b", 0, 0.2], ["c", 0, 0.7]])
    out = tmp_path / "o"
    assert evaluate.main(["--predictions", str(a), str(b), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["models"]["one"]["auc"] == 1.0 and metrics["models"]["one"]["auc_ci_low"] is None
    (comp,) = metrics["comparisons"]
    assert comp["p_value"] is None and comp["method"] == "not tested"
    assert any("DeLong test needs 2 cases of each class" in w for w in metrics["warnings"])
