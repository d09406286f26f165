"""Running bundles for ``alnnode evaluate``: a bundle over a manifest (predictions, CAM peaks and Grad-CAM
PNGs), and each fold bundle of a ``train`` run over the loops it held out (the cross-validated pointing game)."""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from workers.errors import WorkerError
from workers.research import gate_report, stats
from workers.research.inputs import PREDICTION_COLUMNS, EvaluationError, ModelScores, read_manifest
from workers.research.progress import progress

logger = logging.getLogger(__name__)

Predict = Callable[[Path, Path], Any]


def _predictor(predict: Predict | None) -> Predict:
    if predict is not None:
        return predict
    try:  # lazy: torch/monai are imported only when a bundle runs
        from workers.inference import predict as _predict
    except ImportError as exc:
        raise EvaluationError(f"--bundle needs the compute plane (pip install 'aln-node[worker]'): {exc}") from exc
    return _predict


def cam_peak_of(pred: Any) -> tuple[int, int] | None:
    """CAM peak (row, col) at the prediction's key frame, or None without a CAM there."""
    cam, cam_frames, key_frame = np.asarray(pred.cam), tuple(pred.cam_frames), int(pred.key_frame)
    if key_frame not in cam_frames or cam.ndim != 3:
        return None
    return stats.cam_peak(np.asarray(cam[cam_frames.index(key_frame)]))


def run_bundle(
    bundle: Path, manifest: Path, out_dir: Path, predict: Predict | None = None, cam_dir: Path | None = None
) -> tuple[str, Path]:
    """Run ``workers.inference.predict(bundle, path)`` on every manifest row; write ``predictions.csv`` and,
    with ``cam_dir``, one Grad-CAM PNG per loop there (:mod:`workers.research.cam_images`).

    Returns the model name (from the predictions' ``model.name``, else the bundle folder) and the CSV path.
    """
    predict = _predictor(predict)
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
        for row in progress(rows, f"{bundle.name} over {manifest.name}"):
            try:
                pred = predict(bundle, row.path)
            except (WorkerError, OSError, ValueError) as exc:  # name the loop that failed, stop the run
                raise EvaluationError(f"{row.path}: inference failed: {exc}") from exc
            name = getattr(getattr(pred, "model", None), "name", None) or name
            peak = cam_peak_of(pred)
            writer.writerow({
                "case_id": row.case_id, "label": row.label, "score": f"{float(pred.probability):.10g}",
                "key_frame": int(pred.key_frame), "cam_peak_y": "" if peak is None else peak[0],
                "cam_peak_x": "" if peak is None else peak[1], "patient_id": row.patient_id, "path": row.path,
            })  # fmt: skip
            if cam_dir is not None and getattr(pred, "cam", None) is not None:
                from workers.research.cam_images import write_cam_png

                write_cam_png(cam_dir, row.case_id, row.path, pred)
            logger.debug("case %s: P(metastasis)=%.3f", row.case_id, pred.probability)
            ood_rows += [r for r in [gate_report.ood_row(row.case_id, row.label, pred)] if r is not None]
    gate_report.write_ood_scores(out_dir / "ood_scores.csv", ood_rows)  # the input gate's view of this set (#9)
    return name, target


def fold_cams(m: ModelScores, predict: Predict | None = None, positives_only: bool = True) -> int:
    """Fill ``m.peaks`` from the fold bundles of the ``train`` run that wrote ``m.source``
    (``RUN/fold{k}/bundle``): each loop is explained by the fold model that held it out, so the pointing game
    is cross-validated like the AUC. Negatives are skipped by default (no lesion feature to point at).
    Returns the number of loops explained."""
    predict = _predictor(predict)
    run = m.source.parent
    todo = [c for c in m.index if c in m.folds and (not positives_only or m.labels[m.index[c]] == 1)]
    if not todo:
        raise EvaluationError(f"--fold-cams: {m.source} has no fold column (not an oof_predictions.csv of alnnode train)")
    missing = sorted({m.folds[c] for c in todo if not (run / f"fold{m.folds[c]}" / "bundle").is_dir()})
    if missing:
        raise EvaluationError(f"--fold-cams: {run} has no fold{missing[0]}/bundle for the loops of fold {missing[0]}")
    for case in progress(sorted(todo, key=lambda c: m.folds[c]), f"{m.name} fold Grad-CAMs"):
        path = Path(m.paths.get(case, ""))
        if not path.is_file():
            raise EvaluationError(f"--fold-cams: {m.source}: case {case!r} has no readable path column ({path})")
        try:
            pred = predict(run / f"fold{m.folds[case]}" / "bundle", path)
        except (WorkerError, OSError, ValueError) as exc:
            raise EvaluationError(f"{path}: inference failed: {exc}") from exc
        m.peaks[case] = (int(pred.key_frame), cam_peak_of(pred))
    return len(todo)
