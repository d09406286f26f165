"""Several loops per patient: patient-level scores, or loop-level AUC with a clustered variance.

Loops of one patient are correlated (same lesion, same sonographer, often the same label), so DeLong's
variance, which treats every loop as independent, is too small when a patient contributes several loops.
Two ways out, both offered by ``alnnode evaluate --unit``:

* ``patient``: one score per patient (the mean, or max, of its loops) and the ordinary DeLong analysis;
* ``loop``: keep every loop and use Obuchowski's nonparametric variance for clustered ROC data
  (Obuchowski NA, "Nonparametric analysis of clustered ROC curve data", Biometrics 53(2):567-578, 1997),
  which sums the structural components per cluster (patient) before taking their (co)variances.

With one loop per patient the clustered variance equals DeLong's up to the small-sample factors
``I/(I-1)`` versus ``1/(M-1)``, ``1/(N-1)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from workers.research.inputs import ModelScores
from workers.research.stats import delong_placements

AGGREGATES = ("mean", "max")


@dataclass(frozen=True)
class ClusteredAuc:
    """AUC of clustered data with Obuchowski's variance and 95 % CI."""

    auc: float
    variance: float
    ci_low: float
    ci_high: float
    n_pos: int
    n_neg: int
    n_clusters: int


def patient_scores(labels: np.ndarray, scores: np.ndarray, patients: Sequence[str], how: str = "mean"
                   ) -> tuple[np.ndarray, np.ndarray, list[str]]:  # fmt: skip
    """One label and score per patient (the ``how`` of its loops' scores), patients in sorted order.

    Raises ``ValueError`` when a patient's loops disagree on the label or ``how`` is unknown.
    """
    if how not in AGGREGATES:
        raise ValueError(f"patient score {how!r} is not one of {', '.join(AGGREGATES)}")
    y, s = np.asarray(labels, dtype=int), np.asarray(scores, dtype=np.float64)
    names, inverse = np.unique(np.asarray(patients, dtype=str), return_inverse=True)
    out_y = np.empty(len(names), dtype=int)
    out_s = np.empty(len(names), dtype=np.float64)
    for g, name in enumerate(names):
        sel = inverse == g
        ys = np.unique(y[sel])
        if ys.size != 1:
            raise ValueError(f"patient {name!r}: loops with labels {ys.tolist()}; a patient-level score needs one")
        out_y[g] = ys[0]
        out_s[g] = float(s[sel].mean() if how == "mean" else s[sel].max())
    return out_y, out_s, [str(n) for n in names]


def _cluster_components(labels: np.ndarray, scores: np.ndarray, inverse: np.ndarray, n_clusters: int
                        ) -> tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """theta, per-cluster sums of V10 and V01, and per-cluster counts m_i (positives), n_i (negatives)."""
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = y == 1, y == 0
    if not pos.any() or not neg.any():
        raise ValueError(f"AUC undefined: need both classes, got {int(pos.sum())} positive and {int(neg.sum())} negative")
    theta, v10, v01 = delong_placements(s[pos], s[neg])
    v10_i = np.bincount(inverse[pos], weights=v10, minlength=n_clusters)
    v01_i = np.bincount(inverse[neg], weights=v01, minlength=n_clusters)
    m_i = np.bincount(inverse[pos], minlength=n_clusters).astype(np.float64)
    n_i = np.bincount(inverse[neg], minlength=n_clusters).astype(np.float64)
    return theta, v10_i, v01_i, m_i, n_i


def clustered_covariance(labels: np.ndarray, score_sets: Sequence[np.ndarray], clusters: Sequence[str]
                         ) -> tuple[np.ndarray, np.ndarray, int, int, int]:  # fmt: skip
    """AUCs of several score sets on the same clustered units and their Obuchowski (1997) covariance matrix.

    Returns ``(aucs, cov, M, N, I)``. Eq. (3)-(5) of the paper: with cluster sums ``V10_i``, ``V01_i``,
    ``S10 = I/((I-1)M) sum (V10_i - m_i A)(V10_i - m_i A')``, ``S01`` alike over negatives,
    ``S11 = I/(I-1) sum (V10_i - m_i A)(V01_i - n_i A')`` and
    ``cov(A, A') = S10/M + S01/N + (S11 + S11')/(MN)``.
    """
    names, inverse = np.unique(np.asarray(clusters, dtype=str), return_inverse=True)
    n_clusters = len(names)
    if n_clusters < 2:
        raise ValueError(f"clustered AUC variance needs 2 or more patients, got {n_clusters}")
    parts = [_cluster_components(labels, s, inverse, n_clusters) for s in score_sets]
    m_i, n_i = parts[0][3], parts[0][4]
    big_m, big_n = float(m_i.sum()), float(n_i.sum())
    dx = [p[1] - m_i * p[0] for p in parts]  # V10_i - m_i * theta
    dy = [p[2] - n_i * p[0] for p in parts]
    k = len(parts)
    cov = np.empty((k, k))
    f = n_clusters / (n_clusters - 1.0)
    for a in range(k):
        for b in range(k):
            s10 = f / big_m * float(dx[a] @ dx[b])
            s01 = f / big_n * float(dy[a] @ dy[b])
            s11 = f * float(dx[a] @ dy[b]) + f * float(dx[b] @ dy[a])
            cov[a, b] = s10 / big_m + s01 / big_n + s11 / (big_m * big_n)
    return np.array([p[0] for p in parts]), cov, int(big_m), int(big_n), n_clusters


def auc_clustered(labels: np.ndarray, scores: np.ndarray, clusters: Sequence[str], conf_level: float = 0.95
                  ) -> ClusteredAuc:  # fmt: skip
    """Loop-level AUC with Obuchowski's clustered variance; CI ``auc ± z·sqrt(var)`` clipped to [0, 1]."""
    aucs, cov, m, n, i = clustered_covariance(labels, [np.asarray(scores, dtype=np.float64)], clusters)
    theta, var = float(aucs[0]), max(float(cov[0, 0]), 0.0)
    z = float(sps.norm.ppf(0.5 + conf_level / 2.0))
    return ClusteredAuc(theta, var, max(0.0, theta - z * math.sqrt(var)), min(1.0, theta + z * math.sqrt(var)), m, n, i)


def clustered_paired_test(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, clusters: Sequence[str],
                          conf_level: float = 0.95) -> dict[str, float]:  # fmt: skip
    """z test of AUC(a) - AUC(b) on the same clustered loops with Obuchowski's covariance."""
    aucs, cov, _, _, _ = clustered_covariance(labels, [scores_a, scores_b], clusters)
    d = float(aucs[0] - aucs[1])
    sig = math.sqrt(max(float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]), 0.0))
    z = (d / sig) if sig > 0 else (0.0 if d == 0 else math.copysign(math.inf, d))
    crit = float(sps.norm.ppf(0.5 + conf_level / 2.0))
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "auc_diff": d, "z": z,
            "p_value": float(2.0 * sps.norm.sf(abs(z))), "ci_low": d - crit * sig, "ci_high": d + crit * sig}  # fmt: skip


def has_clusters(m: ModelScores) -> bool:
    """True when some patient of ``m`` has more than one loop."""
    return bool(m.patients) and len(set(m.patients.values())) < len(m.index)


def clusters_of(m: ModelScores, case_ids: Sequence[str]) -> list[str]:
    """Patient of each case (the case itself when the predictions name no patients)."""
    return [m.patients.get(c, c) for c in case_ids]


def to_patients(m: ModelScores, how: str = "mean") -> ModelScores:
    """``m`` with one row per patient (``how`` of its loops' scores); ``case_id`` becomes the patient id."""
    cases = sorted(m.index, key=m.index.__getitem__)
    y, s = m.subset(cases)
    py, ps, names = patient_scores(y, s, clusters_of(m, cases), how)
    return ModelScores(m.name, m.source, py, ps, {n: i for i, n in enumerate(names)})
