"""Out-of-distribution score of a loop: is it like the loops the model was trained on?

A classifier gives a confident number for anything, a cardiac echo included. Before a probability is
reported, the loop's penultimate features (the input of the classification layer, averaged over the frames
of a clip as the TSN consensus does with the scores) are compared with those of the training loops:

- **Mahalanobis score** (Lee et al., "A Simple Unified Framework for Detecting Out-of-Distribution Samples
  and Adversarial Attacks", NeurIPS 2018): class-conditional Gaussians with a shared covariance; the score of a
  clip is its distance to the closest class mean, ``min_c sqrt((f - mu_c)^T S^-1 (f - mu_c))``, and a loop's
  score is the mean over its clips. With a few hundred training clips and 512-2048 features the covariance
  is estimated with Ledoit-Wolf shrinkage (scikit-learn), which keeps it invertible.
- **Energy score** (Liu et al., "Energy-based Out-of-distribution Detection", NeurIPS 2020):
  ``-logsumexp(logits)``, mean over clips; reported alongside. It is not used alone to gate: a confidently
  wrong prediction (the echo at 99.8 %) has a *low* energy, which is exactly what the feature distance catches.

The thresholds are a percentile (default 99th) of the scores of held-out training loops, so about 1 % of
in-distribution loops are expected to be gated. The statistics are stored in the bundle
(``models/ood_stats.npz`` + ``metadata.json`` ``ood``) and covered by its model UID.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from torch import nn

OOD_FILE = "models/ood_stats.npz"
METHOD = "mahalanobis-tied-ledoit-wolf"


@dataclass(frozen=True)
class OodStats:
    """In-distribution statistics of the penultimate features, with the gate's thresholds."""

    means: np.ndarray  # (n_classes, D) float64
    precision: np.ndarray  # (D, D) float64, inverse of the shared (shrunk) covariance
    threshold: float  # on the loop Mahalanobis score
    energy_threshold: float  # on the loop energy score (reported, not gating)
    percentile: float
    n_fit: int  # training loops the Gaussians were fitted on
    n_threshold: int  # held-out loops the thresholds were set on

    def metadata(self) -> dict[str, Any]:
        """The scalar part, for ``metadata.json`` ``ood`` (the arrays go to :data:`OOD_FILE`)."""
        return {"method": METHOD, "file": OOD_FILE, "feature_dim": int(self.means.shape[1]),
                "threshold": self.threshold, "energy_threshold": self.energy_threshold,
                "percentile": self.percentile, "n_fit": self.n_fit, "n_threshold": self.n_threshold}  # fmt: skip

    def arrays(self) -> dict[str, np.ndarray]:
        return {"means": self.means.astype(np.float64), "precision": self.precision.astype(np.float64)}

    def save(self, bundle_root: Path) -> Path:
        path = Path(bundle_root) / OOD_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as fh:
            np.savez(fh, means=self.means.astype(np.float64), precision=self.precision.astype(np.float64))
        return path

    @classmethod
    def load(cls, bundle_root: Path, meta: dict[str, Any]) -> OodStats:
        """Read the arrays and the ``ood`` metadata back; ``ValueError`` names what is wrong."""
        path = Path(bundle_root) / str(meta.get("file", OOD_FILE))
        try:
            with np.load(path, allow_pickle=False) as data:
                means, precision = np.asarray(data["means"]), np.asarray(data["precision"])
            stats = cls(means, precision, float(meta["threshold"]), float(meta["energy_threshold"]),
                        float(meta["percentile"]), int(meta["n_fit"]), int(meta["n_threshold"]))  # fmt: skip
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"ood: cannot read {path.name} / metadata ood ({exc!r})") from exc
        d = means.shape[1] if means.ndim == 2 else -1
        if precision.shape != (d, d):
            raise ValueError(f"ood: precision shape {precision.shape} does not fit means {means.shape}")
        return stats


def head_of(model: nn.Module) -> nn.Linear:
    """The classification layer: the last ``nn.Linear`` (TIN ``fc``, torchvision ``fc`` / ``classifier.6``)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no linear classification layer")
    return linears[-1]


@contextlib.contextmanager
def capture_features(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the head's input per forward call (on the CPU, float32); time-folded rows stay as they are."""
    captured: list[torch.Tensor] = []
    hook = head_of(model).register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach().float().cpu()))
    try:
        yield captured
    finally:
        hook.remove()


def clip_features(captured: Sequence[torch.Tensor], n_clips: Sequence[int]) -> np.ndarray:
    """(sum n_clips, D): one feature vector per clip, the mean over a clip's frame rows (TSN consensus)."""
    parts = []
    for feats, n in zip(captured, n_clips, strict=True):
        parts.append(feats.view(n, -1, feats.shape[-1]).mean(dim=1))
    return torch.cat(parts).numpy().astype(np.float64)


def mahalanobis(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Per row: the distance to the closest class mean under the shared precision matrix."""
    diff = features[:, None, :] - means[None, :, :]  # (N, C, D)
    d2 = np.einsum("ncd,de,nce->nc", diff, precision, diff)
    return np.sqrt(np.maximum(d2.min(axis=1), 0.0))


def energy(logits: np.ndarray) -> np.ndarray:
    """-logsumexp over classes, per row (higher = less like the training data)."""
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(axis=1, keepdims=True)
    return -(m[:, 0] + np.log(np.exp(x - m).sum(axis=1)))


@dataclass(frozen=True)
class OodScore:
    """A loop's scores against a bundle's thresholds."""

    score: float
    threshold: float
    energy: float
    energy_threshold: float

    @property
    def out_of_distribution(self) -> bool:
        return not self.score <= self.threshold  # NaN counts as out

    def reason(self) -> str:
        return (f"out of distribution (OOD score {self.score:.1f} > threshold {self.threshold:.1f}, "
                f"Mahalanobis distance of the model's features to its training loops)")  # fmt: skip


def score_loop(stats: OodStats, features: np.ndarray, logits: np.ndarray) -> OodScore:
    """Mean over the loop's clips of the Mahalanobis and energy scores."""
    d = float(mahalanobis(np.asarray(features, dtype=np.float64), stats.means, stats.precision).mean())
    e = float(energy(logits).mean())
    return OodScore(d, stats.threshold, e, stats.energy_threshold)


def fit_ood(
    train_features: Sequence[np.ndarray], train_labels: Sequence[int], held_out_features: Sequence[np.ndarray],
    held_out_logits: Sequence[np.ndarray], *, percentile: float = 99.0,
) -> OodStats:  # fmt: skip
    """Fit the Gaussians on the training loops' clip features, the thresholds on the held-out loops.

    Each ``*_features`` item is one loop's (n_clips, D) array; ``held_out_logits`` the matching (n_clips, 2).
    """
    if not 50.0 <= percentile <= 100.0:
        raise ValueError(f"ood percentile {percentile} is not in [50, 100]")
    if not train_features or not held_out_features:
        raise ValueError("ood: needs training and held-out loops")
    feats = np.concatenate([np.asarray(f, dtype=np.float64) for f in train_features])
    labels = np.concatenate([np.full(len(f), int(y)) for f, y in zip(train_features, train_labels, strict=True)])
    classes = sorted(set(labels.tolist()))
    means = np.stack([feats[labels == c].mean(axis=0) if c in classes else feats.mean(axis=0) for c in (0, 1)])
    centred = feats - means[labels]
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    probe = OodStats(means, precision, math.inf, math.inf, percentile, len(train_features), len(held_out_features))
    scores = [score_loop(probe, f, lg) for f, lg in zip(held_out_features, held_out_logits, strict=True)]
    threshold = float(np.percentile([s.score for s in scores], percentile))
    energy_threshold = float(np.percentile([s.energy for s in scores], percentile))
    return OodStats(means, precision, threshold, energy_threshold, percentile, len(train_features),
                    len(held_out_features))  # fmt: skip
