"""`alnnode evaluate`: AUCs with DeLong CIs, diagnostic metrics, model comparisons and a reader table.

Inputs are predictions CSVs (``case_id,label,score``; score = P(metastasis), a 0/1 score is a binary call)
or a bundle run over a manifest (``path,label,patient_id[,case_id]``), which writes ``predictions.csv``
first. Outputs ``metrics.json``, ``report.md``, ``report.html`` and the ROC/PR figures (the study's
Figures 5-6, Tables 2-3). Reading of the CSVs and the metric assembly live here; the numbers come from
:mod:`workers.research.stats`, the documents from :mod:`workers.research.report`.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workers.errors import WorkerError
from workers.research import stats

logger = logging.getLogger(__name__)

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


@dataclass
class Evaluation:
    """Everything the report needs: the JSON-ready metrics and the raw scores for the curves."""

    metrics: dict[str, Any]
    models: dict[str, ModelScores]
    readers: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)  # reader -> case -> (y, call)


def _clean(value: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, NaN/inf to None."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------------------------- bundle run
def _peak(cam: np.ndarray, cam_frames: tuple[int, ...], key_frame: int) -> tuple[int, int] | None:
    if key_frame not in cam_frames or cam.ndim != 3:
        return None
    return stats.cam_peak(np.asarray(cam[cam_frames.index(key_frame)]))


def run_bundle(
    bundle: Path, manifest: Path, out_dir: Path, predict: Callable[[Path, Path], Any] | None = None
) -> tuple[str, Path]:
    """Run ``workers.inference.predict(bundle, path)`` on every manifest row; write ``predictions.csv``.

    Returns the model name (from the predictions' ``model.name``, else the bundle folder) and the CSV path.
    """
    if predict is None:
        try:  # lazy: torch/monai are imported only when a bundle runs
            from workers.inference import predict as _predict
        except ImportError as exc:
            raise EvaluationError(f"--bundle needs the compute plane (pip install 'aln-node[worker]'): {exc}") from exc
        predict = _predict
    if not bundle.is_dir():
        raise EvaluationError(f"--bundle {bundle}: not a folder")
    rows = read_manifest(manifest)
    name = bundle.name
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "predictions.csv"
    with target.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=PREDICTION_COLUMNS)
        writer.writeheader()
        for i, row in enumerate(rows, 1):
            try:
                pred = predict(bundle, row.path)
            except (WorkerError, OSError, ValueError) as exc:  # name the loop that failed, stop the run
                raise EvaluationError(f"{row.path}: inference failed: {exc}") from exc
            name = getattr(getattr(pred, "model", None), "name", None) or name
            peak = _peak(np.asarray(pred.cam), tuple(pred.cam_frames), int(pred.key_frame))
            writer.writerow({
                "case_id": row.case_id, "label": row.label, "score": f"{float(pred.probability):.10g}",
                "key_frame": int(pred.key_frame), "cam_peak_y": "" if peak is None else peak[0],
                "cam_peak_x": "" if peak is None else peak[1], "patient_id": row.patient_id, "path": row.path,
            })
            logger.info("case %d/%d %s: P(metastasis)=%.3f", i, len(rows), row.case_id, pred.probability)
    return name, target


# ------------------------------------------------------------------------------------------------ metrics
def model_metrics(m: ModelScores, threshold: float) -> tuple[dict[str, Any], list[str]]:
    """Metrics of one model: AUC (DeLong CI) plus the thresholded 2x2 metrics."""
    est = stats.auc_delong(m.labels, m.scores)
    calls = m.scores >= threshold
    out, warnings = stats.binary_metrics(stats.Counts.from_calls(m.labels, calls), m.name)
    if min(est.n_pos, est.n_neg) < 2:
        warnings.append(f"{m.name}: AUC CI undefined with {est.n_pos} positive and {est.n_neg} negative cases")
    elif est.variance == 0.0:
        warnings.append(f"{m.name}: AUC {est.auc:g} separates the classes perfectly; its DeLong CI has zero width")
    out.update(auc=est.auc, auc_ci_low=est.ci_low, auc_ci_high=est.ci_high, auc_se=math.sqrt(est.variance),
               threshold=threshold, binary_scores=bool(np.isin(m.scores, (0.0, 1.0)).all()),
               n_pos=est.n_pos, n_neg=est.n_neg)
    return out, warnings


def compare_models(a: ModelScores, b: ModelScores, ta: float, tb: float) -> tuple[dict[str, Any], list[str]]:
    """DeLong test of AUC(a) - AUC(b): paired on shared case ids, unpaired otherwise; McNemar if paired."""
    warnings: list[str] = []
    shared = sorted(set(a.index) & set(b.index))
    ia = np.array([a.index[c] for c in shared], dtype=int)
    ib = np.array([b.index[c] for c in shared], dtype=int)
    labels = a.labels[ia]
    paired = bool(shared) and 0 < int(labels.sum()) < labels.size
    result: dict[str, Any] = {"a": a.name, "b": b.name, "paired": paired, "n_pairs": len(shared) if paired else 0}
    if paired:
        if len(shared) < max(len(a.index), len(b.index)):
            warnings.append(f"{a.name} vs {b.name}: paired on the {len(shared)} shared case ids "
                            f"of {len(a.index)} and {len(b.index)}")
        result["mcnemar"] = stats.mcnemar((a.scores[ia] >= ta) == labels, (b.scores[ib] >= tb) == labels).as_dict()
    elif shared:
        warnings.append(f"{a.name} vs {b.name}: the {len(shared)} shared cases hold one class only; "
                        "compared as independent samples")
    try:
        res = (stats.delong_paired(labels, a.scores[ia], b.scores[ib]) if paired
               else stats.delong_unpaired(a.labels, a.scores, b.labels, b.scores))
    except ValueError as exc:
        warnings.append(f"{a.name} vs {b.name}: no AUC test: {exc}")
        result.update(dict.fromkeys(("auc_a", "auc_b", "auc_diff", "z", "p_value", "ci_low", "ci_high", "df")),
                      n_a=len(a.index), n_b=len(b.index), method="not tested")
        return result, warnings
    result.update(auc_a=res.auc_a, auc_b=res.auc_b, auc_diff=res.auc_diff, z=res.statistic,
                  p_value=res.p_value, ci_low=res.ci_low, ci_high=res.ci_high, df=res.df,
                  n_a=res.n_a, n_b=res.n_b, method=res.method)
    return result, warnings


def reader_metrics(
    readers: dict[str, dict[str, tuple[int, int]]], models: dict[str, ModelScores], thresholds: dict[str, float]
) -> tuple[dict[str, Any], list[str]]:
    """The study's Table 3: per reader 2x2 metrics with CIs, and McNemar against each model's calls."""
    out: dict[str, Any] = {}
    warnings: list[str] = []
    for reader, cases in readers.items():
        ids = sorted(cases)
        y = np.array([cases[c][0] for c in ids], dtype=int)
        calls = np.array([cases[c][1] for c in ids], dtype=int)
        counts, warn = stats.binary_metrics(stats.Counts.from_calls(y, calls), reader)
        warnings += warn
        row: dict[str, Any] = {**counts, "mcnemar": {}}
        for name, m in models.items():
            shared = [c for c in ids if c in m.index]
            if not shared:
                warnings.append(f"reader {reader} and model {name} share no case; no McNemar test")
                continue
            yy = np.array([cases[c][0] for c in shared], dtype=int)
            rc = np.array([cases[c][1] for c in shared], dtype=int)
            mc = m.scores[[m.index[c] for c in shared]] >= thresholds[name]
            entry: dict[str, Any] = {"accuracy": stats.mcnemar(rc == yy, mc == yy).as_dict()}
            for metric, cls in (("sensitivity", 1), ("specificity", 0)):
                sel = yy == cls
                entry[metric] = stats.mcnemar(rc[sel] == cls, mc[sel] == cls).as_dict() if sel.any() else None
            row["mcnemar"][name] = entry
        out[reader] = row
    return out, warnings


def localisation(
    models: dict[str, ModelScores], manifest: Path | None, tolerance: float = 0.0
) -> tuple[dict[str, Any], list[str]]:
    """Pointing game per model from the CAM peaks in its predictions and ``masks/CASE.npz`` by the manifest:
    strict (``hits_strict``, ``share_strict``) and within ``tolerance`` pixels (``hits``, ``share``).

    Cases whose mask is empty in every frame (no lesion structure to point at) are left out and counted;
    a key frame whose own mask is empty while others are not counts as a miss.
    """
    if manifest is None or not (manifest.parent / "masks").is_dir():
        return {}, []
    mask_dir = manifest.parent / "masks"
    out: dict[str, Any] = {}
    warnings: list[str] = []
    for name, m in models.items():
        if not m.peaks:
            continue
        peaks: list[tuple[int, int] | None] = []
        masks: list[np.ndarray | None] = []
        missing = empty = 0
        for case_id, (key_frame, peak) in sorted(m.peaks.items()):
            path = mask_dir / f"{case_id}.npz"
            if not path.is_file():
                missing += 1
                continue
            with np.load(path) as npz:
                if "mask" not in npz:
                    warnings.append(f"{path}: no array 'mask'; case left out of the pointing game")
                    continue
                stack = np.asarray(npz["mask"], dtype=bool)
            if stack.ndim != 3 or not 0 <= key_frame < stack.shape[0]:
                warnings.append(f"{path}: mask shape {stack.shape} has no frame {key_frame}; case left out")
                continue
            if not stack.any():  # nothing to point at (e.g. a negative loop); a key frame off the lesion is a miss
                empty += 1
                continue
            peaks.append(peak)
            masks.append(stack[key_frame])
        if missing:
            warnings.append(f"{name}: {missing} case(s) without masks/CASE.npz left out of the pointing game")
        scored = sum(p is not None for p in peaks)
        share = stats.pointing_game(peaks, masks, tolerance) if scored else None
        strict = stats.pointing_game(peaks, masks) if scored else None
        out[name] = {"n": scored, "tolerance_px": tolerance, "hits": round(share * scored) if share is not None else 0,
                     "share": share, "hits_strict": round(strict * scored) if strict is not None else 0,
                     "share_strict": strict, "missing_masks": missing, "empty_masks": empty}  # fmt: skip
    return out, warnings


def evaluate(
    models: list[ModelScores], thresholds: dict[str, float], readers: Path | None = None,
    manifest: Path | None = None, pointing_tolerance: float = 0.0,
) -> Evaluation:
    """Compute every number of ``metrics.json``."""
    by_name: dict[str, ModelScores] = {}
    for m in models:
        if m.name in by_name:
            raise EvaluationError(f"two models named {m.name!r}: rename one predictions file")
        by_name[m.name] = m
    truth: dict[str, int] = {}
    for m in models:
        for case_id, i in m.index.items():
            y = int(m.labels[i])
            if truth.setdefault(case_id, y) != y:
                raise EvaluationError(f"case_id {case_id!r}: label {y} in {m.source} disagrees with another file")
    warnings: list[str] = []
    metrics: dict[str, Any] = {"models": {}, "comparisons": [], "readers": {}, "localisation": {}}
    for name, m in by_name.items():
        row, warn = model_metrics(m, thresholds[name])
        metrics["models"][name] = row
        warnings += warn
    names = list(by_name)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            comp, warn = compare_models(by_name[a], by_name[b], thresholds[a], thresholds[b])
            metrics["comparisons"].append(comp)
            warnings += warn
    reader_cases: dict[str, dict[str, tuple[int, int]]] = {}
    if readers is not None:
        reader_cases = read_readers(readers, truth)
        metrics["readers"], warn = reader_metrics(reader_cases, by_name, thresholds)
        warnings += warn
    metrics["localisation"], warn = localisation(by_name, manifest, pointing_tolerance)
    warnings += warn
    for w in warnings:
        logger.warning("%s", w)
    metrics["warnings"] = warnings
    return Evaluation(_clean(metrics), by_name, reader_cases)


# -------------------------------------------------------------------------------------------------- CLI
def _thresholds(values: list[str], names: list[str]) -> dict[str, float]:
    default = 0.5
    per_model: dict[str, float] = {}
    for v in values:
        key, _, num = v.rpartition("=")
        try:
            t = float(num)
        except ValueError:
            raise EvaluationError(f"--threshold {v!r}: not a number (use T or NAME=T)") from None
        if not 0.0 <= t <= 1.0:
            raise EvaluationError(f"--threshold {v!r}: {t} outside [0, 1]")
        if key:
            if key not in names:
                raise EvaluationError(f"--threshold {v!r}: no model named {key!r} (models: {', '.join(names)})")
            per_model[key] = t
        else:
            default = t
    return {n: per_model.get(n, default) for n in names}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alnnode evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, help="MONAI bundle folder to run over --manifest")
    p.add_argument("--manifest", type=Path, help="CSV path,label,patient_id[,case_id]; masks/ beside it")
    p.add_argument("--predictions", type=Path, nargs="+", default=[], help="CSV(s) case_id,label,score")
    p.add_argument("--readers", type=Path, help="CSV case_id,reader,call (call 0/1)")
    p.add_argument("--threshold", action="append", default=[], metavar="T|NAME=T",
                   help="call positive when score >= T (default 0.5); repeat NAME=T per model")
    p.add_argument("--pointing-tolerance", type=float, default=0.0, metavar="PX",
                   help="pointing game: a CAM peak within PX pixels of the mask is a hit (Zhang et al. use 15; "
                        "default 0, strict; the strict share is always reported too)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    return p


def main(argv: list[str]) -> int:
    """Entry point of ``alnnode evaluate``; returns 0, or 2 with a one-line error on bad input."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from workers.research import report

    try:
        if args.bundle is not None and args.manifest is None:
            raise EvaluationError("--bundle needs --manifest")
        if args.bundle is None and not args.predictions:
            raise EvaluationError("give --predictions CSV... or --bundle DIR --manifest CSV")
        args.out.mkdir(parents=True, exist_ok=True)
        models = []
        if args.bundle is not None:
            name, csv_path = run_bundle(args.bundle, args.manifest, args.out)
            models.append(read_predictions(csv_path, name=name))
        models += [read_predictions(p) for p in args.predictions]
        if not args.pointing_tolerance >= 0:
            raise EvaluationError(f"--pointing-tolerance {args.pointing_tolerance!r}: must be >= 0 pixels")
        thresholds = _thresholds(args.threshold, [m.name for m in models])
        result = evaluate(models, thresholds, args.readers, args.manifest, args.pointing_tolerance)
    except EvaluationError as exc:
        print(f"alnnode evaluate: error: {exc}", file=sys.stderr)
        return 2
    (args.out / "metrics.json").write_text(json.dumps(result.metrics, indent=2, allow_nan=False) + "\n")
    written = report.write_report(result, args.out)
    for name, row in result.metrics["models"].items():
        ci = "CI n/a" if row["auc_ci_low"] is None else f"{row['auc_ci_low']:.3f}-{row['auc_ci_high']:.3f}"
        print(f"{name}: AUC {row['auc']:.3f} ({ci}), n={row['n']}, threshold {row['threshold']:g}")
    print(f"wrote {args.out / 'metrics.json'} and {', '.join(p.name for p in written)}")
    return 0
