"""Inputs of the research tools: manifests, predictions CSVs and reader CSVs, checked row by row.

Every problem is an :class:`EvaluationError` with one line naming the file, the line and the bad value.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PREDICTION_COLUMNS = ["case_id", "label", "score", "key_frame", "cam_peak_y", "cam_peak_x", "patient_id", "path"]


class EvaluationError(ValueError):
    """Bad input to ``alnnode evaluate``; the message is one line naming the file and the bad value."""


@dataclass
class ModelScores:
    """One model's scores: ``labels[i]``/``scores[i]`` belong to the case whose ``index`` value is i."""

    name: str
    source: Path
    labels: np.ndarray  # int 0/1
    scores: np.ndarray  # float in [0, 1]
    index: dict[str, int]  # case_id -> row
    peaks: dict[str, tuple[int, tuple[int, int] | None]] = field(default_factory=dict)  # case -> key frame, peak
    patients: dict[str, str] = field(default_factory=dict)  # case -> patient_id (when the CSV has the column)
    folds: dict[str, int] = field(default_factory=dict)  # case -> cross-validation fold that held it out
    paths: dict[str, str] = field(default_factory=dict)  # case -> DICOM path (when the CSV has the column)

    def subset(self, case_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Labels and scores of ``case_ids`` in that order."""
        rows = np.array([self.index[c] for c in case_ids], dtype=int)
        return self.labels[rows], self.scores[rows]


@dataclass(frozen=True)
class ManifestRow:
    path: Path
    label: int
    patient_id: str
    case_id: str
    static_frame: int | None = None  # the loop's static image (0-based frame), e.g. the one the sonographer stored


# ------------------------------------------------------------------------------------------------ inputs
def _rows(path: Path, required: list[str]) -> list[dict[str, str]]:
    if not path.is_file():
        raise EvaluationError(f"{path}: no such file")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in required if c not in columns]
        if missing:
            raise EvaluationError(f"{path}: missing column {missing[0]!r} (has {', '.join(columns) or 'none'})")
        rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k is not None} for r in reader]
    if not rows:
        raise EvaluationError(f"{path}: no rows")
    return rows


def _binary(path: Path, line: int, column: str, value: str) -> int:
    try:
        v = float(value)
    except ValueError:
        v = math.nan
    if v not in (0.0, 1.0):
        raise EvaluationError(f"{path} line {line}: {column} {value!r} is not 0 or 1")
    return int(v)


def _case_ids(path: Path, ids: list[str]) -> dict[str, int]:
    index: dict[str, int] = {}
    for i, case_id in enumerate(ids):
        if not case_id:
            raise EvaluationError(f"{path} line {i + 2}: empty case_id")
        if case_id in index:
            raise EvaluationError(f"{path} line {i + 2}: duplicate case_id {case_id!r}")
        index[case_id] = i
    return index


def read_predictions(path: Path, name: str | None = None) -> ModelScores:
    """Read and check ``case_id,label,score[,key_frame,cam_peak_y,cam_peak_x]``; name defaults to the stem."""
    rows = _rows(path, ["case_id", "label", "score"])
    labels, scores = [], []
    for line, r in enumerate(rows, 2):
        labels.append(_binary(path, line, "label", r["label"]))
        try:
            s = float(r["score"])
        except ValueError:
            s = math.nan
        if not 0.0 <= s <= 1.0:
            raise EvaluationError(f"{path} line {line}: score {r['score']!r} is not a probability in [0, 1]")
        scores.append(s)
    index = _case_ids(path, [r["case_id"] for r in rows])
    y = np.array(labels, dtype=int)
    if y.min() == y.max():
        raise EvaluationError(f"{path}: every label is {y[0]}; AUC undefined without both classes")
    peaks: dict[str, tuple[int, tuple[int, int] | None]] = {}
    for r in rows:
        if r.get("key_frame", "") != "":
            try:
                kf = int(r["key_frame"])
                yx = (int(r["cam_peak_y"]), int(r["cam_peak_x"])) if r.get("cam_peak_y") else None
            except ValueError:
                raise EvaluationError(f"{path}: case {r['case_id']!r}: key_frame/cam_peak not integers") from None
            peaks[r["case_id"]] = (kf, yx)
    patients = {r["case_id"]: r["patient_id"] for r in rows if r.get("patient_id")}
    if patients and len(patients) != len(rows):
        raise EvaluationError(f"{path}: patient_id is empty on some rows; give it for every case or for none")
    folds: dict[str, int] = {}
    for line, r in enumerate(rows, 2):
        if r.get("fold", "") != "":
            if not r["fold"].isdigit():
                raise EvaluationError(f"{path} line {line}: fold {r['fold']!r} is not a fold number")
            folds[r["case_id"]] = int(r["fold"])
    paths = {r["case_id"]: r["path"] for r in rows if r.get("path")}
    return ModelScores(name or path.stem, path, y, np.array(scores, dtype=np.float64), index, peaks, patients,
                       folds, paths)


class ManifestError(EvaluationError):
    """Every bad row of a manifest, one line each (``str()`` joins them with newlines)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        shown = problems[:MAX_PROBLEMS] + ([f"... and {len(problems) - MAX_PROBLEMS} more bad rows"]
                                           if len(problems) > MAX_PROBLEMS else [])  # fmt: skip
        super().__init__("\n".join(shown))


MAX_PROBLEMS = 50
_MIN_LOOP_FRAMES = 2  # a cine loop has frames to sample clips from (PS3.3 C.7.6.6 Multi-frame module)


def _loop_problem(p: Path) -> tuple[str | None, int | None]:
    """Why ``p`` is not a cine loop (not DICOM, no pixel data, a single frame), or None; and its frames."""
    import pydicom

    try:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError) as exc:
        return f"not a DICOM file ({type(exc).__name__})", None
    if "Rows" not in ds or "Columns" not in ds:
        return f"DICOM without an image (SOP class {ds.get('SOPClassUID', 'unknown')})", None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames < _MIN_LOOP_FRAMES:
        modality = str(ds.get("Modality", "?"))
        return f"not a multi-frame cine loop ({modality} image with NumberOfFrames {frames})", frames
    return None, frames


def read_manifest(path: Path, *, check_files: bool = True) -> list[ManifestRow]:
    """Read and check ``path,label,patient_id[,case_id][,static_frame]``; relative paths are taken from the
    manifest's folder. ``static_frame`` (0-based, may be empty) names the loop's static image for the static
    baselines.

    Every row is checked before anything runs: file present, a DICOM multi-frame image (header only, with
    ``check_files``), label 0/1, one label per patient, a unique case id, a static frame inside the loop.
    All problems are raised together as a :class:`ManifestError`, one line per bad row.
    """
    rows = _rows(path, ["path", "label", "patient_id"])
    out: list[ManifestRow] = []
    problems: list[str] = []
    patient_label: dict[str, tuple[int, int]] = {}  # patient -> (label, first line)
    case_line: dict[str, int] = {}
    for line, r in enumerate(rows, 2):
        where = f"{path} line {line}"
        p = Path(r["path"])
        p = p if p.is_absolute() else path.parent / p
        bad: list[str] = []
        frames: int | None = None
        if not r["path"]:
            bad.append("empty path")
        elif not p.is_file():
            bad.append(f"file {r['path']!r} not found")
        elif check_files:
            why, frames = _loop_problem(p)
            if why:
                bad.append(f"{r['path']!r} is {why}")
        try:
            label: int | None = _binary(path, line, "label", r["label"])
        except EvaluationError:
            label = None
            bad.append(f"label {r['label']!r} is not 0 or 1")
        if not r["patient_id"]:
            bad.append("empty patient_id")
        elif label is not None:
            first = patient_label.setdefault(r["patient_id"], (label, line))
            if first[0] != label:
                bad.append(f"label {label} for patient {r['patient_id']!r} disagrees with label {first[0]} "
                           f"on line {first[1]}")  # fmt: skip
        case_id = r.get("case_id") or p.stem
        if case_id in case_line:
            bad.append(f"duplicate case_id {case_id!r} (line {case_line[case_id]})")
        case_line.setdefault(case_id, line)
        static = (r.get("static_frame") or "").strip()
        if static and not (static.isdigit() and static.isascii()):
            bad.append(f"static_frame {static!r} is not a frame index (integer >= 0)")
        elif static and frames is not None and int(static) >= frames:
            bad.append(f"static_frame {static} is not a frame of this {frames}-frame loop")
        if bad:
            problems.append(f"{where}: {'; '.join(bad)}")
            continue
        assert label is not None
        out.append(ManifestRow(p, label, r["patient_id"], case_id, int(static) if static else None))
    if problems:
        raise ManifestError(problems)
    return out


def read_readers(path: Path, truth: dict[str, int]) -> dict[str, dict[str, tuple[int, int]]]:
    """Read ``case_id,reader,call`` into reader -> case -> (truth, call); truth from the models' labels."""
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for line, r in enumerate(_rows(path, ["case_id", "reader", "call"]), 2):
        call = _binary(path, line, "call", r["call"])
        if not r["reader"]:
            raise EvaluationError(f"{path} line {line}: empty reader")
        if r["case_id"] not in truth:
            raise EvaluationError(f"{path} line {line}: case_id {r['case_id']!r} has no label in the predictions")
        cases = out.setdefault(r["reader"], {})
        if r["case_id"] in cases:
            raise EvaluationError(f"{path} line {line}: duplicate case_id {r['case_id']!r} for reader {r['reader']!r}")
        cases[r["case_id"]] = (truth[r["case_id"]], call)
    return out
