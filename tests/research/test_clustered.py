"""Several loops per patient: Obuchowski's clustered AUC variance is wider than DeLong's when loops are
correlated and agrees with a cluster bootstrap; patient-level AUC (mean of a patient's loops) matches pROC."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import require_tool
from workers.research import clustered, evaluate, stats


def _two_loops_per_patient(seed: int = 4, patients: int = 80) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A patient effect shared by both loops plus a small loop effect: strongly correlated loops."""
    rng = np.random.default_rng(seed)
    y_p = (np.arange(patients) % 2).astype(int)
    effect = rng.normal(0.9 * y_p, 1.0)
    labels = np.repeat(y_p, 2)
    scores = 1 / (1 + np.exp(-(np.repeat(effect, 2) + rng.normal(0, 0.3, 2 * patients))))
    ids = [f"P{i:03d}" for i in np.repeat(np.arange(patients), 2)]
    return labels, np.round(scores, 6), ids


def test_clustered_ci_is_wider_than_loop_level_delong() -> None:
    y, s, ids = _two_loops_per_patient()
    naive = stats.auc_delong(y, s)
    obu = clustered.auc_clustered(y, s, ids)
    assert obu.auc == pytest.approx(naive.auc)  # same point estimate, wider interval
    assert obu.ci_high - obu.ci_low > 1.2 * (naive.ci_high - naive.ci_low)
    assert obu.n_clusters == 80 and (obu.n_pos, obu.n_neg) == (80, 80)


def test_clustered_variance_agrees_with_a_cluster_bootstrap() -> None:
    y, s, ids = _two_loops_per_patient(seed=9)
    obu = clustered.auc_clustered(y, s, ids)
    rng = np.random.default_rng(0)
    yp, sp = y.reshape(-1, 2), s.reshape(-1, 2)
    boots = []
    for _ in range(1500):
        pick = rng.integers(0, len(yp), len(yp))
        yy, ss = yp[pick].ravel(), sp[pick].ravel()
        if 0 < yy.sum() < yy.size:
            boots.append(stats.auc_delong(yy, ss).auc)
    assert np.sqrt(obu.variance) == pytest.approx(float(np.std(boots)), rel=0.15)


def test_one_loop_per_patient_is_delong_up_to_small_sample_factors() -> None:
    rng = np.random.default_rng(2)
    y = (np.arange(120) % 2).astype(int)
    s = rng.normal(y, 1.0)
    obu = clustered.auc_clustered(y, s, [str(i) for i in range(120)])
    assert obu.variance == pytest.approx(stats.auc_delong(y, s).variance, rel=0.03)


def test_clustered_paired_test_of_a_model_against_itself_is_null() -> None:
    y, s, ids = _two_loops_per_patient()
    res = clustered.clustered_paired_test(y, s, s, ids)
    assert res["auc_diff"] == 0 and res["p_value"] == 1.0


def _write_predictions(path: Path, y: np.ndarray, s: np.ndarray, ids: list[str]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case_id", "label", "score", "patient_id"])
        for i, (label, score, pid) in enumerate(zip(y, s, ids, strict=True)):
            w.writerow([f"loop{i:03d}", int(label), f"{score:.6f}", pid])
    return path


def test_evaluate_unit_patient_matches_proc_on_patient_means(tmp_path: Path) -> None:
    rscript = require_tool("Rscript")
    y, s, ids = _two_loops_per_patient(seed=5)
    csv_path = _write_predictions(tmp_path / "tin.csv", y, s, ids)
    assert evaluate.main(["--predictions", f"tin={csv_path}", "--out", str(tmp_path / "patient")]) == 0
    patient = json.loads((tmp_path / "patient" / "metrics.json").read_text())
    assert patient["analysis"]["unit"] == "patient" and patient["models"]["tin"]["n"] == 80
    assert evaluate.main(["--predictions", f"tin={csv_path}", "--unit", "loop", "--out", str(tmp_path / "loop")]) == 0
    loop = json.loads((tmp_path / "loop" / "metrics.json").read_text())
    assert loop["models"]["tin"]["auc_variance"].startswith("Obuchowski") and loop["models"]["tin"]["n"] == 160
    assert "Obuchowski" in (tmp_path / "loop" / "report.md").read_text()
    r_code = (
        "suppressMessages(library(pROC)); d <- read.csv(commandArgs(TRUE)[1]);"
        "m <- aggregate(cbind(score, label) ~ patient_id, data = d, FUN = mean);"
        "r <- roc(m$label, m$score, levels = c(0, 1), direction = '<', quiet = TRUE);"
        "ci <- ci.auc(r, method = 'delong'); cat(sprintf('%.12f %.12f %.12f', ci[2], ci[1], ci[3]))"
    )
    run = subprocess.run([rscript, "-e", r_code, str(csv_path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    auc, lo, hi = map(float, run.stdout.split())
    row = patient["models"]["tin"]
    assert abs(row["auc"] - auc) < 1e-6 and abs(row["auc_ci_low"] - lo) < 1e-6 and abs(row["auc_ci_high"] - hi) < 1e-6
