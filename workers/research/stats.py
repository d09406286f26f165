"""Diagnostic-accuracy statistics for `alnnode evaluate`, matched to R's pROC and to MedCalc.

* AUC with DeLong's variance, computed by the fast midrank algorithm of Sun & Xu (IEEE SPL 21(11), 2014);
  the 95 % CI is ``auc ± z·sqrt(var)`` clipped to [0, 1] as in ``pROC::ci.auc(method="delong")``.
* DeLong's test for two correlated ROC curves (``pROC::roc.test(paired=TRUE)``) and for two independent
  curves (``paired=FALSE``: pROC's D statistic with a Welch–Satterthwaite t reference, not a plain z).
* Exact Clopper–Pearson intervals for proportions (scipy), Cohen's kappa with the Fleiss–Cohen–Everitt (1969)
  large-sample SE (MedCalc's, which reproduces the study's Table 3), McNemar's test for paired calls
  (statsmodels), ROC and PR curves (scikit-learn). DeLong stays here: no maintained Python library
  reproduces pROC's paired and unpaired tests, and the suite checks it against R.

Every function scores "higher score = positive" (pROC's ``direction="<"``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps

logger = logging.getLogger(__name__)

Z95 = float(sps.norm.ppf(0.975))
#: McNemar uses the exact binomial test below this many discordant pairs, else chi-square with continuity.
MCNEMAR_EXACT_BELOW = 25


def midrank(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` with ties given the mean of the ranks they span (Sun & Xu, Algorithm 1)."""
    return np.asarray(sps.rankdata(x, method="average"), dtype=np.float64)


def _split(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must be 1-D of equal length")
    pos, neg = scores[labels == 1], scores[labels == 0]
    if pos.size == 0 or neg.size == 0:
        raise ValueError(
            f"AUC undefined: need both classes, got {pos.size} positive and {neg.size} negative cases"
        )
    return pos, neg


def delong_placements(pos: np.ndarray, neg: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and DeLong's structural components.

    Returns ``(theta, v10, v01)``: ``v10[i]`` is the share of negatives below positive ``i`` (ties 1/2),
    ``v01[j]`` the share of positives above negative ``j``. Uses three midrankings, O(N log N).
    """
    m, n = pos.size, neg.size
    tz = midrank(np.concatenate([pos, neg]))
    tx, ty = midrank(pos), midrank(neg)
    theta = float((tz[:m].sum() - m * (m + 1) / 2.0) / (m * n))
    v10 = (tz[:m] - tx) / n
    v01 = 1.0 - (tz[m:] - ty) / m
    return theta, v10, v01


@dataclass(frozen=True)
class AucEstimate:
    """AUC with DeLong's variance and 95 % CI."""

    auc: float
    variance: float
    ci_low: float
    ci_high: float
    n_pos: int
    n_neg: int


def auc_delong(labels: np.ndarray, scores: np.ndarray, conf_level: float = 0.95) -> AucEstimate:
    """AUC of ``scores`` for binary ``labels`` (1 = metastasis) with DeLong's CI, as ``pROC::ci.auc``."""
    pos, neg = _split(labels, scores)
    theta, v10, v01 = delong_placements(pos, neg)
    m, n = pos.size, neg.size
    s10 = float(np.var(v10, ddof=1)) if m > 1 else math.nan
    s01 = float(np.var(v01, ddof=1)) if n > 1 else math.nan
    var = s10 / m + s01 / n
    z = float(sps.norm.ppf(0.5 + conf_level / 2.0))
    if math.isnan(var):
        lo = hi = math.nan
    else:
        lo, hi = max(0.0, theta - z * math.sqrt(var)), min(1.0, theta + z * math.sqrt(var))
    return AucEstimate(theta, var, lo, hi, m, n)


@dataclass(frozen=True)
class AucComparison:
    """DeLong test of AUC(a) - AUC(b); ``df`` is set for the unpaired (t) version only."""

    auc_a: float
    auc_b: float
    auc_diff: float
    statistic: float
    p_value: float
    ci_low: float | None
    ci_high: float | None
    paired: bool
    n_a: int
    n_b: int
    df: float | None = None
    method: str = ""

    def as_dict(self) -> dict[str, float | int | bool | str | None]:
        return asdict(self)


def delong_paired(
    labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, conf_level: float = 0.95
) -> AucComparison:
    """DeLong's test for two correlated ROC curves on the same cases (``pROC::roc.test(paired=TRUE)``)."""
    pa, na = _split(labels, scores_a)
    pb, nb = _split(labels, scores_b)
    m, n = pa.size, na.size
    if min(m, n) < 2:
        raise ValueError(f"DeLong test needs 2 cases of each class, got {m} positive and {n} negative")
    ta, xa, ya = delong_placements(pa, na)
    tb, xb, yb = delong_placements(pb, nb)
    sx = np.cov(np.vstack([xa, xb]), ddof=1)
    sy = np.cov(np.vstack([ya, yb]), ddof=1)
    s = sx / m + sy / n
    var = float(s[0, 0] + s[1, 1] - 2.0 * s[0, 1])
    d = ta - tb
    sig = math.sqrt(max(var, 0.0))
    if sig == 0.0:
        z = 0.0 if d == 0.0 else math.copysign(math.inf, d)
    else:
        z = d / sig
    p = float(2.0 * sps.norm.sf(abs(z)))
    crit = float(sps.norm.ppf(0.5 + conf_level / 2.0))
    return AucComparison(
        ta, tb, d, z, p, d - crit * sig, d + crit * sig, True, m + n, m + n,
        method="DeLong's test for two correlated ROC curves",
    )


def delong_unpaired(
    labels_a: np.ndarray, scores_a: np.ndarray, labels_b: np.ndarray, scores_b: np.ndarray
) -> AucComparison:
    """DeLong test for two independent ROC curves, as ``pROC::roc.test(paired=FALSE, method="delong")``.

    ``D = (AUC_a - AUC_b) / sqrt(var_a + var_b)`` against Student's t with pROC's Welch–Satterthwaite
    degrees of freedom ``(Sa+Sb)^2 / (Sa^2/(Na-1) + Sb^2/(Nb-1))``; for large samples this is the z test.
    """
    ea, eb = auc_delong(labels_a, scores_a), auc_delong(labels_b, scores_b)
    if min(ea.n_pos, ea.n_neg, eb.n_pos, eb.n_neg) < 2:
        raise ValueError("DeLong test needs 2 cases of each class in each sample, got "
                         f"{ea.n_pos}/{ea.n_neg} and {eb.n_pos}/{eb.n_neg} positive/negative")
    sa, sb = ea.variance, eb.variance
    na, nb = ea.n_pos + ea.n_neg, eb.n_pos + eb.n_neg
    d = ea.auc - eb.auc
    se = math.sqrt(sa + sb)
    t = d / se if se > 0 else (0.0 if d == 0 else math.copysign(math.inf, d))
    df = (sa + sb) ** 2 / (sa**2 / (na - 1) + sb**2 / (nb - 1)) if se > 0 else math.inf
    p = float(2.0 * sps.t.sf(abs(t), df))
    return AucComparison(
        ea.auc, eb.auc, d, t, p, d - Z95 * se, d + Z95 * se, False, na, nb, df=df,
        method="DeLong's test for two independent ROC curves (t, Welch df)",
    )


def clopper_pearson(k: int, n: int, conf_level: float = 0.95) -> tuple[float, float] | None:
    """Exact (Clopper–Pearson) CI of k/n (``scipy.stats.binomtest(...).proportion_ci(method="exact")``);
    ``None`` when n == 0."""
    if n == 0:
        return None
    if not 0 <= k <= n:
        raise ValueError(f"count k={k} outside 0..n={n}")
    ci = sps.binomtest(int(k), int(n)).proportion_ci(confidence_level=conf_level, method="exact")
    return float(ci.low), float(ci.high)


@dataclass(frozen=True)
class Counts:
    """A 2x2 table of binary calls against the truth (1 = metastasis)."""

    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    @classmethod
    def from_calls(cls, labels: np.ndarray, calls: np.ndarray) -> Counts:
        y, c = np.asarray(labels).astype(bool), np.asarray(calls).astype(bool)
        return cls(int((y & c).sum()), int((~y & c).sum()), int((~y & ~c).sum()), int((y & ~c).sum()))


def cohen_kappa(c: Counts) -> tuple[float | None, float | None]:
    """Cohen's kappa of calls vs truth and its Fleiss–Cohen–Everitt (1969) SE; ``None`` when undefined."""
    n = c.n
    if n == 0:
        return None, None
    p = np.array([[c.tp, c.fp], [c.fn, c.tn]], dtype=np.float64) / n  # rows: call 1/0, cols: truth 1/0
    r, k = p.sum(axis=1), p.sum(axis=0)
    po, pe = float(np.trace(p)), float(r @ k)
    if pe >= 1.0:
        return None, None
    kappa = (po - pe) / (1.0 - pe)
    a = sum(p[i, i] * (1.0 - (r[i] + k[i]) * (1.0 - kappa)) ** 2 for i in range(2))
    b = (1.0 - kappa) ** 2 * (p[0, 1] * (k[0] + r[1]) ** 2 + p[1, 0] * (k[1] + r[0]) ** 2)
    cc = (kappa - pe * (1.0 - kappa)) ** 2
    se = math.sqrt(max(a + b - cc, 0.0)) / ((1.0 - pe) * math.sqrt(n))
    return float(kappa), float(se)


#: metric -> (numerator, denominator) over a Counts table
PROPORTIONS: dict[str, tuple[str, str]] = {
    "accuracy": ("tp+tn", "n"),
    "sensitivity": ("tp", "tp+fn"),
    "specificity": ("tn", "tn+fp"),
    "ppv": ("tp", "tp+fp"),
    "npv": ("tn", "tn+fn"),
}


def _count(c: Counts, expr: str) -> int:
    return sum(int(getattr(c, part)) for part in expr.split("+"))


def binary_metrics(c: Counts, name: str = "") -> tuple[dict[str, float | int | None], list[str]]:
    """Accuracy, sensitivity, specificity, PPV, NPV (each with exact CI and k/n), F1 and kappa (± SE).

    Returns ``(metrics, warnings)``; an undefined value (e.g. PPV with no positive calls) is ``None``
    and adds a warning naming it.
    """
    out: dict[str, float | int | None] = {"n": c.n, "tp": c.tp, "fp": c.fp, "tn": c.tn, "fn": c.fn}
    warnings: list[str] = []
    for metric, (num, den) in PROPORTIONS.items():
        k, n = _count(c, num), _count(c, den)
        out[f"{metric}_k"], out[f"{metric}_n"] = k, n
        ci = clopper_pearson(k, n)
        if ci is None:
            out[metric] = out[f"{metric}_ci_low"] = out[f"{metric}_ci_high"] = None
            warnings.append(f"{name}: {metric} undefined ({den.replace('+', ' + ')} = 0)")
        else:
            out[metric], out[f"{metric}_ci_low"], out[f"{metric}_ci_high"] = k / n, ci[0], ci[1]
    f1_den = 2 * c.tp + c.fp + c.fn
    out["f1"] = 2 * c.tp / f1_den if f1_den else None
    if not f1_den:
        warnings.append(f"{name}: f1 undefined (no positive cases and no positive calls)")
    kappa, se = cohen_kappa(c)
    out["kappa"], out["kappa_se"] = kappa, se
    if kappa is None or se is None:
        out["kappa_ci_low"] = out["kappa_ci_high"] = None
        warnings.append(f"{name}: kappa undefined (chance agreement is 1)")
    else:
        out["kappa_ci_low"], out["kappa_ci_high"] = kappa - Z95 * se, kappa + Z95 * se
    return out, warnings


@dataclass(frozen=True)
class McNemar:
    """McNemar's test on paired binary outcomes; ``b`` = only A true, ``c`` = only B true."""

    n: int
    b: int
    c: int
    statistic: float | None
    p_value: float
    method: str

    def as_dict(self) -> dict[str, float | int | str | None]:
        return asdict(self)


def mcnemar(a: np.ndarray, b: np.ndarray) -> McNemar:
    """McNemar's test of two paired boolean vectors (e.g. "call was correct" for two readers), by statsmodels.

    Exact two-sided binomial test when there are fewer than 25 discordant pairs, else the chi-square
    statistic with continuity correction ``(|b-c|-1)^2/(b+c)`` on 1 df.
    """
    from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

    x, y = np.asarray(a).astype(bool), np.asarray(b).astype(bool)
    if x.shape != y.shape:
        raise ValueError(f"McNemar needs paired vectors, got lengths {x.size} and {y.size}")
    nb, nc = int((x & ~y).sum()), int((~x & y).sum())
    disc = nb + nc
    table = [[int((x & y).sum()), nb], [nc, int((~x & ~y).sum())]]
    if disc < MCNEMAR_EXACT_BELOW:
        p = 1.0 if disc == 0 else min(1.0, float(sm_mcnemar(table, exact=True).pvalue))
        return McNemar(int(x.size), nb, nc, None, p, "exact binomial")
    res = sm_mcnemar(table, exact=False, correction=True)
    return McNemar(int(x.size), nb, nc, float(res.statistic), float(res.pvalue), "chi-square, continuity-corrected")


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Empirical ROC ``(fpr, tpr, thresholds)`` from (0,0) to (1,1), calling ``score >= threshold``
    (``sklearn.metrics.roc_curve`` keeping every threshold)."""
    from sklearn.metrics import roc_curve as sk_roc_curve

    y = np.asarray(labels).astype(int)
    fpr, tpr, thr = sk_roc_curve(y, np.asarray(scores, dtype=np.float64), pos_label=1, drop_intermediate=False)
    return np.asarray(fpr, dtype=np.float64), np.asarray(tpr, dtype=np.float64), np.asarray(thr, dtype=np.float64)


def pr_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Precision–recall points ``(recall, precision)`` from recall 0 (precision 1) up, and the average
    precision ``sum (R_n - R_{n-1}) P_n`` (``sklearn.metrics.precision_recall_curve`` and
    ``average_precision_score``)."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    precision, recall, _ = precision_recall_curve(y, s, pos_label=1, drop_intermediate=False)
    return recall[::-1].astype(np.float64), precision[::-1].astype(np.float64), float(average_precision_score(y, s))


def cam_peak(plane: np.ndarray) -> tuple[int, int]:
    """(row, col) of a CAM's peak: the pixel of its maximal region nearest that region's centroid.

    A coarse CAM upsampled bilinearly (align_corners=False) is clamped beyond its outermost cell centres,
    so the maximum of an edge cell is a plateau that runs from the cell's centre to the border of the
    image; ``np.argmax`` would put the peak on the border (its first pixel). Most cells of a 4x4 or 7x7
    map are edge cells.
    """
    p = np.asarray(plane, dtype=np.float64)
    if p.ndim != 2 or p.size == 0:
        raise ValueError(f"cam_peak wants a non-empty 2-D map, got shape {p.shape}")
    top = float(p.max())
    ys, xs = np.nonzero(p >= top - 1e-6 * max(1.0, abs(top)))
    i = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    return int(ys[i]), int(xs[i])


def pointing_game(
    cam_peak_yx_list: Sequence[tuple[int, int] | None], masks: Sequence[np.ndarray | None], tolerance: float = 0.0
) -> float:
    """Share of key frames whose Grad-CAM peak ``(row, col)`` lies inside the 2-D ground-truth mask, or
    within ``tolerance`` pixels (Euclidean) of it: Zhang et al.'s pointing game (IJCV 2018), which uses a
    15-pixel tolerance because a CAM is coarser than the image; ``tolerance=0`` is the strict game.

    Pairs where the peak or the mask is ``None`` (not available) are left out; a peak outside the mask's
    shape is a miss. Raises ``ValueError`` when the lists differ in length, ``tolerance`` is negative or no
    pair can be scored.
    """
    if len(cam_peak_yx_list) != len(masks):
        raise ValueError(f"pointing game: {len(cam_peak_yx_list)} peaks but {len(masks)} masks")
    if not tolerance >= 0:
        raise ValueError(f"pointing game: tolerance must be >= 0 pixels, got {tolerance!r}")
    hits = scored = 0
    for peak, mask in zip(cam_peak_yx_list, masks, strict=True):
        if peak is None or mask is None:
            continue
        m = np.asarray(mask, dtype=bool)
        if m.ndim != 2:
            raise ValueError(f"pointing game: mask must be 2-D (rows, cols), got shape {m.shape}")
        y, x = int(peak[0]), int(peak[1])
        scored += 1
        if not (0 <= y < m.shape[0] and 0 <= x < m.shape[1]):
            continue
        if tolerance == 0 or m[y, x]:
            hits += int(m[y, x])
        elif m.any():
            ys, xs = np.nonzero(m)
            hits += int(float(np.min((ys - y) ** 2 + (xs - x) ** 2)) <= tolerance**2)
    if scored == 0:
        raise ValueError("pointing game: no key frame has both a CAM peak and a mask")
    return hits / scored
