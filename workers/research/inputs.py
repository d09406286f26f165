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
    return ModelScores(name or path.stem, path, y, np.array(scores, dtype=np.float64), index, peaks)


def read_manifest(path: Path) -> list[ManifestRow]:
    """Read ``path,label,patient_id[,case_id][,static_frame]``; relative paths are taken from the manifest's
    folder. ``static_frame`` (0-based, may be empty) names the loop's static image for the static baselines."""
    rows = _rows(path, ["path", "label", "patient_id"])
    out = []
    for line, r in enumerate(rows, 2):
        p = Path(r["path"])
        p = p if p.is_absolute() else path.parent / p
        if not p.is_file():
            raise EvaluationError(f"{path} line {line}: file {r['path']!r} not found")
        static = (r.get("static_frame") or "").strip()
        if static and not (static.isdigit() and static.isascii()):
            raise EvaluationError(f"{path} line {line}: static_frame {static!r} is not a frame index (integer >= 0)")
        out.append(ManifestRow(p, _binary(path, line, "label", r["label"]), r["patient_id"],
                               r.get("case_id") or p.stem, int(static) if static else None))
    _case_ids(path, [r.case_id for r in out])
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
