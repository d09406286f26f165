"""Statistics of `alnnode evaluate` against R's pROC, scipy and hand computation."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from tests.helpers import require_tool
from workers.research import stats

DATA = Path(__file__).parent / "data"


def _asah() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    with (DATA / "aSAH.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    y = np.array([r["outcome"] == "Poor" for r in rows], dtype=int)  # pROC: control = Good, case = Poor
    return y, {k: np.array([float(r[k]) for r in rows]) for k in ("wfns", "s100b", "ndka")}


# ------------------------------------------------------------------------------- pROC's aSAH example
def test_asah_matches_proc_published_values() -> None:
    y, x = _asah()
    assert y.size == 113 and y.sum() == 41
    # pROC's roc(outcome, predictor) picks direction "<" when median(controls) <= median(cases); it does so
    # for all three markers, which is our fixed "higher score = positive" direction.
    for marker in x.values():
        assert np.median(marker[y == 0]) <= np.median(marker[y == 1])
    assert stats.auc_delong(y, x["wfns"]).auc == pytest.approx(0.8236789, abs=1e-6)
    assert stats.auc_delong(y, x["s100b"]).auc == pytest.approx(0.7313686, abs=1e-6)
    ndka = stats.auc_delong(y, x["ndka"])  # ci.auc(aSAH$outcome, aSAH$ndka): 0.501245-0.722671 (DeLong)
    assert (ndka.ci_low, ndka.ci_high) == pytest.approx((0.5012450, 0.7226710), abs=1e-6)
    wfns = stats.auc_delong(y, x["wfns"])  # ci.auc(roc(outcome, wfns)): 0.7485349-0.8988228
    assert (wfns.ci_low, wfns.ci_high) == pytest.approx((0.7485349, 0.8988228), abs=1e-6)
    assert wfns.variance == pytest.approx(0.001469914708823626, rel=1e-9)  # var(roc(outcome, wfns))


def test_asah_roc_test_paired_and_unpaired_match_proc() -> None:
    y, x = _asah()
    paired = stats.delong_paired(y, x["wfns"], x["s100b"])  # roc.test(r_wfns, r_s100b)
    assert paired.p_value == pytest.approx(0.0271757822291882, abs=1e-12)
    assert paired.statistic == pytest.approx(2.208983591440908, abs=1e-9)
    assert (paired.ci_low, paired.ci_high) == pytest.approx((0.01040617695648462, 0.17421441924947756), abs=1e-9)
    unpaired = stats.delong_unpaired(y, x["wfns"], y, x["s100b"])  # roc.test(..., paired=FALSE)
    assert unpaired.statistic == pytest.approx(1.434906409269075, abs=1e-9)
    assert unpaired.df == pytest.approx(206.6610637877825, abs=1e-7)
    assert unpaired.p_value == pytest.approx(0.152825378808796, abs=1e-9)


# --------------------------------------------------------------------- random data against Rscript pROC
R_SCRIPT = r"""
suppressMessages(library(pROC))
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1])
out <- c()
for (s in unique(d$set)) {
  a <- d[d$set == s & d$group == "a", ]; b <- d[d$set == s & d$group == "b", ]
  ra <- roc(a$y, a$s1, levels = c(0, 1), direction = "<", quiet = TRUE)
  rb <- roc(a$y, a$s2, levels = c(0, 1), direction = "<", quiet = TRUE)
  ru <- roc(b$y, b$s1, levels = c(0, 1), direction = "<", quiet = TRUE)
  ci <- ci.auc(ra, method = "delong")
  tp <- roc.test(ra, rb, method = "delong", paired = TRUE)
  tu <- suppressWarnings(roc.test(ra, ru, method = "delong", paired = FALSE))
  out <- c(out, sprintf('"%s": [%.15g, %.15g, %.15g, %.15g, %.15g, %.15g, %.15g, %.15g, %.15g]', s,
    as.numeric(auc(ra)), ci[1], ci[3], as.numeric(auc(rb)), tp$statistic, tp$p.value,
    tu$statistic, tu$parameter, tu$p.value))
}
cat("{", paste(out, collapse = ", "), "}\n")
"""


def _random_sets() -> dict[str, dict[str, np.ndarray]]:
    sets: dict[str, dict[str, np.ndarray]] = {}
    specs = [  # name, n_a, n_b, rounding (None: continuous; int: decimals -> ties)
        ("continuous", 80, 55, None), ("small_ties", 14, 11, 1), ("integer_ties", 60, 70, 0),
        ("heavy_ties", 40, 25, 0), ("large", 300, 240, 3),
    ]
    for seed, (name, na, nb, dec) in enumerate(specs):
        rng = np.random.default_rng(1000 + seed)
        ya = np.r_[np.ones(na // 3), np.zeros(na - na // 3)].astype(int)
        yb = rng.integers(0, 2, nb)
        yb[:2] = (0, 1)
        s1 = ya * rng.uniform(0.3, 1.2) + rng.normal(0, 1, na)
        s2 = 0.6 * s1 + ya * 0.4 + rng.normal(0, 0.8, na)
        u1 = yb * 0.7 + rng.normal(0, 1, nb)
        if name == "heavy_ties":
            s1, s2, u1 = (np.clip(np.round(v), -1, 2) for v in (s1, s2, u1))
        elif dec is not None:
            s1, s2, u1 = (np.round(v * (4 if dec == 0 else 1), dec) for v in (s1, s2, u1))
        sets[name] = {"ya": ya, "s1": s1, "s2": s2, "yb": yb, "u1": u1}
    return sets


def _require_proc() -> None:
    """R's pROC, the reference; a missing one fails under CI (tests.helpers.require_tool) and skips elsewhere."""
    rscript = require_tool("Rscript")
    if subprocess.run([rscript, "-e", "library(pROC)"], capture_output=True, timeout=120).returncode != 0:
        if os.environ.get("CI"):
            pytest.fail("R's pROC is not installed (.ci/run must apt-get install r-cran-proc)")
        pytest.skip("R's pROC is not installed (apt-get install r-cran-proc)")


def test_random_sets_match_rscript_proc(tmp_path: Path) -> None:
    _require_proc()
    sets = _random_sets()
    data = tmp_path / "sets.csv"
    with data.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["set", "group", "y", "s1", "s2"])
        for name, d in sets.items():
            w.writerows([name, "a", y, repr(float(a)), repr(float(b))] for y, a, b in zip(d["ya"], d["s1"], d["s2"], strict=True))
            w.writerows([name, "b", y, repr(float(a)), ""] for y, a in zip(d["yb"], d["u1"], strict=True))
    script = tmp_path / "check.R"
    script.write_text(R_SCRIPT)
    run = subprocess.run(["Rscript", str(script), str(data)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    expected = json.loads(run.stdout)
    assert set(expected) == set(sets)
    for name, d in sets.items():
        auc_a, ci_lo, ci_hi, auc_b, z, p, t_u, df_u, p_u = expected[name]
        est = stats.auc_delong(d["ya"], d["s1"])
        assert (est.auc, est.ci_low, est.ci_high) == pytest.approx((auc_a, ci_lo, ci_hi), abs=1e-6), name
        paired = stats.delong_paired(d["ya"], d["s1"], d["s2"])
        assert paired.auc_b == pytest.approx(auc_b, abs=1e-6), name
        assert (paired.statistic, paired.p_value) == pytest.approx((z, p), abs=1e-6), name
        unpaired = stats.delong_unpaired(d["ya"], d["s1"], d["yb"], d["u1"])
        assert (unpaired.statistic, unpaired.df, unpaired.p_value) == pytest.approx((t_u, df_u, p_u), abs=1e-6), name


def test_auc_equals_mann_whitney_share_with_ties() -> None:
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.normal(size=200) + y, 0)
    pos, neg = s[y == 1], s[y == 0]
    brute = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert stats.auc_delong(y, s).auc == pytest.approx(brute, abs=1e-12)


def test_auc_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="AUC undefined.*0 negative"):
        stats.auc_delong(np.ones(5, dtype=int), np.linspace(0, 1, 5))


# ---------------------------------------------------------------------------------------- proportions
@pytest.mark.parametrize(("k", "n"), [(0, 1), (1, 1), (0, 10), (10, 10), (16, 21), (36, 40), (52, 61), (3, 997)])
def test_clopper_pearson_matches_scipy_binomtest(k: int, n: int) -> None:
    ref = sps.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert stats.clopper_pearson(k, n) == pytest.approx((ref.low, ref.high), abs=1e-12)


def test_clopper_pearson_empty_is_none() -> None:
    assert stats.clopper_pearson(0, 0) is None


def test_metrics_from_known_counts_equal_hand_computation() -> None:
    """The study's Table 2, TIN on test set A: TP 16, FN 5, TN 36, FP 4 (n = 61)."""
    m, warnings = stats.binary_metrics(stats.Counts(tp=16, fp=4, tn=36, fn=5), "TIN")
    assert warnings == []
    assert m["accuracy"] == pytest.approx((16 + 36) / 61)  # 85.25 %
    assert m["sensitivity"] == pytest.approx(16 / 21)  # 76.19 %
    assert m["specificity"] == pytest.approx(36 / 40)  # 90.00 %
    assert m["ppv"] == pytest.approx(16 / (16 + 4))  # 80.00 %
    assert m["npv"] == pytest.approx(36 / (36 + 5))  # 87.80 %
    assert m["f1"] == pytest.approx(2 * 16 / (2 * 16 + 4 + 5))  # 32/41 = 0.7805
    # kappa: po = 52/61; pe = (called+ x truth+ + called- x truth-)/n^2 = (20*21 + 41*40)/61^2 = 2060/3721
    # kappa = (po - pe)/(1 - pe) = (3172 - 2060)/(3721 - 2060) = 1112/1661 = 0.669 (Table 2)
    assert m["kappa"] == pytest.approx(1112 / 1661)
    assert (m["accuracy_k"], m["accuracy_n"], m["ppv_k"], m["ppv_n"]) == (52, 61, 16, 20)


@pytest.mark.parametrize(("counts", "kappa", "se"), [
    ((5, 10, 28, 6), 0.169, 0.148),  # Table 3, junior sonographer A
    ((6, 8, 30, 5), 0.305, 0.150),  # attending B
    ((7, 6, 32, 4), 0.449, 0.147),  # senior C
    ((6, 3, 35, 5), 0.499, 0.153),  # DL model on set B
])
def test_kappa_and_se_reproduce_study_table_3(counts: tuple[int, int, int, int], kappa: float, se: float) -> None:
    k, s = stats.cohen_kappa(stats.Counts(*counts))
    assert k is not None and s is not None
    assert (round(k, 3), round(s, 3)) == (kappa, se)


def test_undefined_metrics_are_none_with_warning() -> None:
    m, warnings = stats.binary_metrics(stats.Counts(tp=0, fp=0, tn=30, fn=10), "never-positive")
    assert m["ppv"] is None and m["ppv_ci_low"] is None
    assert m["sensitivity"] == 0.0 and m["f1"] == 0.0
    assert any("ppv undefined" in w for w in warnings)
    assert m["kappa"] == pytest.approx(0.0)  # calls carry no information beyond chance
    m, warnings = stats.binary_metrics(stats.Counts(tp=0, fp=0, tn=30, fn=0), "all-negative")
    assert m["kappa"] is None and m["sensitivity"] is None
    assert any("kappa undefined" in w for w in warnings)


# -------------------------------------------------------------------------------------------- McNemar
def test_mcnemar_exact_below_25_discordant() -> None:
    a = np.array([1] * 10 + [1] * 3 + [0] * 10 + [0] * 5, dtype=bool)
    b = np.array([1] * 10 + [0] * 3 + [1] * 10 + [0] * 5, dtype=bool)
    r = stats.mcnemar(a, b)
    assert (r.b, r.c, r.method) == (3, 10, "exact binomial")
    # hand: P = 2 * P(X <= 3), X ~ Bin(13, 1/2) = 2 * (1 + 13 + 78 + 286) / 2^13
    assert r.p_value == pytest.approx(2 * (1 + 13 + 78 + 286) / 2**13)


def test_mcnemar_chi_square_from_25_discordant() -> None:
    a = np.array([1] * 30 + [0] * 12 + [1] * 8, dtype=bool)
    b = np.array([0] * 30 + [1] * 12 + [1] * 8, dtype=bool)
    r = stats.mcnemar(a, b)
    assert r.method.startswith("chi-square") and (r.b, r.c) == (30, 12)
    assert r.statistic == pytest.approx((18 - 1) ** 2 / 42)
    assert r.p_value == pytest.approx(sps.chi2.sf((18 - 1) ** 2 / 42, 1))


def test_mcnemar_no_discordant_pairs() -> None:
    r = stats.mcnemar(np.ones(5, bool), np.ones(5, bool))
    assert r.p_value == 1.0


# ---------------------------------------------------------------------------------------- curves, CAM
def test_roc_curve_endpoints_and_pr_average_precision() -> None:
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    fpr, tpr, _ = stats.roc_curve(y, s)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    recall, precision, ap = stats.pr_curve(y, s)
    # thresholds 0.8 (P=1, R=.5), 0.4 (P=.5), 0.35 (P=2/3, R=1): AP = .5*1 + .5*(2/3)
    assert ap == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_pointing_game_counts_peaks_inside_masks() -> None:
    mask = np.zeros((10, 10), bool)
    mask[2:5, 2:5] = True
    peaks = [(3, 3), (8, 8), (4, 2), (20, 20), None]
    assert stats.pointing_game(peaks, [mask, mask, mask, mask, mask]) == pytest.approx(2 / 4)
    assert stats.pointing_game([(3, 3), (0, 0)], [mask, None]) == 1.0
    with pytest.raises(ValueError, match="no key frame"):
        stats.pointing_game([(3, 3)], [None])


def test_pointing_game_tolerance_counts_peaks_near_the_mask() -> None:
    mask = np.zeros((10, 10), bool)
    mask[2:5, 2:5] = True
    peaks = [(3, 3), (3, 7), (8, 8), (20, 20)]  # inside; 3 px right of the box; 4 px off diagonally (5.66); off the frame
    masks = [mask] * 4
    assert stats.pointing_game(peaks, masks) == pytest.approx(1 / 4)
    assert stats.pointing_game(peaks, masks, tolerance=3) == pytest.approx(2 / 4)
    assert stats.pointing_game(peaks, masks, tolerance=5.6) == pytest.approx(2 / 4)
    assert stats.pointing_game(peaks, masks, tolerance=5.7) == pytest.approx(3 / 4)
    assert stats.pointing_game([(3, 7)], [np.zeros((10, 10), bool)], tolerance=50) == 0.0
    with pytest.raises(ValueError, match="tolerance must be >= 0 pixels, got -1"):
        stats.pointing_game(peaks, masks, tolerance=-1)


def test_cam_peak_is_the_middle_of_the_maximal_region_not_its_first_pixel() -> None:
    import torch
    import torch.nn.functional as F

    coarse = torch.zeros(1, 1, 4, 4)
    coarse[0, 0, 0, 1] = 1.0  # an edge cell: bilinear upsampling clamps it into a plateau up to the border
    plane = F.interpolate(coarse, size=(112, 112), mode="bilinear", align_corners=False)[0, 0].numpy()
    y, x = np.unravel_index(int(np.argmax(plane)), plane.shape)
    assert y == 0  # argmax: the border row
    py, px = stats.cam_peak(plane)
    assert 5 <= py <= 9 and 41 <= px <= 42  # halfway between the border and the cell centre (13.5, 41.5)
    coarse[0, 0, 0, 1], coarse[0, 0, 2, 1] = 0.0, 1.0  # an interior cell: its centre (69.5, 41.5)
    plane = F.interpolate(coarse, size=(112, 112), mode="bilinear", align_corners=False)[0, 0].numpy()
    assert stats.cam_peak(plane) in {(69, 41), (69, 42), (70, 41), (70, 42)}
    with pytest.raises(ValueError, match="non-empty 2-D map"):
        stats.cam_peak(np.zeros((2, 3, 4)))
