"""Recorded slow run (bench/learn.md): does the training recipe learn the phantom's label, and does the
video model beat the single-frame one, and does its Grad-CAM point at the lesion?

1. ``alnnode phantom --n N --seed S`` (skipped when the manifest exists),
2. ``alnnode train`` TIN (ResNet-18 variant, Grad-CAM on layer3) with 5-fold patient-grouped CV -> OOF predictions,
3. the same for the static ResNet50 on each loop's static image (manifest ``static_frame``), same folds and settings,
4. ``alnnode evaluate --predictions tin=... resnet50=... --fold-cams --manifest ...`` on both OOF prediction
   files: AUCs with DeLong CIs, the paired DeLong test and McNemar, and the cross-validated Grad-CAM pointing
   game (each fold's bundle explains its own held-out positives; CAM peak at the key frame inside, or within
   ``--pointing-tolerance`` px of, the mask ``masks/CASE.npz``); ``OUT/learn.json`` gathers the numbers.

Usage: ``python bench/learn.py --out /tmp/learn/run --size 112 --epochs 12`` (the recorded CPU run of bench/learn.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from workers.cli_args import parse_option
from workers.research import evaluate
from workers.research.phantom import generate
from workers.research.train import train_cv


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/learn/run"))
    p.add_argument("--phantoms", type=Path, default=None, help="phantom folder (default OUT/phantoms)")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--phantom-size", default="160x208", help="phantom frame size HxW")
    p.add_argument("--phantom-frames", type=int, default=32)
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
        h, w = (int(v) for v in args.phantom_size.split("x"))
        generate(phantoms, args.n, seed=args.phantom_seed, frames=args.phantom_frames, size=(h, w))
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
        preds.append(f"{arch}={args.out / arch / 'oof_predictions.csv'}")
        (args.out / "learn.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    if args.stage == "train":
        return 0
    t = time.perf_counter()
    rc = evaluate.main(["--predictions", *preds, "--manifest", str(manifest), "--out", str(args.out / "eval"),
                        "--fold-cams", "--pointing-tolerance", str(args.pointing_tolerance), "--overwrite"])  # fmt: skip
    result["evaluate_seconds"] = time.perf_counter() - t
    metrics = json.loads((args.out / "eval" / "metrics.json").read_text())
    result["evaluate"] = {"models": {k: {m: v[m] for m in ("auc", "auc_ci_low", "auc_ci_high", "accuracy", "sensitivity",
                                                          "specificity") if m in v} for k, v in metrics["models"].items()},
                          "comparisons": metrics["comparisons"], "localisation": metrics["localisation"],
                          "analysis": metrics["analysis"], "rc": rc}  # fmt: skip
    result["seconds"] = time.perf_counter() - started
    (args.out / "learn.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(result["evaluate"], indent=2, default=str))
    print(f"total {result['seconds'] / 60:.1f} min; details in {args.out / 'learn.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
