"""Helpers and fixtures for the model, bundle and inference tests (imported by those test modules)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from workers.bundle import save_bundle
from workers.models import ClipClassifier, build
from workers.models.tin import TIN

US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
TINY = {"depth": 18, "frames": 8, "size": 64}  # a TIN-R18 small enough for CPU tests
BLOB_FRAMES, BLOB_SIZE = 8, 128


def blob_clip(
    rng: np.random.Generator,
    positive: bool,
    centres: Sequence[tuple[float, float]] | None = None,
    start: int | None = None,
) -> tuple[torch.Tensor, list[tuple[float, float] | None]]:
    """A (3, T, S, S) grey noise clip; positives carry a bright blob moving over 3 consecutive frames.

    Returns the clip and, per frame, the blob centre (row, col) or None.
    """
    t, s = BLOB_FRAMES, BLOB_SIZE
    x = 0.25 + 0.05 * rng.standard_normal((t, s, s))
    where: list[tuple[float, float] | None] = [None] * t
    if positive:
        if centres is None:
            y0, x0 = rng.uniform(24, s - 24, size=2)
            vy, vx = rng.uniform(-12, 12, size=2)
            centres = [
                (float(np.clip(y0 + vy * k, 16, s - 16)), float(np.clip(x0 + vx * k, 16, s - 16)))
                for k in range(3)
            ]
        first = int(rng.integers(1, t - len(centres))) if start is None else start
        yy, xx = np.mgrid[0:s, 0:s]
        for k, (cy, cx) in enumerate(centres):
            x[first + k] += 0.7 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 5.0**2))
            where[first + k] = (cy, cx)
    clip = torch.from_numpy(np.clip(x, 0.0, 1.0)).float()[None].repeat(3, 1, 1, 1)
    return clip, where


def train_blob_tin(seed: int = 0, steps: int = 10) -> ClipClassifier:
    """A TIN-R18 trained for a few Adam steps to tell blob clips from blank ones (seeded)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build("tin", depth=18, frames=BLOB_FRAMES, size=BLOB_SIZE, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    labels = torch.tensor([1, 0, 1, 0])

    def batch() -> torch.Tensor:
        return torch.stack([blob_clip(rng, bool(label))[0] for label in labels])

    model.train()
    for _ in range(steps):
        loss = F.cross_entropy(model(batch()), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    # A few steps leave BatchNorm's running statistics far from the final weights' statistics:
    # re-estimate them (cumulative average over fresh batches) before switching to eval mode.
    for mod in model.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats()
            mod.momentum = None
    with torch.no_grad():
        for _ in range(4):
            model(batch())
    return model.eval()


def write_us_loop(path: Path, clip: torch.Tensor) -> Path:
    """Write a (3, T, H, W) clip in [0, 1] as an uncompressed RGB US Multi-frame Image."""
    frames = (clip.permute(1, 2, 3, 0).numpy() * 255).round().astype(np.uint8)  # (T, H, W, 3)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(US_MULTIFRAME)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = US_MULTIFRAME, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = "US", "TEST", "Test^Blob"
    ds.Rows, ds.Columns = frames.shape[1:3]
    ds.NumberOfFrames = frames.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.FrameTime = 40.0
    ds.PixelData = frames.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def small_tin(seed: int = 0) -> TIN:
    torch.manual_seed(seed)
    return TIN(**TINY).eval()


def make_tiny_bundle(out: Path) -> Path:
    """Save an untrained TIN-R18 bundle (8 frames, 64 px), the cheapest real bundle, to ``out``."""
    return save_bundle(
        small_tin(), out, arch="tin", options=dict(TINY), name="tin-tiny", synthetic_only=True, untrained=True, torchscript=True
    )
