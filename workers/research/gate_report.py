"""``alnnode evaluate`` additions: calibration (reliability diagram, ECE) and the OOD score distribution.

- Every model's scores get a reliability diagram (``reliability_<model>.png``) and the expected calibration
  error (:func:`workers.calibration.expected_calibration_error`, 10 equal-width bins) in ``metrics.json``.
- With ``--bundle``, the out-of-distribution score of every loop is written to ``ood_scores.csv``; the report
  gives its distribution against the bundle's threshold (how many loops of this test set the node's input
  gate would refuse) and ``ood_scores.png``.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from workers.calibration import expected_calibration_error, reliability_diagram
from workers.research.inputs import ModelScores

OOD_COLUMNS = ["case_id", "label", "ood_score", "ood_threshold", "energy_score", "energy_threshold"]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "model"


def calibration_metrics(models: dict[str, ModelScores], out: Path, bins: int = 10) -> dict[str, Any]:
    """Per model: ECE and the reliability diagram file (binary 0/1 calls are skipped: nothing to calibrate)."""
    result: dict[str, Any] = {}
    for name, m in models.items():
        scores = np.asarray(m.scores, dtype=np.float64)
        if np.isin(scores, (0.0, 1.0)).all():
            continue
        path = reliability_diagram(m.labels, scores, out / f"reliability_{_slug(name)}.png", bins=bins,
                                   title=f"{name}: reliability")  # fmt: skip
        result[name] = {"ece": expected_calibration_error(m.labels, scores, bins), "bins": bins,
                        "reliability_diagram": path.name}  # fmt: skip
    return result


def ood_row(case_id: str, label: int, prediction: Any) -> dict[str, Any] | None:
    """One ``ood_scores.csv`` row from a :class:`workers.prediction.Prediction` (None without OOD statistics)."""
    if getattr(prediction, "ood_score", None) is None:
        return None
    return {"case_id": case_id, "label": label, "ood_score": f"{prediction.ood_score:.6g}",
            "ood_threshold": f"{prediction.ood_threshold:.6g}", "energy_score": f"{prediction.energy_score:.6g}",
            "energy_threshold": f"{prediction.energy_threshold:.6g}"}  # fmt: skip


def write_ood_scores(path: Path, rows: list[dict[str, Any]]) -> Path | None:
    if not rows:
        return None
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=OOD_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def ood_summary(rows: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """Quantiles of the loops' OOD scores, the threshold and how many loops are over it; ``ood_scores.png``."""
    if not rows:
        return {}
    scores = np.array([float(r["ood_score"]) for r in rows])
    threshold = float(rows[0]["ood_threshold"])
    q = np.percentile(scores, [0, 25, 50, 75, 95, 100])
    summary = {"n": len(scores), "threshold": threshold, "gated": int((scores > threshold).sum()),
               "gated_fraction": float((scores > threshold).mean()),
               "quantiles": dict(zip(["min", "q25", "median", "q75", "q95", "max"], map(float, q), strict=True)),
               "figure": _histogram(scores, threshold, out / "ood_scores.png").name}  # fmt: skip
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}


def _histogram(scores: np.ndarray, threshold: float, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(scores, bins=min(30, max(5, len(scores) // 2)), color="tab:blue", alpha=0.8)
    ax.axvline(threshold, color="tab:red", ls="--", label=f"gate threshold {threshold:.1f}")
    ax.set_xlabel("OOD score (Mahalanobis distance of the model features)")
    ax.set_ylabel("loops")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
