"""Recorded slow run (bench/learn.md): does the training recipe learn the phantom's label, and does the
video model beat the single-frame one, and does its Grad-CAM point at the lesion?

1. ``alnnode phantom --n N --seed S`` (skipped when the manifest exists),
2. ``alnnode train`` TIN (ResNet-18 variant, Grad-CAM on layer3) with 5-fold patient-grouped CV -> OOF predictions,
3. the same for the static ResNet50 on each loop's static image (manifest ``static_frame``), same folds and settings,
4. Grad-CAM pointing game: each fold's TIN bundle (``workers.inference.predict``) on its own held-out
   positives, CAM peak at the key frame inside (or within ``--pointing-tolerance`` px of) the mask (``masks/CASE.npz``),
5. ``alnnode evaluate`` on both OOF prediction files: AUCs with DeLong CIs, the paired DeLong test and the
   pointing game; ``OUT/learn.json`` gathers the numbers.

Usage: ``python bench/learn.py --out /tmp/learn/run --size 112 --epochs 12`` (the recorded CPU run of bench/learn.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.bundle import parse_option
from workers.research import evaluate, stats
from workers.research.phantom import generate
from workers.research.train import train_cv


def pointing_predictions(run: Path, manifest: Path, out_csv: Path) -> dict[str, Any]:
    """Copy ``run/oof_predictions.csv`` to ``out_csv`` adding key frame and CAM peak for held-out positives
    (each predicted by the bundle of the fold that held it out); returns the predict-vs-training-eval gap."""
    from workers.inference import predict

    with (run / "oof_predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    gaps = []
    started = time.perf_counter()
    for r in rows:
        r.update(key_frame="", cam_peak_y="", cam_peak_x="")
    for r in sorted(rows, key=lambda r: int(r["fold"])):  # one fold's bundle at a time (loaded once)
        if r["label"] != "1":
            continue
        pred = predict(run / f"fold{r['fold']}" / "bundle", r["path"], device="cpu")
        frames = list(pred.cam_frames)
        if pred.key_frame in frames:
            y, x = stats.cam_peak(np.asarray(pred.cam[frames.index(pred.key_frame)]))
            r.update(key_frame=pred.key_frame, cam_peak_y=int(y), cam_peak_x=int(x))
        gaps.append(abs(pred.probability - float(r["score"])))
    fields = ["case_id", "label", "score", "key_frame", "cam_peak_y", "cam_peak_x", "patient_id", "fold", "path"]
    with out_csv.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in fields} for r in rows)
    return {"n_predicted": len(gaps), "mean_abs_gap_predict_vs_train_eval": float(np.mean(gaps)),
            "max_abs_gap": float(np.max(gaps)), "seconds": time.perf_counter() - started}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/learn/run"))
    p.add_argument("--phantoms", type=Path, default=None, help="phantom folder (default OUT/phantoms)")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--phantom-seed", type=int, default=11)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--schedule", default="cosine")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--archs", nargs="+", default=["tin", "resnet50"])
    p.add_argument("--tin-options", nargs="*", default=["depth=18", "cam_layer=layer3"], metavar="KEY=VALUE",
                   help="TIN build options (default: ResNet-18 variant, Grad-CAM on layer3: 7x7 at 112 px)")
    p.add_argument("--pointing-tolerance", type=float, default=15.0,
                   help="pointing game tolerance in frame pixels (Zhang et al.: 15); the strict share is reported too")
    p.add_argument("--stage", choices=("all", "train", "report"), default="all",
                   help="train: only train_cv (run one process per arch in parallel); report: resume the finished "
                        "runs (instant), then pointing game and evaluate")  # fmt: skip
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("workers.bundle", "workers.inference", "workers.research.train_data"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    phantoms = args.phantoms or args.out / "phantoms"
    manifest = phantoms / "manifest.csv"
    if not manifest.is_file():
        t = time.perf_counter()
        generate(phantoms, args.n, seed=args.phantom_seed, frames=32, size=(160, 208))  # as in bench/learn.md
        logging.info("phantoms: %d loops in %.0f s", args.n, time.perf_counter() - t)
    result: dict[str, Any] = {"settings": vars(args) | {"out": str(args.out), "phantoms": str(phantoms)}}
    preds = []
    for arch in args.archs:
        options = dict(parse_option(o) for o in args.tin_options) if arch == "tin" else {}
        s = train_cv(manifest, arch, args.out / arch, folds=5, epochs=args.epochs, lr=args.lr, batch=args.batch,
                     frames=args.frames, size=args.size, device="cpu", seed=args.seed, options=options,
                     progress=False, schedule=args.schedule, cache_dir=args.out / "cache", resume=True)  # fmt: skip
        result[arch] = {"oof_auc": s.oof_auc, "oof_ci": s.oof_ci, "mean_fold_auc": s.mean_auc, "sd_fold_auc": s.sd_auc,
                        "fold_auc": [f.val_auc for f in s.folds], "best_fold": s.best_fold, "seconds": s.seconds}  # fmt: skip
        if args.stage == "train":
            continue
        csv_path = args.out / f"{arch}.csv"
        result[arch]["pointing_predict"] = pointing_predictions(args.out / arch, manifest, csv_path)
        preds.append(csv_path)
        (args.out / "learn.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    if args.stage == "train":
        return 0
    rc = evaluate.main(["--predictions", *map(str, preds), "--manifest", str(manifest), "--out", str(args.out / "eval"),
                        "--pointing-tolerance", str(args.pointing_tolerance)])  # fmt: skip
    metrics = json.loads((args.out / "eval" / "metrics.json").read_text())
    result["evaluate"] = {"models": {k: {m: v[m] for m in ("auc", "auc_ci_low", "auc_ci_high", "accuracy", "sensitivity",
                                                          "specificity") if m in v} for k, v in metrics["models"].items()},
                          "comparisons": metrics["comparisons"], "localisation": metrics["localisation"], "rc": rc}  # fmt: skip
    result["seconds"] = time.perf_counter() - started
    (args.out / "learn.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(result["evaluate"], indent=2, default=str))
    print(f"total {result['seconds'] / 60:.1f} min; details in {args.out / 'learn.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
