"""`alnnode evaluate`: AUCs with DeLong CIs, diagnostic metrics, model comparisons and a reader table.

Inputs are predictions CSVs (``case_id,label,score``; score = P(metastasis), a 0/1 score is a binary call)
or a bundle run over a manifest (``path,label,patient_id[,case_id]``), which writes ``predictions.csv``
first. Outputs ``metrics.json``, ``report.md``, ``report.html`` and the ROC/PR figures (the study's
Figures 5-6, Tables 2-3). The inputs are read and checked by :mod:`workers.research.inputs`, the metrics
assembled by :mod:`workers.research.metrics` from :mod:`workers.research.stats`, the documents written by
:mod:`workers.research.report`; this module runs a bundle over a manifest and is the CLI.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workers.errors import WorkerError
from workers.research import gate_report, stats
from workers.research.inputs import (  # noqa: F401  (re-exported: the public names of evaluate)
    PREDICTION_COLUMNS,
    EvaluationError,
    ManifestRow,
    ModelScores,
    read_manifest,
    read_predictions,
    read_readers,
)
from workers.research.metrics import (  # noqa: F401  (re-exported)
    compare_models,
    json_clean,
    localisation,
    model_metrics,
    reader_metrics,
)

logger = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """Everything the report needs: the JSON-ready metrics and the raw scores for the curves."""

    metrics: dict[str, Any]
    models: dict[str, ModelScores]
    readers: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)  # reader -> case -> (y, call)


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
    ood_rows: list[dict[str, Any]] = []
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
            ood_rows += [r for r in [gate_report.ood_row(row.case_id, row.label, pred)] if r is not None]
    gate_report.write_ood_scores(out_dir / "ood_scores.csv", ood_rows)  # the input gate's view of this set (#9)
    return name, target



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
    return Evaluation(json_clean(metrics), by_name, reader_cases)


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
    result.metrics["calibration"] = json_clean(gate_report.calibration_metrics(result.models, args.out))
    if args.bundle is not None and (args.out / "ood_scores.csv").is_file():
        with (args.out / "ood_scores.csv").open(newline="") as fh:
            result.metrics["ood"] = json_clean(gate_report.ood_summary(list(csv.DictReader(fh)), args.out))
    (args.out / "metrics.json").write_text(json.dumps(result.metrics, indent=2, allow_nan=False) + "\n")
    written = report.write_report(result, args.out)
    for name, row in result.metrics["models"].items():
        ci = "CI n/a" if row["auc_ci_low"] is None else f"{row['auc_ci_low']:.3f}-{row['auc_ci_high']:.3f}"
        ece = result.metrics["calibration"].get(name, {}).get("ece")
        print(f"{name}: AUC {row['auc']:.3f} ({ci}), n={row['n']}, threshold {row['threshold']:g}"
              + ("" if ece is None else f", ECE {ece:.3f}"))
    if result.metrics.get("ood"):
        o = result.metrics["ood"]
        print(f"OOD gate: {o['gated']}/{o['n']} loops over the bundle's threshold {o['threshold']:.2f} "
              f"(median score {o['quantiles']['median']:.2f})")
    print(f"wrote {args.out / 'metrics.json'} and {', '.join(p.name for p in written)}")
    return 0
