"""``alnnode train``: the study's training recipe with patient-grouped, stratified k-fold cross-validation.

Recipe (seed/aln-us-video-paper.txt): random init, Adam, lr 1e-4, batch 4, 300 epochs, cross-entropy,
T = 16, 5-fold cross-validation, the augmentation of :mod:`workers.preprocess`; the fold model with the
highest held-out AUC is the one that is deployed (``OUT/best``). Folds are grouped by patient (no patient in
both training and validation) and stratified by label. Static baselines (resnet50, inceptionv3, vgg19) are
models of the static image, as in the study: when the manifest has a ``static_frame`` column (the frame the
sonographer stored; ``alnnode phantom`` writes the lesion's largest section) they learn from and are
evaluated on that frame alone. Without it they learn from one random frame of the loop per step and are
evaluated, as at inference, on every sampled frame of the evaluation clips with their logits averaged.

Outputs under ``OUT``: ``fold{k}/bundle`` (MONAI bundle), ``fold{k}/checkpoint.pt``, ``best/``,
``oof_predictions.csv`` (``case_id,label,score``: each loop scored by the fold that held it out; usable by
``alnnode evaluate --predictions``), ``history.csv``, ``curves.png`` (the study's Figure 4), ``summary.json``
and, with ``--ensemble``, ``ensemble_predictions.csv`` (mean of the fold models).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.bundle import save_bundle
from workers.bundle_trust import add_statistics
from workers.cli_args import (
    Once,
    OnceFlag,
    Parser,
    check_out_dir,
    merge_options,
    parse_option,
    print_error,
    setup_logging,
)
from workers.models import ARCHS, STATIC_ARCHS
from workers.research import stats
from workers.research.gate_fit import calibrate, fold_statistics
from workers.research.inputs import EvaluationError
from workers.research.train_data import (
    CACHE_MAX_GB,
    EvalClips,
    FrameCache,
    ManifestRow,
    base_for,
    describe_data,
    grouped_stratified_folds,
    is_synthetic,
    read_manifest,
)  # fmt: skip
from workers.research.train_loop import HISTORY_COLUMNS, FoldConfig, evaluate_rows, resolve_device, train_fold

logger = logging.getLogger(__name__)

__all__ = ["FoldSummary", "Summary", "main", "train_cv", "train_demo_bundle"]


@dataclass
class FoldSummary:
    fold: int
    n_train: int
    n_val: int
    epoch: int  # epoch whose weights the bundle holds
    val_auc: float  # held-out AUC of those weights
    best_epoch: int
    best_val_auc: float
    bundle: str
    seconds: float


@dataclass
class Summary:
    """What ``summary.json`` holds; ``best_bundle`` is ``OUT/best``."""

    out: str
    arch: str
    folds: list[FoldSummary]
    mean_auc: float
    sd_auc: float
    oof_auc: float
    oof_ci: tuple[float, float]
    best_fold: int
    best_bundle: str
    oof_predictions: str
    config: dict[str, Any]
    data: dict[str, Any]
    versions: dict[str, str]
    seconds: float
    ensemble_predictions: str | None = None
    notes: list[str] = field(default_factory=list)
    calibration: dict[str, Any] | None = None  # of the deployed bundle (workers.calibration)
    ood: dict[str, Any] | None = None  # of the deployed bundle (workers.ood)


def train_cv(
    manifest: str | Path, arch: str, out: str | Path, *, folds: int = 5, epochs: int = 300, lr: float = 1e-4,
    batch: int = 4, frames: int = 16, size: int = 224, device: str | None = None, seed: int = 0,
    resume: bool = False, options: dict[str, Any] | None = None, progress: bool = True, ensemble: bool = False,
    workers: int = 0, synthetic: bool | None = None, select: str = "last", schedule: str = "constant",
    cache_dir: str | Path | None = None, overwrite: bool = False, keep_cache: bool = False,
    cache_max_gb: float | None = None, operating_point: str = "youden", target_sensitivity: float = 0.9,
    ood_percentile: float = 99.0,
) -> Summary:
    """Cross-validate ``arch`` on the loops of ``manifest`` and write bundles, predictions and curves to ``out``.

    ``synthetic`` (None: every DICOM's Manufacturer is "aln-node phantom") sets the bundles' synthetic_only.
    ``select="last"`` keeps each fold's final weights; ``"best"`` its epoch with the highest held-out AUC
    (optimistic: the held-out fold then chose the epoch). ``schedule="cosine"`` anneals lr to 0 (not the
    study's). ``cache_dir`` holds the decoded frames and may be shared between runs; the default ``out/cache``
    is removed at the end unless ``keep_cache``. The deployed bundle also holds the input gate's OOD statistics
    (its fold's training loops, threshold at ``ood_percentile`` of its held-out loops) and the temperature and
    operating point (``youden`` or ``sensitivity`` at ``target_sensitivity``) fitted on every fold's out-of-fold
    logits (workers.research.gate_fit). ``out`` must be new or empty unless ``resume`` or
    ``overwrite``; the run is refused when the decoded frames would take more than ``cache_max_gb``.
    """
    if arch not in ARCHS:
        raise ValueError(f"arch {arch!r} is not one of {', '.join(ARCHS)}")
    if select not in ("last", "best") or schedule not in ("constant", "cosine"):
        raise ValueError(f"select must be last|best and schedule constant|cosine, got {select!r}, {schedule!r}")
    if min(epochs, batch, frames) < 1 or lr <= 0:
        raise ValueError(f"epochs, batch, frames must be >= 1 and lr > 0, got {epochs}, {batch}, {frames}, {lr}")
    started = time.perf_counter()
    manifest, out = Path(manifest), Path(out)
    check_out_dir(out, overwrite=overwrite, resume=resume, ours=TRAIN_OUTPUTS)
    rows = read_manifest(manifest)
    splits = grouped_stratified_folds([r.label for r in rows], [r.patient_id for r in rows], folds, seed)
    dev = resolve_device(device)
    synthetic_only = bool(synthetic) or is_synthetic(rows)  # a single phantom makes the bundle research-only
    data = describe_data(manifest, rows, synthetic_only)
    base = base_for(size)
    cache = FrameCache(Path(cache_dir) if cache_dir else out / "cache", base, max_gb=cache_max_gb)
    cache.check_budget(rows)
    logger.info("%s: %d folds x %d epochs on %d loops (%d patients), %s px, T=%d, on %s", arch, folds, epochs,
                len(rows), data.patients, size, frames, dev)  # fmt: skip
    cache.warm(rows, progress)
    out.mkdir(parents=True, exist_ok=True)
    opts = dict(options or {})
    if {"frames", "size", "weights"} & set(opts):
        raise ValueError(f"options {sorted(opts)}: give frames and size with --frames/--size; no weights (random init)")
    config = {"manifest": str(manifest.resolve()), "arch": arch, "folds": folds, "epochs": epochs, "lr": lr,
              "batch": batch, "frames": frames, "size": size, "base": base, "device": str(dev), "seed": seed,
              "options": opts, "select": select, "schedule": schedule, "optimizer": "Adam", "loss": "cross-entropy",
              "static_single_frame": arch in STATIC_ARCHS,
              "static_image": arch in STATIC_ARCHS and all(r.static_frame is not None for r in rows)}  # fmt: skip
    oof = np.full(len(rows), np.nan)
    fold_of = np.full(len(rows), -1)
    summaries, history, models, oods = [], [], [], []
    oof_logits: list[np.ndarray] = [np.zeros((0, 2))] * len(rows)
    for k, val_idx in enumerate(splits):
        train_idx = np.setdiff1d(np.arange(len(rows)), val_idx)
        cfg = FoldConfig(arch, opts, epochs, lr, batch, frames, size, base, seed, k, schedule, select)
        fold_dir = out / f"fold{k}"
        result = train_fold(cfg, [rows[i] for i in train_idx], [rows[i] for i in val_idx], cache, device=dev,
                            checkpoint=fold_dir / "checkpoint.pt", resume=resume, workers=workers, progress=progress)  # fmt: skip
        oof[val_idx], fold_of[val_idx] = result.val_scores, k
        ood, held_out = fold_statistics(result.model, [rows[i] for i in train_idx], [rows[i] for i in val_idx], cache,
                                        frames=frames, size=size, device=dev, percentile=ood_percentile)  # fmt: skip
        for i, logits in zip(val_idx, held_out.logits, strict=True):
            oof_logits[int(i)] = logits
        oods.append(ood)
        training = {"folds": folds, "fold": k, "epochs": epochs, "kept_epoch": result.epoch, "lr": lr, "batch": batch,
                    "optimizer": "Adam", "schedule": schedule, "seed": seed, "held_out_auc": _num(result.val_auc),
                    "best_epoch": result.best_epoch, "best_held_out_auc": _num(result.best_auc),
                    "n_train": len(train_idx), "n_val": len(val_idx), "data": data.text()}  # fmt: skip
        bundle = save_bundle(result.model.cpu(), fold_dir / "bundle", arch=arch, options=cfg.build_options(),
                             name=f"aln-{arch}-fold{k}", synthetic_only=synthetic_only, training=training, ood=ood)  # fmt: skip
        summaries.append(FoldSummary(k, len(train_idx), len(val_idx), result.epoch, result.val_auc, result.best_epoch,
                                     result.best_auc, str(bundle), result.seconds))  # fmt: skip
        history += result.history
        if ensemble:
            models.append(result.model)
    labels = np.array([r.label for r in rows])
    est = stats.auc_delong(labels, oof)
    aucs = np.array([s.val_auc for s in summaries], dtype=float)
    best = int(np.nanargmax(np.where(np.isnan(aucs), -np.inf, aucs)))
    best_dir = out / "best"
    if best_dir.exists():
        shutil.rmtree(best_dir)
    calibration = calibrate(oof_logits, labels.tolist(), method=operating_point, target_sensitivity=target_sensitivity)
    for fold, ood in zip(summaries, oods, strict=True):  # the study's calibration, each fold's own OOD statistics
        add_statistics(Path(fold.bundle), calibration, ood)
    shutil.copytree(summaries[best].bundle, best_dir)
    _add_torchscript(best_dir)  # the deployed bundle stands alone (models/model.ts for configs/inference.json)
    oof_path = _write_predictions(out / "oof_predictions.csv", rows, oof, fold_of)
    _write_history(out / "history.csv", history)
    plot_curves(history, out / "curves.png", title=f"{arch}: {folds}-fold cross-validation")
    summary = Summary(str(out), arch, summaries, float(np.nanmean(aucs)), float(np.nanstd(aucs, ddof=1)) if folds > 1 else 0.0,
                      est.auc, (est.ci_low, est.ci_high), best, str(best_dir), str(oof_path), config, asdict(data),
                      _versions(), 0.0, calibration=calibration.to_dict(), ood=oods[best].metadata())  # fmt: skip
    if ensemble:
        clips = EvalClips(cache, frames, size, static_image=arch in STATIC_ARCHS)
        scores = np.mean([evaluate_rows(m.to(dev), rows, clips, dev)[0] for m in models], axis=0)
        summary.ensemble_predictions = str(_write_predictions(out / "ensemble_predictions.csv", rows, scores, None))
        summary.notes.append("ensemble_predictions.csv: each loop was in the training data of folds-1 of the "
                             "averaged models; not a held-out estimate")  # fmt: skip
    if config["static_image"]:
        summary.notes.append("static baseline: trained and evaluated on each loop's static image (manifest "
                             "static_frame) alone")  # fmt: skip
    elif arch in STATIC_ARCHS:
        summary.notes.append("static baseline: trained on one random frame per loop and step (rows without "
                             "static_frame); evaluated on every sampled frame of the evaluation clips with mean "
                             "logits")  # fmt: skip
    if not cache_dir and not keep_cache:
        cache.remove()
    summary.seconds = time.perf_counter() - started
    (out / "summary.json").write_text(json.dumps(_clean(asdict(summary)), indent=2) + "\n")
    logger.info("%s: OOF AUC %.3f (%.3f-%.3f), folds %s, best fold %d, %.0f s", arch, est.auc, est.ci_low,
                est.ci_high, np.round(aucs, 3).tolist(), best, summary.seconds)  # fmt: skip
    return summary


def _add_torchscript(bundle: Path) -> None:
    from workers.bundle import load_bundle
    from workers.bundle_export import save_torchscript

    loaded = load_bundle(bundle)
    save_torchscript(loaded.model, bundle / "models" / "model.ts", loaded.frames, loaded.size)


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _clean(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    if isinstance(v, float | np.floating):
        return _num(float(v))
    return v.item() if isinstance(v, np.generic) else v


def _versions() -> dict[str, str]:
    import monai

    from workers import __version__

    return {"aln_node": __version__, "torch": torch.__version__, "monai": monai.__version__,
            "numpy": np.__version__, "python": platform.python_version()}  # fmt: skip


def _write_predictions(path: Path, rows: list[ManifestRow], scores: np.ndarray, folds: np.ndarray | None) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case_id", "label", "score", "patient_id", "fold", "path"])
        for i, r in enumerate(rows):
            writer.writerow([r.case_id, r.label, f"{float(scores[i]):.10g}", r.patient_id,
                             "" if folds is None else int(folds[i]), r.path])  # fmt: skip
    return path


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=HISTORY_COLUMNS)
        writer.writeheader()
        for row in history:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def plot_curves(history: list[dict[str, float]], path: Path, title: str = "") -> Path:
    """Loss and AUC against epoch, training and held-out, one line per fold (the study's Figure 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    panels = [("train_loss", "training loss"), ("train_auc", "training AUC"),
              ("val_loss", "held-out loss"), ("val_auc", "held-out AUC")]  # fmt: skip
    for ax, (key, label) in zip(axes.ravel(), panels, strict=True):
        for fold in sorted({int(h["fold"]) for h in history}):
            rows = [h for h in history if int(h["fold"]) == fold]
            ax.plot([h["epoch"] for h in rows], [h[key] for h in rows], marker="." if len(rows) < 30 else None,
                    label=f"fold {fold}")  # fmt: skip
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if "auc" in key:
            ax.set_ylim(0, 1.02)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def train_demo_bundle(
    out_dir: Path, *, n: int = 40, seed: int = 0, epochs: int = 30, phantom_size: tuple[int, int] = (160, 208),
    size: int = 64,
) -> Path:
    """Train a small TIN (ResNet-18 variant, 8 frames, ``size`` px, Grad-CAM on layer3) on ``n`` phantom
    loops of 24 frames for ``make demo``.

    One patient-grouped 80/20 split (not cross-validation); a few minutes on 2 CPU cores. The held-out
    AUC is written into the bundle's training metadata. Returns the bundle path (``out_dir/bundle``).
    """
    from workers.research.phantom import generate

    out_dir = Path(out_dir)
    phantoms = out_dir / "phantoms"
    if not (phantoms / "manifest.csv").is_file():
        generate(phantoms, n, seed=seed, frames=24, size=phantom_size)
    rows = read_manifest(phantoms / "manifest.csv")
    val_idx = grouped_stratified_folds([r.label for r in rows], [r.patient_id for r in rows], 5, seed)[0]
    train_idx = np.setdiff1d(np.arange(len(rows)), val_idx)
    options = {"depth": 18, "cam_layer": "layer3"}  # a 5x5 heatmap at 80 px rather than layer4's 3x3
    cfg = FoldConfig("tin", options, epochs, 1e-3, 4, 8, size, base_for(size), seed, 0, "cosine", "last")
    cache = FrameCache(out_dir / "cache", cfg.base)
    result = train_fold(cfg, [rows[i] for i in train_idx], [rows[i] for i in val_idx], cache,
                        device=resolve_device(None), progress=False)  # fmt: skip
    training = {"epochs": cfg.epochs, "lr": cfg.lr, "batch": cfg.batch, "schedule": cfg.schedule, "seed": seed,
                "split": "one patient-grouped 80/20 split", "held_out_auc": _num(result.val_auc),
                "n_train": len(train_idx), "n_val": len(val_idx),
                "data": f"{len(rows)} aln-node phantom loops (seed {seed}), 24 frames at {phantom_size[0]}x{phantom_size[1]}"}  # fmt: skip
    logger.info("demo bundle: held-out AUC %.3f on %d loops", result.val_auc, len(val_idx))
    val_rows = [rows[i] for i in val_idx]
    ood, held_out = fold_statistics(result.model, [rows[i] for i in train_idx], val_rows, cache, frames=cfg.frames,
                                    size=size, device=resolve_device(None))  # fmt: skip
    calibration = calibrate(held_out.logits, [r.label for r in val_rows])  # held-out split: the demo's only OOF data
    return save_bundle(result.model.cpu(), out_dir / "bundle", arch="tin", options=cfg.build_options(),
                       name="aln-tin18-demo", synthetic_only=True, training=training, torchscript=True,
                       calibration=calibration, ood=ood)  # fmt: skip


TRAIN_OUTPUTS = ("fold*", "best", "oof_predictions.csv", "ensemble_predictions.csv", "history.csv", "curves.png",
                 "summary.json", "cache")


def build_parser() -> Parser:
    p = Parser(prog="alnnode train", description=__doc__.splitlines()[0])
    p.add_argument("--manifest", type=Path, required=True, action=Once,
                   help="CSV path,label,patient_id[,case_id][,static_frame]")
    p.add_argument("--arch", required=True, choices=ARCHS, action=Once)
    p.add_argument("--out", type=Path, required=True, action=Once, help="output folder (empty or new)")
    p.add_argument("--overwrite", action=OnceFlag, help="replace the results of an earlier run in --out")
    p.add_argument("--resume", action=OnceFlag, help="continue the run in --out from each fold's checkpoint")
    p.add_argument("--folds", type=int, default=5, action=Once)
    p.add_argument("--epochs", type=int, default=300, action=Once,
                   help="epochs per fold (the study's recipe; a CPU needs minutes per epoch at 224 px)")
    p.add_argument("--lr", type=float, default=1e-4, action=Once, help="Adam learning rate")
    p.add_argument("--batch", type=int, default=4, action=Once)
    p.add_argument("--frames", type=int, default=16, action=Once, help="clip length T")
    p.add_argument("--size", type=int, default=224, action=Once, help="model input side in pixels")
    p.add_argument("--device", default="auto", action=Once, help="auto|cpu|cuda[:N]")
    p.add_argument("--seed", type=int, default=0, action=Once)
    p.add_argument("--ensemble", action=OnceFlag, help="also write the fold-ensemble predictions")
    p.add_argument("--options", "--option", nargs="+", action="extend", default=[], type=parse_option,
                   metavar="KEY=VALUE", help="model options, repeat or list them: --options depth=18 cam_layer=layer3")
    p.add_argument("--workers", type=int, default=0, action=Once, help="DataLoader worker processes")
    p.add_argument("--synthetic", choices=("auto", "yes", "no"), default="auto", action=Once,
                   help="bundle synthetic_only (auto: DICOM Manufacturer is 'aln-node phantom')")
    p.add_argument("--select", choices=("last", "best"), default="last", action=Once,
                   help="fold weights kept: last epoch or best held-out")
    p.add_argument("--schedule", choices=("constant", "cosine"), default="constant", action=Once,
                   help="learning-rate schedule")
    p.add_argument("--cache", type=Path, default=None, action=Once,
                   help="decoded-frame cache folder, kept (default: OUT/cache, removed when the run ends)")
    p.add_argument("--keep-cache", action=OnceFlag, help="keep OUT/cache after the run")
    p.add_argument("--cache-max-gb", type=float, default=CACHE_MAX_GB, action=Once,
                   help="refuse to start when the decoded frames would need more disk than this")
    p.add_argument("--operating-point", choices=("youden", "sensitivity"), default="youden", action=Once,
                   help="Present/Absent threshold chosen on out-of-fold data: Youden's J or --target-sensitivity")
    p.add_argument("--target-sensitivity", type=float, default=0.9, action=Once, help="with --operating-point sensitivity")
    p.add_argument("--ood-percentile", type=float, default=99.0, action=Once,
                   help="input-gate OOD threshold: this percentile of held-out training loops' scores")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``alnnode train``; 0 on success, 2 with a one-line error on bad input."""
    args = build_parser().parse_args(argv)
    setup_logging(logging.INFO)
    synthetic = {"auto": None, "yes": True, "no": False}[args.synthetic]
    try:
        options = merge_options(args.options)
        s = train_cv(args.manifest, args.arch, args.out, folds=args.folds, epochs=args.epochs, lr=args.lr,
                     batch=args.batch, frames=args.frames, size=args.size, device=args.device, seed=args.seed,
                     resume=args.resume, options=options, ensemble=args.ensemble, workers=args.workers,
                     synthetic=synthetic, select=args.select, schedule=args.schedule, cache_dir=args.cache,
                     overwrite=args.overwrite, keep_cache=args.keep_cache, cache_max_gb=args.cache_max_gb,
                     operating_point=args.operating_point, target_sensitivity=args.target_sensitivity,
                     ood_percentile=args.ood_percentile)  # fmt: skip
    except (EvaluationError, ValueError, OSError) as exc:
        print_error("alnnode train", exc)
        return 2
    for f in s.folds:
        print(f"fold {f.fold}: held-out AUC {f.val_auc:.3f} (epoch {f.epoch}; best {f.best_val_auc:.3f} at {f.best_epoch})")
    print(f"{s.arch}: OOF AUC {s.oof_auc:.3f} (95% CI {s.oof_ci[0]:.3f}-{s.oof_ci[1]:.3f}), mean fold AUC "
          f"{s.mean_auc:.3f} ± {s.sd_auc:.3f}; best fold {s.best_fold} -> {s.best_bundle}")  # fmt: skip
    if s.calibration and s.ood:
        print(f"deployed bundle: temperature {s.calibration['temperature']:.3f}, operating point "
              f"{s.calibration['threshold']:.3f} ({s.calibration['method']}), OOD threshold {s.ood['threshold']:.2f}")
    print(f"wrote {s.oof_predictions}, {Path(s.out) / 'history.csv'}, curves.png, summary.json in {s.seconds:.0f} s")
    return 0
