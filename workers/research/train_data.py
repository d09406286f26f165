"""Data side of ``alnnode train``: grouped stratified folds, a decoded-frame cache and the clip datasets.

Decoding a JPEG cine loop costs far more than a training step of a small network on the CPU, so every
loop is decoded once: frames -> crop of the ultrasound image region (:func:`workers.preprocess.find_image_region`)
-> resized to ``base`` x ``base`` (bilinear, antialiased, as :func:`workers.preprocess.make_transform` does)
-> uint8 ``.npy`` under the cache folder, memory-mapped afterwards. The study's transform then runs on
these frames each step; with the cached frames already at ``base`` its first resize is a no-op.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from workers.decode import load_clip
from workers.preprocess import find_image_region, make_transform, sample_clip_indices
from workers.research.inputs import ManifestRow, read_manifest
from workers.research.phantom_dicom import MANUFACTURER as PHANTOM_MANUFACTURER
from workers.research.progress import progress as show_progress

logger = logging.getLogger(__name__)

__all__ = ["ClipDataset", "FrameCache", "ManifestRow", "base_for", "describe_data", "grouped_stratified_folds",
           "is_synthetic", "read_manifest"]  # fmt: skip


def base_for(size: int) -> int:
    """The resize side whose 7/8 centre/random crop is ``size`` (256 for 224, the study's geometry)."""
    base = round(size * 8 / 7)
    while round(base * 7 / 8) < size:
        base += 1
    return base


# ------------------------------------------------------------------------------------------- folds
def grouped_stratified_folds(
    labels: Sequence[int], groups: Sequence[str], n_folds: int, seed: int = 0
) -> list[np.ndarray]:
    """Validation indices of ``n_folds`` folds: every group (patient) in exactly one fold, classes balanced
    (``sklearn.model_selection.StratifiedGroupKFold(shuffle=True, random_state=seed)``).

    Raises
    ------
    ValueError
        Fewer groups than folds, or mismatched lengths.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.asarray(labels, dtype=int)
    if len(y) != len(groups):
        raise ValueError(f"{len(y)} labels but {len(groups)} groups")
    n_groups = len(set(groups))
    if n_folds < 2 or n_groups < n_folds:
        raise ValueError(f"need 2 <= folds <= number of patients, got folds={n_folds} and {n_groups} patients")
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # "the least populated class has only k members": our own message is clearer
        warnings.simplefilter("ignore", UserWarning)
        folds = [np.sort(val) for _, val in splitter.split(np.zeros(len(y)), y, np.asarray(groups, dtype=str))]
    if any(f.size == 0 for f in folds):
        raise ValueError(f"folds={n_folds}: some fold holds no patient; use fewer folds")
    return folds


# ------------------------------------------------------------------------------------------- cache
#: default bound of the decoded-frame cache (``alnnode train --cache-max-gb``)
CACHE_MAX_GB = 20.0


class FrameCache:
    """Decode each loop once: cropped, resized to ``base`` x ``base``, uint8 (F, base, base, 3) ``.npy``.

    Every epoch reads every loop, so an evicting cache would decode again each epoch; instead the cache is
    bounded up front (:meth:`check_budget` refuses a run whose frames would exceed ``max_gb``) and
    removable (:meth:`remove`, done by ``alnnode train`` for its default ``OUT/cache``).
    """

    def __init__(self, folder: Path, base: int, max_gb: float | None = None) -> None:
        self.folder = Path(folder)
        self.base = int(base)
        self.max_gb = CACHE_MAX_GB if max_gb is None else float(max_gb)
        self.folder.mkdir(parents=True, exist_ok=True)

    def check_budget(self, rows: Sequence[ManifestRow]) -> float:
        """GB the cached frames of ``rows`` will take; ValueError naming both numbers above ``max_gb``."""
        frames = 0
        for row in rows:
            ds = pydicom.dcmread(row.path, stop_before_pixels=True, specific_tags=["NumberOfFrames"])
            frames += int(ds.get("NumberOfFrames", 1) or 1)
        need = frames * self.base * self.base * 3 / 1e9
        if need > self.max_gb:
            raise ValueError(f"--cache-max-gb {self.max_gb:g}: the decoded frames of {len(rows)} loops "
                             f"({frames} frames at {self.base} px) need {need:.1f} GB; lower --size or raise the limit")  # fmt: skip
        return need

    def remove(self) -> None:
        """Delete the cache folder and everything in it."""
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)
        logger.info("removed the frame cache %s", self.folder)

    def path_for(self, dicom: Path) -> Path:
        st = dicom.stat()
        key = f"{dicom.resolve()}|{st.st_size}|{st.st_mtime_ns}|{self.base}"
        return self.folder / f"{dicom.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npy"

    def frames(self, dicom: Path) -> np.ndarray:
        """The loop's cached frames (memory-mapped), decoding and writing them on first use."""
        target = self.path_for(dicom)
        if not target.is_file():
            clip = load_clip(dicom)
            box = find_image_region(clip)
            out = np.empty((clip.n_frames, self.base, self.base, 3), np.uint8)
            for first, chunk in clip.iter_chunks(32):
                crop = torch.from_numpy(np.ascontiguousarray(chunk[:, box.y0 : box.y1, box.x0 : box.x1]))
                x = crop.permute(0, 3, 1, 2).float().div_(255.0)
                x = F.interpolate(x, size=(self.base, self.base), mode="bilinear", align_corners=False, antialias=True)
                out[first : first + len(chunk)] = (x.clamp_(0, 1) * 255).round_().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            tmp = target.with_suffix(f".{os.getpid()}.tmp.npy")  # parallel runs may share a cache folder
            np.save(tmp, out)
            tmp.replace(target)  # atomic: an interrupted run never leaves a half-written cache file
            logger.debug("cached %s (%d frames, box %s) as %s", clip.sop_instance_uid, clip.n_frames, box, target.name)
        return np.load(target, mmap_mode="r")

    def warm(self, rows: Sequence[ManifestRow], progress: bool = False) -> None:
        """Decode every loop not cached yet (once, before the first epoch)."""
        todo = [r for r in rows if not self.path_for(r.path).is_file()]
        for row in show_progress(todo, "decode+cache", enabled=progress and bool(todo)):
            self.frames(row.path)


def _to_clip(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (3, T, H, W) float32 in 0..1."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float().div_(255.0)


class ClipDataset(Dataset[tuple[torch.Tensor, int]]):
    """Training samples: one augmented clip per loop (video) or one random frame (static baselines).

    Every draw (clip phase or frame, flip, elastic field, crop) is seeded by ``(seed, epoch, index)``, so
    an epoch is reproducible whatever the worker count and however a run was interrupted and resumed.
    """

    def __init__(self, rows: Sequence[ManifestRow], cache: FrameCache, *, frames: int, size: int,
                 single_frame: bool, seed: int) -> None:  # fmt: skip
        self.rows, self.cache, self.frames, self.size = list(rows), cache, frames, size
        self.single_frame, self.seed, self.epoch = single_frame, seed, 0
        self.transform = make_transform(True, size, cache.base, seed=seed)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        row = self.rows[index]
        loop = self.cache.frames(row.path)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.single_frame:  # the study's static baselines learn from static images: single frames
            idx = np.array([static_frame(row, len(loop)) if row.static_frame is not None else int(rng.integers(len(loop)))])
        else:
            idx = sample_clip_indices(len(loop), self.frames, rng=rng)[0]
        self.transform.set_random_state(seed=int(rng.integers(2**31)))
        return self.transform(_to_clip(loop[idx])), row.label


def static_frame(row: ManifestRow, n_frames: int) -> int:
    """The manifest's ``static_frame`` of ``row``, checked against the loop's length."""
    if row.static_frame is None or not 0 <= row.static_frame < n_frames:
        raise ValueError(f"{row.path}: static_frame {row.static_frame!r} is not a frame of this {n_frames}-frame loop")
    return row.static_frame


class EvalClips:
    """The evaluation clips of a loop, as :func:`workers.inference.predict` samples them (centre crop).

    With ``static_image`` (the static baselines), a loop whose manifest row names its ``static_frame`` is
    seen as that one frame: the study compares the video model with models of the static image.
    """

    def __init__(self, cache: FrameCache, frames: int, size: int, static_image: bool = False) -> None:
        self.cache, self.frames, self.size, self.static_image = cache, frames, size, static_image
        self.transform = make_transform(False, size, cache.base)

    def __call__(self, row: ManifestRow) -> torch.Tensor:
        """(n_clips, 3, T, size, size) float32; (1, 3, 1, size, size) for a static image."""
        loop = self.cache.frames(row.path)
        if self.static_image and row.static_frame is not None:
            return self.transform(_to_clip(loop[[static_frame(row, len(loop))]]))[None]
        indices = sample_clip_indices(len(loop), self.frames)
        return torch.stack([self.transform(_to_clip(loop[idx])) for idx in indices])


# --------------------------------------------------------------------------------------- metadata
def is_synthetic(rows: Sequence[ManifestRow]) -> bool:
    """True when any loop was written by ``alnnode phantom`` (Manufacturer "aln-node phantom"): a model trained
    even in part on phantoms is research-only."""
    for row in rows:
        ds = pydicom.dcmread(row.path, stop_before_pixels=True, specific_tags=["Manufacturer"])
        if str(ds.get("Manufacturer", "")) == PHANTOM_MANUFACTURER:
            return True
    return False


@dataclass(frozen=True)
class DataDescription:
    manifest: str
    loops: int
    patients: int
    positives: int
    synthetic_only: bool

    def text(self) -> str:
        kind = "synthetic aln-node phantom loops" if self.synthetic_only else "user-supplied labelled loops"
        return (f"{self.loops} {kind} ({self.positives} positive) from {self.patients} patients, "
                f"manifest {self.manifest}")  # fmt: skip


def describe_data(manifest: Path, rows: Sequence[ManifestRow], synthetic_only: bool) -> DataDescription:
    return DataDescription(manifest.name, len(rows), len({r.patient_id for r in rows}),
                           sum(r.label for r in rows), synthetic_only)  # fmt: skip
