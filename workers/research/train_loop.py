"""One fold of ``alnnode train``: Adam + cross-entropy epochs, held-out evaluation, checkpoints and resume.

Reproducibility: every random draw of an epoch (dropout, shuffling, clip phases, augmentation) is derived
from ``(seed, fold, epoch)`` rather than carried over from the previous epoch, and the model, optimizer and
AMP scaler states are checkpointed after every epoch. So a run interrupted after epoch e and resumed gives
the same weights as an uninterrupted one (on the same device; CPU kernels are deterministic, CUDA ones are
asked to be with ``torch.use_deterministic_algorithms(True, warn_only=True)``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from workers.inference import configure_determinism
from workers.models import STATIC_ARCHS, ClipClassifier, build
from workers.research import stats
from workers.research.progress import on_terminal
from workers.research.progress import progress as show_progress
from workers.research.train_data import ClipDataset, EvalClips, FrameCache, ManifestRow

logger = logging.getLogger(__name__)

HISTORY_COLUMNS = ["fold", "epoch", "train_loss", "train_auc", "val_loss", "val_auc", "lr", "seconds"]
_EVAL_CHUNK = 8  # clips per forward pass at evaluation


@dataclass(frozen=True)
class FoldConfig:
    """Everything that defines a fold's training run (checked against the checkpoint on resume)."""

    arch: str
    options: dict[str, Any]
    epochs: int
    lr: float
    batch: int
    frames: int
    size: int
    base: int
    seed: int
    fold: int
    schedule: str = "constant"  # or "cosine"
    select: str = "last"  # or "best": which epoch's weights and held-out scores the fold keeps

    def build_options(self) -> dict[str, Any]:
        return {**self.options, "frames": self.frames, "size": self.size}


@dataclass
class FoldOutcome:
    """The kept weights of a fold with its held-out scores and its history."""

    model: ClipClassifier
    epoch: int  # the epoch (1-based) whose weights are kept
    val_auc: float
    val_scores: list[float]
    best_epoch: int
    best_auc: float
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (numpy SeedSequence): independent streams per (seed, fold, epoch, use)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available on this machine")
    return torch.device(str(device))


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    # AMP on CUDA only (float16 with a GradScaler); CPU training stays float32.
    return torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else contextlib.nullcontext()


def _auc(labels: list[int], scores: list[float]) -> float:
    y = np.asarray(labels, dtype=int)
    if y.size == 0 or y.min() == y.max():
        return math.nan
    return stats.auc_delong(y, np.asarray(scores, dtype=np.float64)).auc


def evaluate_rows(model: ClipClassifier, rows: list[ManifestRow], clips: EvalClips, device: torch.device,
                  progress: bool = False) -> tuple[list[float], float]:  # fmt: skip
    """P(metastasis) per loop (mean softmax over the loop's evaluation clips, as inference does) and the
    mean clip cross-entropy. Static nets see every sampled frame of a clip and average their logits, or
    only the loop's static image when the manifest names one (``static_frame``)."""
    model.eval()
    scores, losses = [], []
    with torch.no_grad(), _autocast(device):
        for row in show_progress(rows, "validate", enabled=progress and on_terminal()):
            batch = clips(row)
            logits = torch.cat([model(c.to(device)).float() for c in batch.split(_EVAL_CHUNK)])
            target = torch.full((len(logits),), row.label, dtype=torch.long, device=logits.device)
            losses.append(float(F.cross_entropy(logits, target)))
            scores.append(float(torch.softmax(logits, dim=1)[:, 1].mean()))
    return scores, float(np.mean(losses)) if losses else math.nan


def _seed_worker(worker_id: int) -> None:  # DataLoader workers: numpy/torch seeds from the loader's stream
    np.random.seed(torch.initial_seed() % 2**32)


def _lr(cfg: FoldConfig, epoch: int) -> float:
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))
    return cfg.lr


def _check_resume(saved: dict[str, Any], cfg: FoldConfig, path: Path) -> None:
    """Refuse to resume a checkpoint made with other settings; ``epochs`` may grow, and the Grad-CAM layer
    (``options.cam_layer``, which does not change training) may differ."""
    now = asdict(cfg)

    def training(key: str, value: Any) -> Any:
        return {k: v for k, v in value.items() if k != "cam_layer"} if key == "options" and isinstance(value, dict) else value

    for key, value in saved.items():
        if key != "epochs" and training(key, now.get(key)) != training(key, value):
            raise ValueError(f"--resume: {path} was made with {key}={value!r}, this run has {now.get(key)!r}")


def train_fold(
    cfg: FoldConfig,
    train_rows: list[ManifestRow],
    val_rows: list[ManifestRow],
    cache: FrameCache,
    *,
    device: torch.device,
    checkpoint: Path | None = None,
    resume: bool = False,
    workers: int = 0,
    progress: bool = True,
) -> FoldOutcome:
    """Train one fold for ``cfg.epochs`` epochs, evaluating on ``val_rows`` after each.

    With ``checkpoint`` the state after every epoch is written there (atomically); with ``resume`` and an
    existing checkpoint training continues after its last epoch (to a possibly larger ``cfg.epochs``).
    """
    configure_determinism()
    started = time.perf_counter()
    torch.manual_seed(derive_seed(cfg.seed, cfg.fold, 0, 0))
    model = build(cfg.arch, **cfg.build_options()).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    start, history, val_scores = 0, [], []
    best: dict[str, Any] = {"epoch": 0, "auc": -math.inf, "scores": [], "state": None}
    if resume and checkpoint is not None and checkpoint.is_file():
        saved = torch.load(checkpoint, map_location=device, weights_only=True)
        _check_resume(saved["config"], cfg, checkpoint)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scaler.load_state_dict(saved["scaler"])
        start, history, best = int(saved["epoch"]), list(saved["history"]), dict(saved["best"])
        val_scores = list(saved["last_scores"])
        if start > cfg.epochs:
            raise ValueError(f"--resume: {checkpoint} already holds {start} epochs, more than epochs={cfg.epochs}")
        torch.set_rng_state(saved["rng"]["torch"])
        logger.info("fold %d: resumed from %s after epoch %d", cfg.fold, checkpoint, start)
    single = cfg.arch in STATIC_ARCHS
    dataset = ClipDataset(train_rows, cache, frames=cfg.frames, size=cfg.size, single_frame=single,
                          seed=derive_seed(cfg.seed, cfg.fold, 1))  # fmt: skip
    clips = EvalClips(cache, cfg.frames, cfg.size, static_image=single)
    drop_last = len(dataset) % cfg.batch == 1 and len(dataset) > cfg.batch  # BatchNorm cannot train on 1 frame
    # one INFO line per epoch below; a bar only on a terminal (workers.research.progress)
    for epoch in show_progress(range(start, cfg.epochs), f"{cfg.arch} fold {cfg.fold}", enabled=progress, leave=True):
        t0 = time.perf_counter()
        torch.manual_seed(derive_seed(cfg.seed, cfg.fold, epoch, 2))  # dropout
        dataset.epoch = epoch
        lr = _lr(cfg, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loader = DataLoader(dataset, batch_size=cfg.batch, shuffle=True, drop_last=drop_last,
                            num_workers=workers, worker_init_fn=_seed_worker,
                            generator=torch.Generator().manual_seed(derive_seed(cfg.seed, cfg.fold, epoch, 3)))  # fmt: skip
        model.train()
        losses, labels, scores = [], [], []
        for x, y in show_progress(loader, f"epoch {epoch + 1}", enabled=progress and on_terminal()):
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            with _autocast(device):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(loss.item() * len(y))
            labels += y.tolist()
            scores += torch.softmax(logits.detach().float(), 1)[:, 1].tolist()
        val_scores, val_loss = evaluate_rows(model, val_rows, clips, device, progress)
        val_auc = _auc([r.label for r in val_rows], val_scores)
        row = {"fold": cfg.fold, "epoch": epoch + 1, "train_loss": sum(losses) / max(len(labels), 1),
               "train_auc": _auc(labels, scores), "val_loss": val_loss, "val_auc": val_auc, "lr": lr,
               "seconds": time.perf_counter() - t0}  # fmt: skip
        history.append(row)
        if not math.isnan(val_auc) and val_auc > best["auc"]:
            best = {"epoch": epoch + 1, "auc": val_auc, "scores": val_scores,
                    "state": _cpu_state(model) if cfg.select == "best" else None}  # fmt: skip
        logger.info("fold %d epoch %d/%d: train loss %.4f AUC %.3f, val loss %.4f AUC %.3f (%.1f s)", cfg.fold,
                    epoch + 1, cfg.epochs, row["train_loss"], row["train_auc"], val_loss, val_auc, row["seconds"])  # fmt: skip
        if checkpoint is not None:
            _save_checkpoint(checkpoint, model, optimizer, scaler, epoch + 1, history, best, val_scores, cfg)
    if not history:
        raise ValueError(f"fold {cfg.fold}: nothing to train (epochs={cfg.epochs}, checkpoint has {start})")
    last = history[-1]
    if cfg.select == "best" and best["state"] is not None:
        model.load_state_dict(best["state"])
        kept_epoch, kept_auc, kept_scores = int(best["epoch"]), float(best["auc"]), list(best["scores"])
    else:
        kept_epoch, kept_auc, kept_scores = int(last["epoch"]), float(last["val_auc"]), val_scores
    model.eval()
    return FoldOutcome(model, kept_epoch, kept_auc, kept_scores, int(best["epoch"]), float(best["auc"]),
                       history, time.perf_counter() - started)  # fmt: skip


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     scaler: torch.amp.GradScaler, epoch: int, history: list[dict[str, float]],
                     best: dict[str, Any], last_scores: list[float], cfg: FoldConfig) -> None:  # fmt: skip
    rng: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
             "epoch": epoch, "history": history, "best": best, "last_scores": last_scores, "rng": rng, "config": asdict(cfg)}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
