"""Calibration, operating point and OOD statistics: the math, and that they survive a bundle's save/load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest_models import TINY, small_tin
from sklearn.metrics import roc_auc_score

from workers import bundle_trust
from workers.bundle import load_bundle, save_bundle, weights_uid
from workers.calibration import (
    expected_calibration_error,
    fit_calibration,
    loop_probability,
    operating_point,
    reliability_diagram,
)
from workers.errors import BundleError
from workers.ood import OodStats, fit_ood, score_loop


def overconfident_loops(n: int = 400, scale: float = 6.0, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Loops of 3 clips whose labels follow a calibrated logistic model, with logits multiplied by ``scale``.

    A network that has memorised its training set behaves like this: the ranking is right but every
    probability is pushed towards 0 or 1.
    """
    rng = np.random.default_rng(seed)
    margin = rng.normal(0.0, 1.5, n)  # the true log-odds of each loop
    labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-margin))).astype(int)
    logits = []
    for m in margin:
        clip_margin = m + rng.normal(0.0, 0.2, 3)
        logits.append(scale * np.stack([-clip_margin / 2, clip_margin / 2], axis=1))
    return logits, labels


def test_temperature_scaling_lowers_the_ece_of_an_overconfident_model(tmp_path: Path) -> None:
    logits, labels = overconfident_loops()
    before = [loop_probability(x) for x in logits]

    cal = fit_calibration(logits, labels)
    after = [loop_probability(x, cal.temperature) for x in logits]

    assert cal.temperature == pytest.approx(6.0, rel=0.3)  # it undoes the over-confidence
    assert expected_calibration_error(labels, after) < 0.5 * expected_calibration_error(labels, before)
    assert cal.ece_after < cal.ece_before and cal.n == len(labels)
    # one temperature keeps each clip's ranking; the loop mean of clip softmaxes moves only slightly
    assert roc_auc_score(labels, after) == pytest.approx(roc_auc_score(labels, before), abs=0.01)
    assert reliability_diagram(labels, after, tmp_path / "rel.png").stat().st_size > 5000


def test_operating_points_youden_and_target_sensitivity() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    probs = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])

    threshold, sens, spec = operating_point(labels, probs, "youden")
    assert (threshold, sens, spec) == (pytest.approx(0.65), 0.75, 1.0)  # half-way between 0.7 and 0.6
    threshold, sens, _ = operating_point(labels, probs, "sensitivity", target_sensitivity=1.0)
    assert threshold == pytest.approx(0.25) and sens == 1.0  # half-way to the next ROC cut (0.1)
    separable = operating_point([0, 0, 1, 1], [0.0, 0.1, 1.0, 1.0])
    assert 0.1 <= separable[0] < 0.99  # not 1.0: a new positive at 0.99 must still be Present
    with pytest.raises(ValueError, match="'f1'"):
        operating_point(labels, probs, "f1")


def test_mahalanobis_gate_flags_features_unlike_the_training_loops() -> None:
    rng = np.random.default_rng(1)
    d = 64
    train = [rng.normal(0, 1, (4, d)) + (2.0 if i % 2 else 0.0) for i in range(60)]
    held_out = [rng.normal(0, 1, (4, d)) + (2.0 if i % 2 else 0.0) for i in range(20)]
    logits = [rng.normal(0, 1, (4, 2)) for _ in held_out]

    stats = fit_ood(train, [i % 2 for i in range(60)], held_out, logits, percentile=99.0)
    inside = [score_loop(stats, f, lg) for f, lg in zip(held_out, logits, strict=True)]
    outside = score_loop(stats, rng.normal(0, 1, (4, d)) + 6.0, np.array([[-5.0, 5.0]] * 4))

    assert sum(s.out_of_distribution for s in inside) <= 1  # the 99th percentile of these very loops
    assert outside.out_of_distribution and outside.score > 2 * stats.threshold
    assert "out of distribution" in outside.reason() and f"{stats.threshold:.1f}" in outside.reason()
    # a confident wrong answer has a *low* energy: that is why the feature distance gates, not the energy
    assert outside.energy < stats.energy_threshold


def _stats() -> tuple[OodStats, object]:
    rng = np.random.default_rng(2)
    d = 512  # TIN-R18 penultimate width
    feats = [rng.normal(0, 1, (3, d)) for _ in range(12)]
    stats = fit_ood(feats[:8], [0, 1] * 4, feats[8:], [rng.normal(0, 1, (3, 2)) for _ in range(4)])
    logits, labels = overconfident_loops(40)
    return stats, fit_calibration(logits, labels)


def test_calibration_and_ood_statistics_survive_save_and_load(tmp_path: Path) -> None:
    stats, cal = _stats()
    path = save_bundle(small_tin(), tmp_path / "b", arch="tin", options=dict(TINY), name="t", synthetic_only=True,
                       calibration=cal, ood=stats)  # type: ignore[arg-type]

    loaded = load_bundle(path)

    assert loaded.calibration == cal
    assert loaded.info.operating_point == cal.threshold  # type: ignore[attr-defined]
    assert loaded.ood is not None and loaded.ood.threshold == stats.threshold
    np.testing.assert_array_equal(loaded.ood.precision, stats.precision)
    np.testing.assert_array_equal(loaded.ood.means, stats.means)
    assert json.loads((path / "configs" / "metadata.json").read_text())["model_uid_covers"] == bundle_trust.COVERS


@pytest.mark.parametrize(
    ("edit", "what"),
    [
        (lambda m: m.update(synthetic_only=False), "research flag cleared"),
        (lambda m: m.update(untrained=True), "flag set"),
        (lambda m: m["calibration"].update(threshold=0.2), "operating point"),
        (lambda m: m["ood"].update(threshold=1e9), "OOD threshold"),
    ],
)
def test_editing_metadata_invalidates_the_model_uid(tmp_path: Path, edit, what: str) -> None:  # type: ignore[no-untyped-def]
    stats, cal = _stats()
    path = save_bundle(small_tin(), tmp_path / "b", arch="tin", options=dict(TINY), name="t", synthetic_only=True,
                       calibration=cal, ood=stats)  # type: ignore[arg-type]
    meta_path = path / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    edit(meta)
    meta_path.write_text(json.dumps(meta))

    with pytest.raises(BundleError, match="^model_uid"):
        load_bundle(path)


def test_a_changed_ood_array_invalidates_the_model_uid(tmp_path: Path) -> None:
    stats, cal = _stats()
    path = save_bundle(small_tin(), tmp_path / "b", arch="tin", options=dict(TINY), name="t", synthetic_only=True,
                       calibration=cal, ood=stats)  # type: ignore[arg-type]
    OodStats(stats.means + 1.0, stats.precision, stats.threshold, stats.energy_threshold, stats.percentile,
             stats.n_fit, stats.n_threshold).save(path)
    with pytest.raises(BundleError, match="^model_uid"):
        load_bundle(path)


def test_bundles_without_statistics_and_old_bundles_still_load(tmp_path: Path) -> None:
    plain = load_bundle(save_bundle(small_tin(), tmp_path / "plain", arch="tin", options=dict(TINY), name="t",
                                    synthetic_only=True, untrained=True))
    assert plain.calibration is None and plain.ood is None and plain.info.operating_point is None

    # A bundle written before the UID covered the flags: weights-only UID, no model_uid_covers.
    old = shutil.copytree(tmp_path / "plain", tmp_path / "old")
    meta = json.loads((old / "configs" / "metadata.json").read_text())
    del meta["model_uid_covers"], meta["calibration"], meta["ood"]
    meta["model_uid"] = weights_uid(small_tin().state_dict())
    (old / "configs" / "metadata.json").write_text(json.dumps(meta))
    assert load_bundle(old).info.untrained  # research-only: nothing to bypass, it loads

    meta.update(synthetic_only=False, untrained=False)  # clearing the flags of an old bundle is refused
    (old / "configs" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="^model_uid: .* covers the weights only"):
        load_bundle(old)


def test_evaluate_reports_ece_reliability_and_the_ood_distribution(tmp_path: Path) -> None:
    from workers.research import evaluate, gate_report

    logits, labels = overconfident_loops(120)
    csv_path = tmp_path / "oof.csv"
    csv_path.write_text("case_id,label,score\n" + "".join(
        f"c{i},{y},{loop_probability(x):.6f}\n" for i, (x, y) in enumerate(zip(logits, labels, strict=True))))

    assert evaluate.main(["--predictions", str(csv_path), "--out", str(tmp_path / "report")]) == 0
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    ece = metrics["calibration"]["oof"]["ece"]
    assert ece == pytest.approx(expected_calibration_error(labels, [loop_probability(x) for x in logits]))
    assert (tmp_path / "report" / metrics["calibration"]["oof"]["reliability_diagram"]).stat().st_size > 5000

    rows = [{"ood_score": s, "ood_threshold": 10.0} for s in (1.0, 5.0, 9.0, 12.0)]
    summary = gate_report.ood_summary(rows, tmp_path)
    assert summary["gated"] == 1 and summary["n"] == 4 and summary["quantiles"]["max"] == 12.0
    assert (tmp_path / "ood_scores.png").is_file()
