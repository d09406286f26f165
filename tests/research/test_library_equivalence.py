"""The hand-written statistics replaced by scipy / statsmodels / scikit-learn give the numbers they gave.

Each reference below is the previous aln-node implementation, kept here only to pin equality."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydicom.uid import generate_uid
from scipy import stats as sps
from sklearn.model_selection import StratifiedGroupKFold

from workers.research import stats
from workers.research.train_data import grouped_stratified_folds
from workers.results.uids import result_uid


def _old_clopper_pearson(k: int, n: int) -> tuple[float, float]:
    lo = 0.0 if k == 0 else float(sps.beta.ppf(0.025, k, n - k + 1))
    hi = 1.0 if k == n else float(sps.beta.ppf(0.975, k + 1, n - k))
    return lo, hi


def _old_mcnemar_p(nb: int, nc: int) -> float:
    disc = nb + nc
    if disc < 25:
        return 1.0 if disc == 0 else min(1.0, 2.0 * float(sps.binom.cdf(min(nb, nc), disc, 0.5)))
    return float(sps.chi2.sf((abs(nb - nc) - 1.0) ** 2 / disc, 1))


def _old_roc(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    yb = y.astype(bool)
    thr = np.unique(s)[::-1]
    tp = np.array([(s[yb] >= t).sum() for t in thr], dtype=np.float64)
    fp = np.array([(s[~yb] >= t).sum() for t in thr], dtype=np.float64)
    return (np.concatenate([[0.0], fp / (~yb).sum()]), np.concatenate([[0.0], tp / yb.sum()]),
            np.concatenate([[np.inf], thr]))  # fmt: skip


def _data(seed: int, n: int = 60, decimals: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.45).astype(int)
    y[:2] = [0, 1]
    s = 1 / (1 + np.exp(-rng.normal(y, 1.0)))
    return y, (np.round(s, decimals) if decimals is not None else s)


def test_clopper_pearson_is_scipy_binomtest_and_unchanged() -> None:
    for n in range(1, 41):
        for k in range(n + 1):
            got = stats.clopper_pearson(k, n)
            assert got is not None
            assert np.allclose(got, _old_clopper_pearson(k, n), atol=1e-12, rtol=0), (k, n)


@pytest.mark.parametrize("seed", range(6))
def test_mcnemar_from_statsmodels_is_unchanged(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = [20, 60, 200, 40, 120, 8][seed]
    a, b = rng.random(n) < 0.7, rng.random(n) < 0.55 + 0.05 * seed
    res = stats.mcnemar(a, b)
    assert res.p_value == pytest.approx(_old_mcnemar_p(res.b, res.c), abs=1e-12)
    assert (res.method == "exact binomial") == (res.b + res.c < 25)


@pytest.mark.parametrize("decimals", [None, 1, 2])
def test_roc_and_pr_from_sklearn_are_unchanged(decimals: int | None) -> None:
    y, s = _data(3, decimals=decimals)
    fpr, tpr, thr = stats.roc_curve(y, s)
    old_fpr, old_tpr, old_thr = _old_roc(y, s)
    assert np.array_equal(fpr, old_fpr) and np.array_equal(tpr, old_tpr) and np.array_equal(thr, old_thr)
    recall, precision, ap = stats.pr_curve(y, s)
    called = np.array([(s >= t).sum() for t in old_thr[1:]], dtype=np.float64)
    old_precision = np.concatenate([[1.0], old_tpr[1:] * y.sum() / called])
    assert np.allclose(recall, old_tpr) and np.allclose(precision, old_precision)
    assert ap == pytest.approx(float(np.sum(np.diff(old_tpr) * old_precision[1:])), abs=1e-12)
    assert math.isclose(stats.auc_delong(y, s).auc, float(np.trapezoid(tpr, fpr)), abs_tol=1e-12)


def test_folds_are_sklearn_stratified_group_kfold() -> None:
    rng = np.random.default_rng(1)
    groups = [f"P{i}" for i in rng.integers(0, 40, 100)]
    by_group = {g: int(rng.random() < 0.4) for g in set(groups)}
    labels = [by_group[g] for g in groups]
    folds = grouped_stratified_folds(labels, groups, 5, seed=7)
    ref = StratifiedGroupKFold(5, shuffle=True, random_state=7).split(np.zeros(100), labels, groups)
    assert [f.tolist() for f in folds] == [sorted(v.tolist()) for _, v in ref]
    assert sorted(np.concatenate(folds).tolist()) == list(range(100))
    owner = {groups[i]: k for k, f in enumerate(folds) for i in f}
    assert all(owner[groups[i]] == k for k, f in enumerate(folds) for i in f)  # a patient in one fold only
    with pytest.raises(ValueError, match="folds <= number of patients"):
        grouped_stratified_folds([0, 1, 0], ["a", "b", "a"], 3)


def test_result_uids_stay_hand_made_because_generate_uid_cannot_make_a_deterministic_2_25_uid() -> None:
    # pydicom 3: prefix=None gives a random UUID UID and ignores entropy_srcs; a "2.25." prefix hashes the
    # sources into up to 59 digits, more than the 128-bit UUID integer PS3.5 B.2 requires after 2.25.
    assert generate_uid(prefix=None, entropy_srcs=["x"]) != generate_uid(prefix=None, entropy_srcs=["x"])
    hashed = generate_uid(prefix="2.25.", entropy_srcs=["x"])
    assert int(hashed.split(".")[2]) >= 2**128
    uid = result_uid("1.2.3", "2.25.9", "sr-instance")
    assert uid == result_uid("1.2.3", "2.25.9", "sr-instance") and int(uid.split(".")[2]) < 2**128


@pytest.mark.parametrize("signed", [0, 1])
def test_windowing_by_pydicom_voi_matches_the_previous_window_formula(signed: int) -> None:
    from pydicom.dataset import Dataset

    from workers.colour import grey_to_uint8

    rng = np.random.default_rng(signed)
    for centre, width, slope, intercept in [(1500, 2000, 1, -100), (40, 400, 1, -1024), (300, 1, 2, 5), (100, 50.5, 0.5, 3)]:
        ds = Dataset()
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, signed
        ds.PhotometricInterpretation, ds.SamplesPerPixel = "MONOCHROME2", 1
        ds.WindowCenter, ds.WindowWidth, ds.RescaleSlope, ds.RescaleIntercept = centre, width, slope, intercept
        arr = (rng.integers(-2048, 2048, (64, 64)).astype(np.int16) if signed
               else rng.integers(0, 4096, (64, 64)).astype(np.uint16))  # fmt: skip
        x = arr.astype(np.float32) * slope + intercept  # previous: PS3.3 C.11.2.1.2.1 by hand
        lo, hi = centre - 0.5 - (width - 1) / 2, centre - 0.5 + (width - 1) / 2
        old = (np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1) * 255 + 0.5).astype(np.uint8)
        new = grey_to_uint8(arr, ds, lambda: (0.0, 1.0))
        diff = np.abs(new.astype(int) - old.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.005  # rounding of the last grey level only
