"""After training: the statistics the node's input gate and calibrated probability need (``alnnode train``).

Per fold, the fold's final model scores its *training* loops (class-conditional Gaussians of the penultimate
features, :mod:`workers.ood`) and its *held-out* loops (the OOD threshold, and the out-of-fold logits that
temperature scaling and the operating point are fitted on, :mod:`workers.calibration`). Loops are seen as
inference sees them (evenly spaced clips of the whole loop, centre crop), static baselines included, so the
statistics describe what the node will compute.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from workers.calibration import Calibration, fit_calibration
from workers.models import ClipClassifier
from workers.ood import OodStats, capture_features, clip_features, fit_ood
from workers.research.train_data import EvalClips, FrameCache, ManifestRow

logger = logging.getLogger(__name__)

_CHUNK = 8


@dataclass(frozen=True)
class LoopOutputs:
    """Per loop: its clips' logits (n_clips, 2) and penultimate features (n_clips, D)."""

    logits: list[np.ndarray]
    features: list[np.ndarray]


def loop_outputs(model: ClipClassifier, rows: list[ManifestRow], clips: EvalClips, device: torch.device) -> LoopOutputs:
    model.eval()
    logits, features = [], []
    with torch.no_grad():
        for row in rows:
            batch = clips(row)
            parts, sizes = [], []
            with capture_features(model) as captured:
                for chunk in batch.split(_CHUNK):
                    parts.append(model(chunk.to(device)).float().cpu())
                    sizes.append(len(chunk))
            logits.append(torch.cat(parts).numpy().astype(np.float64))
            features.append(clip_features(captured, sizes))
    return LoopOutputs(logits, features)


def fold_statistics(
    model: ClipClassifier, train_rows: list[ManifestRow], val_rows: list[ManifestRow], cache: FrameCache, *,
    frames: int, size: int, device: torch.device, percentile: float = 99.0,
) -> tuple[OodStats, LoopOutputs]:  # fmt: skip
    """OOD statistics of one fold's model, and its held-out outputs (for calibration on out-of-fold data)."""
    clips = EvalClips(cache, frames, size, static_image=False)
    train = loop_outputs(model, train_rows, clips, device)
    held_out = loop_outputs(model, val_rows, clips, device)
    stats = fit_ood(train.features, [r.label for r in train_rows], held_out.features, held_out.logits,
                    percentile=percentile)  # fmt: skip
    logger.info("OOD statistics: %d training loops, threshold %.2f (%gth percentile of %d held-out loops)",
                len(train_rows), stats.threshold, percentile, len(val_rows))  # fmt: skip
    return stats, held_out


def calibrate(oof_logits: list[np.ndarray], labels: list[int], *, method: str = "youden",
              target_sensitivity: float = 0.9) -> Calibration:  # fmt: skip
    cal = fit_calibration(oof_logits, labels, method=method, target_sensitivity=target_sensitivity)
    logger.info("calibration: T = %.3f (ECE %.3f -> %.3f), operating point %.3f (%s) on %d out-of-fold loops",
                cal.temperature, cal.ece_before, cal.ece_after, cal.threshold, cal.method, cal.n)  # fmt: skip
    return cal
