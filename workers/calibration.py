"""Calibrated probability and operating point, fitted on a study's own out-of-fold predictions.

- **Temperature scaling** (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017): one scalar
  T > 0 divides the logits before the softmax. It keeps the ranking (AUC is unchanged) and is fitted by
  minimising the negative log-likelihood of held-out labels, here on the *loop* probability the node reports
  (mean over a loop's clips of softmax(logits / T)[:, 1]).
- **Operating point**: the Present/Absent threshold on the calibrated probability, chosen on the same
  out-of-fold data, by Youden's J (max sensitivity + specificity - 1; Youden 1950) or as the highest threshold
  that reaches a target sensitivity (a screening-style choice).
- **Expected calibration error** (Naeini et al. 2015; Guo et al. 2017): the bin-weighted mean absolute gap
  between the mean predicted P(metastasis) and the observed fraction of metastases in equal-width bins.

Pure numpy/scipy/scikit-learn (no torch): used by ``alnnode train``, ``evaluate`` and inference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize_scalar
from scipy.special import softmax
from sklearn.metrics import roc_curve

OPERATING_POINTS = ("youden", "sensitivity")
# Temperature scaling exists to soften over-confident networks (T > 1); on small, perfectly separated
# out-of-fold sets the NLL keeps falling as T -> 0, so sharpening is bounded at T = 0.5.
_T_RANGE = (0.5, 20.0)


@dataclass(frozen=True)
class Calibration:
    """What a bundle stores (``metadata.json`` ``calibration``) and the node applies."""

    temperature: float
    threshold: float  # operating point on the calibrated probability
    method: str  # youden | sensitivity
    target_sensitivity: float | None
    n: int  # out-of-fold loops it was fitted on
    sensitivity: float  # at ``threshold`` on those loops
    specificity: float
    ece_before: float
    ece_after: float

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """Read the metadata form back; a ``ValueError`` names the bad field."""
        try:
            cal = cls(
                temperature=float(data["temperature"]), threshold=float(data["threshold"]), method=str(data["method"]),
                target_sensitivity=None if data.get("target_sensitivity") is None else float(data["target_sensitivity"]),
                n=int(data["n"]), sensitivity=_f(data.get("sensitivity")), specificity=_f(data.get("specificity")),
                ece_before=_f(data.get("ece_before")), ece_after=_f(data.get("ece_after")),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"calibration: {exc!r} in {data!r}") from exc
        if not _T_RANGE[0] <= cal.temperature <= _T_RANGE[1]:
            raise ValueError(f"calibration.temperature: {cal.temperature} is outside {_T_RANGE}")
        if not 0.0 <= cal.threshold <= 1.0:
            raise ValueError(f"calibration.threshold: {cal.threshold} is not in [0, 1]")
        return cal


def _f(v: Any) -> float:
    return math.nan if v is None else float(v)


def loop_probability(clip_logits: np.ndarray, temperature: float = 1.0) -> float:
    """P(metastasis) of one loop: mean over its clips of softmax(logits / T)[:, 1] (what inference reports)."""
    logits = np.asarray(clip_logits, dtype=np.float64).reshape(-1, 2)
    return float(softmax(logits / temperature, axis=1)[:, 1].mean())


def _nll(logits: Sequence[np.ndarray], labels: np.ndarray, temperature: float) -> float:
    p = np.array([loop_probability(x, temperature) for x in logits]).clip(1e-12, 1 - 1e-12)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def fit_temperature(logits: Sequence[np.ndarray], labels: ArrayLike) -> float:
    """The T in [0.05, 20] that minimises the NLL of ``labels`` under the loop probabilities (bounded Brent on log T).

    ``logits``: one (n_clips, 2) array per loop.
    """
    y = np.asarray(labels, dtype=np.float64)
    if len(logits) != len(y) or len(y) == 0:
        raise ValueError(f"fit_temperature: {len(logits)} logit arrays for {len(y)} labels")
    if y.min() == y.max():
        return 1.0  # one class only: nothing to calibrate against
    res = minimize_scalar(lambda lt: _nll(logits, y, math.exp(lt)), bounds=tuple(map(math.log, _T_RANGE)),
                          method="bounded", options={"xatol": 1e-4})  # fmt: skip
    return float(math.exp(res.x))


def operating_point(
    labels: ArrayLike, probabilities: ArrayLike, method: str = "youden", target_sensitivity: float = 0.9
) -> tuple[float, float, float]:
    """(threshold, sensitivity, specificity): Present when P >= threshold.

    ``youden`` maximises sensitivity + specificity - 1; ``sensitivity`` takes the highest threshold whose
    sensitivity reaches ``target_sensitivity``.
    """
    if method not in OPERATING_POINTS:
        raise ValueError(f"operating point method {method!r} is not one of {', '.join(OPERATING_POINTS)}")
    if not 0.0 < target_sensitivity <= 1.0:
        raise ValueError(f"target sensitivity {target_sensitivity} is not in (0, 1]")
    y, p = np.asarray(labels, dtype=int), np.asarray(probabilities, dtype=np.float64)
    if y.min() == y.max():
        return 0.5, math.nan, math.nan
    fpr, tpr, thresholds = roc_curve(y, p)
    thresholds = np.minimum(thresholds, 1.0)  # the first is +inf (nothing positive)
    if method == "youden":
        i = int(np.argmax(tpr - fpr))
    else:
        i = int(np.flatnonzero(tpr >= target_sensitivity - 1e-12)[0])
    # Cut half-way to the next lower score, not at the lowest positive itself: on separable data the score
    # itself would call every new loop just below it Absent.
    cut = 0.5 * (thresholds[i] + thresholds[i + 1]) if i + 1 < len(thresholds) else thresholds[i]
    return float(cut), float(tpr[i]), float(1.0 - fpr[i])


def expected_calibration_error(labels: ArrayLike, probabilities: ArrayLike, bins: int = 10) -> float:
    """ECE of P(metastasis) over ``bins`` equal-width bins (empty bins carry no weight)."""
    y, p = np.asarray(labels, dtype=np.float64), np.asarray(probabilities, dtype=np.float64)
    if len(y) == 0:
        return math.nan
    idx = np.minimum((p * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            ece += mask.mean() * abs(p[mask].mean() - y[mask].mean())
    return float(ece)


def fit_calibration(
    logits: Sequence[np.ndarray], labels: ArrayLike, *, method: str = "youden", target_sensitivity: float = 0.9
) -> Calibration:
    """Temperature, then the operating point on the calibrated out-of-fold probabilities."""
    y = np.asarray(labels, dtype=int)
    t = fit_temperature(logits, y)
    before = np.array([loop_probability(x) for x in logits])
    after = np.array([loop_probability(x, t) for x in logits])
    threshold, sens, spec = operating_point(y, after, method, target_sensitivity)
    return Calibration(t, threshold, method, target_sensitivity if method == "sensitivity" else None, len(y), sens,
                       spec, expected_calibration_error(y, before), expected_calibration_error(y, after))  # fmt: skip


def reliability_diagram(labels: ArrayLike, probabilities: ArrayLike, path: Path, *, bins: int = 10,
                        title: str = "") -> Path:  # fmt: skip
    """Observed fraction of metastases against mean predicted probability per bin, with the ECE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y, p = np.asarray(labels, dtype=np.float64), np.asarray(probabilities, dtype=np.float64)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    centres, observed, counts = [], [], []
    for b in range(bins):
        mask = idx == b
        if mask.any():
            centres.append(p[mask].mean())
            observed.append(y[mask].mean())
            counts.append(int(mask.sum()))
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", label="perfect calibration")
    ax.plot(centres, observed, marker="o", label=f"model (ECE {expected_calibration_error(y, p, bins):.3f})")
    for c, o, n in zip(centres, observed, counts, strict=True):
        ax.annotate(str(n), (c, o), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlabel("mean predicted P(ALN metastasis)")
    ax.set_ylabel("observed fraction with ALN metastasis")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title or "Reliability diagram")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
