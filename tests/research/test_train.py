"""``alnnode train``: every architecture trains, cross-validation writes what a researcher needs, folds are
grouped by patient, runs are reproducible and ``--resume`` continues exactly.

Tiny settings throughout (10 phantom loops of 10 frames at 64x96, clips of 4 frames at 32 px, 1-2 epochs)."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from workers.bundle import load_bundle
from workers.models import ARCHS, STATIC_ARCHS
from workers.research import evaluate
from workers.research.phantom import generate
from workers.research.train import main, train_cv
from workers.research.train_data import (
    ClipDataset,
    EvalClips,
    FrameCache,
    base_for,
    grouped_stratified_folds,
    read_manifest,
)  # fmt: skip
from workers.research.train_loop import FoldConfig, resolve_device, train_fold

TINY = {"frames": 4, "size": 32, "batch": 2}
TIN_OPTIONS = {"depth": 18}


@pytest.fixture(autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten loops (five positive), one per patient; returns the manifest path."""
    folder = tmp_path_factory.mktemp("train-phantoms")
    generate(folder, 10, seed=21, frames=10, size=(64, 96))
    return folder / "manifest.csv"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("frame-cache")


def _history(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_trains_one_epoch(arch: str, tiny_set: Path, cache_dir: Path) -> None:
    rows = read_manifest(tiny_set)
    options = TIN_OPTIONS if arch == "tin" else {}
    cfg = FoldConfig(arch, options, 1, 1e-4, TINY["batch"], TINY["frames"], TINY["size"], base_for(TINY["size"]), 0, 0)
    result = train_fold(cfg, rows[:4], rows[4:6], FrameCache(cache_dir, cfg.base), device=resolve_device("cpu"),
                        progress=False)  # fmt: skip
    (row,) = result.history
    assert np.isfinite(row["train_loss"]) and np.isfinite(row["val_loss"])
    assert len(result.val_scores) == 2 and all(0.0 <= s <= 1.0 for s in result.val_scores)
    clip = torch.rand(1, 3, TINY["frames"], TINY["size"], TINY["size"])
    with torch.no_grad():
        assert result.model(clip).shape == (1, 2)
    if arch in STATIC_ARCHS:  # trained on single frames, still takes a clip (mean logits over frames)
        with torch.no_grad():
            assert result.model(clip[:, :, 0]).shape == (1, 2)


def test_static_baselines_see_only_the_static_image_when_the_manifest_names_one(tiny_set: Path, cache_dir: Path) -> None:
    rows = read_manifest(tiny_set)
    assert all(r.static_frame is not None and 0 <= r.static_frame < 10 for r in rows)  # written by alnnode phantom
    cache = FrameCache(cache_dir, base_for(32))
    video, static = EvalClips(cache, 4, 32), EvalClips(cache, 4, 32, static_image=True)
    assert video(rows[0]).shape[1:] == (3, 4, 32, 32)
    image = static(rows[0])
    assert image.shape == (1, 3, 1, 32, 32)
    other = replace(rows[0], static_frame=(rows[0].static_frame + 5) % 10)
    assert not torch.equal(static(other), image)  # it is that frame, not a fixed one
    assert static(replace(rows[0], static_frame=None)).shape == video(rows[0]).shape  # no static image: every frame
    train = ClipDataset([rows[0]], cache, frames=4, size=32, single_frame=True, seed=0)
    assert train[0][0].shape == (3, 1, 32, 32)
    bad = replace(rows[0], static_frame=99)
    with pytest.raises(ValueError, match="static_frame 99 is not a frame of this 10-frame loop"):
        static(bad)
    with pytest.raises(ValueError, match="static_frame 99"):
        ClipDataset([bad], cache, frames=4, size=32, single_frame=True, seed=0)[0]


def test_cross_validation_writes_bundles_predictions_curves(tiny_set: Path, cache_dir: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    out = tmp_path / "run"
    rc = main(["--manifest", str(tiny_set), "--arch", "tin", "--out", str(out), "--folds", "5", "--epochs", "1",
               "--batch", "2", "--frames", "4", "--size", "32", "--options", "depth=18", "--ensemble",
               "--cache", str(cache_dir)])  # fmt: skip
    assert rc == 0
    assert "OOF AUC" in capsys.readouterr().out
    for k in range(5):
        loaded = load_bundle(out / f"fold{k}" / "bundle")
        assert loaded.frames == 4 and loaded.size == 32
        assert loaded.info.synthetic_only and not loaded.info.untrained  # phantoms: Manufacturer auto-detected
        assert loaded.metadata["training"]["folds"] == 5 and loaded.metadata["training"]["n_val"] == 2
    best = load_bundle(out / "best")
    summary = json.loads((out / "summary.json").read_text())
    assert best.info.model_uid == load_bundle(out / f"fold{summary['best_fold']}" / "bundle").info.model_uid
    assert len(summary["folds"]) == 5 and summary["config"]["lr"] == 1e-4 and 0 <= summary["oof_auc"] <= 1
    assert summary["oof_ci"][0] <= summary["oof_auc"] <= summary["oof_ci"][1]
    assert len(_history(out / "history.csv")) == 5
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    oof = evaluate.read_predictions(out / "oof_predictions.csv")
    assert sorted(oof.index) == sorted(r.case_id for r in read_manifest(tiny_set))
    assert len(evaluate.read_predictions(out / "ensemble_predictions.csv").index) == 10
    assert evaluate.main(["--predictions", str(out / "oof_predictions.csv"), "--out", str(tmp_path / "ev")]) == 0


def test_folds_keep_patients_together_and_classes_balanced() -> None:
    rng = np.random.default_rng(4)
    patients = [f"P{i:02d}" for i in range(23) for _ in range(int(rng.integers(1, 4)))]
    label_of = {p: int(rng.random() < 0.4) for p in set(patients)}
    labels = [label_of[p] for p in patients]
    folds = grouped_stratified_folds(labels, patients, 5, seed=3)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(patients)))
    for k, val in enumerate(folds):
        train = np.setdiff1d(np.arange(len(patients)), val)
        assert not {patients[i] for i in val} & {patients[i] for i in train}, f"fold {k} leaks a patient"
        assert abs(np.mean([labels[i] for i in val]) - np.mean(labels)) < 0.2
    again = grouped_stratified_folds(labels, patients, 5, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(folds, again, strict=True))
    other = grouped_stratified_folds(labels, patients, 5, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(folds, other, strict=True))
    with pytest.raises(ValueError, match="folds"):
        grouped_stratified_folds(labels[:3], patients[:3], 5)


def test_resume_continues_exactly_and_seed_repeats(tiny_set: Path, cache_dir: Path, tmp_path: Path) -> None:
    common = {"folds": 2, "lr": 1e-3, "seed": 7, "options": TIN_OPTIONS, "progress": False, "cache_dir": cache_dir,
              **TINY}  # fmt: skip
    train_cv(tiny_set, "tin", tmp_path / "whole", epochs=2, **common)  # type: ignore[arg-type]
    train_cv(tiny_set, "tin", tmp_path / "again", epochs=2, **common)  # type: ignore[arg-type]
    train_cv(tiny_set, "tin", tmp_path / "split", epochs=1, **common)  # type: ignore[arg-type]
    train_cv(tiny_set, "tin", tmp_path / "split", epochs=2, resume=True, **common)  # type: ignore[arg-type]
    whole = _history(tmp_path / "whole" / "history.csv")
    assert len(whole) == 4
    assert whole == _history(tmp_path / "again" / "history.csv")
    assert whole == _history(tmp_path / "split" / "history.csv")
    for k in range(2):
        a = torch.load(tmp_path / "whole" / f"fold{k}" / "bundle" / "models" / "model.pt", weights_only=True)
        b = torch.load(tmp_path / "split" / f"fold{k}" / "bundle" / "models" / "model.pt", weights_only=True)
        assert all(torch.equal(a[key], b[key]) for key in a), f"fold {k}: resumed weights differ"
    with pytest.raises(ValueError, match="lr"):  # a checkpoint is not continued with another recipe
        train_cv(tiny_set, "tin", tmp_path / "split", epochs=3, resume=True, **{**common, "lr": 1e-2})  # type: ignore[arg-type]


def test_cli_names_bad_input(tiny_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["--manifest", str(tiny_set), "--arch", "tin", "--out", str(tmp_path), "--folds", "11"])
    assert rc == 2
    assert "folds=11" in capsys.readouterr().err


def test_resume_accepts_another_grad_cam_layer_but_no_other_option(tmp_path: Path) -> None:
    from dataclasses import asdict

    from workers.research.train_loop import _check_resume

    cfg = FoldConfig("tin", {"depth": 18, "cam_layer": "layer3"}, 2, 1e-4, 2, 4, 32, base_for(32), 0, 0)
    _check_resume(asdict(replace(cfg, options={"depth": 18})), cfg, tmp_path / "c.pt")  # explanation only
    with pytest.raises(ValueError, match=r"made with options=\{'depth': 50\}"):
        _check_resume(asdict(replace(cfg, options={"depth": 50})), cfg, tmp_path / "c.pt")
