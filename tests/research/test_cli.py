"""Command lines of the research tools: lists and repeats are kept, NAME=PATH names inputs, a conflicting
repeat is an error naming both values, defaults show in --help, bad manifests give one line per bad row."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from workers.cli_args import merge_options
from workers.research import evaluate, train
from workers.research.phantom import generate

REPO = Path(__file__).resolve().parents[2]


def _predictions(path: Path, seed: int, n: int = 30) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case_id", "label", "score"])
        for i in range(n):
            w.writerow([f"c{i}", i % 2, f"{float(np.clip(rng.normal(0.3 + 0.4 * (i % 2), 0.2), 0, 1)):.4f}"])
    return path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_repeated_and_listed_predictions_are_all_evaluated(tmp_path: Path) -> None:
    a, b, c = (_predictions(tmp_path / f"{n}.csv", i) for i, n in enumerate("abc"))
    assert evaluate.main(["--predictions", str(a), "--predictions", str(b), str(c), "--out", str(tmp_path / "o")]) == 0
    assert set(json.loads((tmp_path / "o" / "metrics.json").read_text())["models"]) == {"a", "b", "c"}


def test_name_equals_path_and_alike_stems_named_by_folder(tmp_path: Path) -> None:
    tin = _predictions(tmp_path / "runs" / "tin" / "oof_predictions.csv", 1)
    r50 = _predictions(tmp_path / "runs" / "r50" / "oof_predictions.csv", 2)
    assert evaluate.main(["--predictions", str(tin), str(r50), "--out", str(tmp_path / "o1")]) == 0
    assert set(json.loads((tmp_path / "o1" / "metrics.json").read_text())["models"]) == {"tin", "r50"}
    assert evaluate.main(["--predictions", f"video={tin}", f"static={r50}", "--threshold", "video=0.4",
                          "--out", str(tmp_path / "o2")]) == 0  # fmt: skip
    models = json.loads((tmp_path / "o2" / "metrics.json").read_text())["models"]
    assert (models["video"]["threshold"], models["static"]["threshold"]) == (0.4, 0.5)


def test_two_inputs_with_one_name_are_an_error_naming_both(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = _predictions(tmp_path / "a.csv", 1), _predictions(tmp_path / "b.csv", 2)
    assert evaluate.main(["--predictions", f"m={a}", f"m={b}", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "two inputs named 'm'" in err and str(a) in err and str(b) in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["--threshold", "0.3", "--threshold", "0.4"], "--threshold given twice for all models: '0.3' and '0.4'"),
    (["--threshold", "a=0.3", "a=0.6"], "--threshold given twice for a: 'a=0.3' and 'a=0.6'"),
    (["--bundle", "x", "--bundle", "y", "--manifest", "m.csv"], "argument --bundle: given twice with different values 'x' and 'y'"),
    (["--unit", "loop", "--unit", "patient"], "argument --unit: given twice with different values 'loop' and 'patient'"),
])  # fmt: skip
def test_conflicting_repeat_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                                message: str) -> None:  # fmt: skip
    a = _predictions(tmp_path / "a.csv", 1)
    try:
        rc = evaluate.main(["--predictions", str(a), *argv, "--out", str(tmp_path / "o")])
    except SystemExit as exc:  # argparse-level errors exit 2 themselves
        rc = int(exc.code or 0)
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_same_value_repeated_is_fine_and_options_extend(tmp_path: Path) -> None:
    args = train.build_parser().parse_args(["--manifest", "m.csv", "--arch", "tin", "--out", "o", "--epochs", "3",
                                            "--epochs", "3", "--options", "depth=18", "--options", "cam_layer=layer3"])  # fmt: skip
    assert args.epochs == 3 and merge_options(args.options) == {"depth": 18, "cam_layer": "layer3"}
    with pytest.raises(ValueError, match="--options: depth given twice with different values 18 and 50"):
        merge_options(train.build_parser().parse_args(["--manifest", "m", "--arch", "tin", "--out", "o",
                                                       "--options", "depth=18", "depth=50"]).options)  # fmt: skip


def test_help_shows_defaults_and_errors_are_one_line() -> None:
    helped = _cli("train", "--help")
    assert helped.returncode == 0 and "(default: 300)" in helped.stdout and "(default: 0.0001)" in helped.stdout
    assert "(default: patient)" in _cli("evaluate", "--help").stdout
    bad = _cli("train", "--manifest", "m.csv", "--arch", "tin", "--out", "o", "--epochs", "2", "--epochs", "5")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "Traceback" not in bad.stderr
    assert "--epochs: given twice with different values 2 and 5" in bad.stderr


def test_out_folder_is_refused_unless_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _predictions(tmp_path / "a.csv", 1)
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert evaluate.main(["--predictions", str(a), "--out", str(out)]) == 2
    assert "folder is not empty; give --overwrite" in capsys.readouterr().err
    assert evaluate.main(["--predictions", str(a), "--out", str(out), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "metrics.json").is_file()
    rc = train.main(["--manifest", str(a), "--arch", "tin", "--out", str(out), "--epochs", "1"])
    assert rc == 2 and "--overwrite to replace its results or --resume to continue it" in capsys.readouterr().err


def test_manifest_with_five_kinds_of_bad_rows_gives_five_lines_and_trains_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = generate(tmp_path / "ph", 4, seed=8, frames=6, size=(64, 96), syntax="explicit")
    (tmp_path / "notes.dcm").write_text("not DICOM at all")
    single = pydicom.dcmread(cases[0].path)
    single.NumberOfFrames = 1
    single.PixelData = single.PixelData[: len(single.PixelData) // 6]
    single.SOPInstanceUID = pydicom.uid.generate_uid()
    single.save_as(tmp_path / "ct_slice.dcm")
    good = [[str(c.path), c.label, c.patient_id] for c in cases]
    rows = [*good,
            [str(tmp_path / "missing.dcm"), 1, "X1"],  # missing file
            [str(tmp_path / "notes.dcm"), 0, "X2"],  # not DICOM
            [str(tmp_path / "ct_slice.dcm"), 0, "X3"],  # not multi-frame
            [str(cases[1].path), "maybe", "X4"],  # bad label
            [str(cases[2].path), 1 - cases[0].label, cases[0].patient_id]]  # disagrees with the patient's label
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        csv.writer(fh).writerows([["path", "label", "patient_id", "case_id"],
                                  *[[*r, f"k{i}"] for i, r in enumerate(rows)]])  # fmt: skip
    out = tmp_path / "run"
    assert train.main(["--manifest", str(manifest), "--arch", "tin", "--out", str(out), "--epochs", "1"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 5, lines
    for line, (row, what) in zip(lines, [(6, "not found"), (7, "is not a DICOM file"), (8, "not a multi-frame cine loop"),
                                         (9, "label 'maybe' is not 0 or 1"), (10, "disagrees with label")], strict=True):  # fmt: skip
        assert line.startswith("alnnode train: error: ") and f"line {row}: " in line and what in line
    assert not out.exists() or not any(out.iterdir())
