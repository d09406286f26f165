"""Shared inputs of the SR and SC writer tests: a real 120-frame JPEG cine loop and a hand-made prediction.

Plain functions (cached), imported by test_results_sr.py and test_results_sc.py; each test gets a
fresh copy of the header so that one test's edits never leak into another.
"""

from __future__ import annotations

import copy
import functools
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array

from workers.prediction import Box, ModelInfo, Prediction

CINE_FILE = "color3d_jpeg_baseline.dcm"  # US Multi-frame, 120 x 480 x 640, JPEG baseline
CAM_FRAMES = tuple(range(0, 120, 8))
KEY_FRAME = 40
CROP = Box(y0=31, x0=84, y1=414, x1=595)  # the file's ultrasound region
BLOB_CENTRE = (220, 330)  # row, column of the Grad-CAM maximum
MODEL_UID = "1.2.826.0.1.3680043.8.498.71823461"


@functools.cache
def _source_path() -> str:
    path = get_testdata_file(CINE_FILE)
    if path is None:
        pytest.skip(f"pydicom-data file {CINE_FILE} not available")
    return str(path)


@functools.cache
def _header() -> Dataset:
    return pydicom.dcmread(_source_path(), stop_before_pixels=True)


def source_header() -> Dataset:
    """A private copy of the loop's header (no pixel data)."""
    return copy.deepcopy(_header())


@functools.cache
def _frames() -> np.ndarray:
    full = pydicom.dcmread(_source_path())
    # pydicom converts the JPEG's YBR_FULL_422 to RGB while decoding (as_rgb=True by default).
    frames = np.stack([pixel_array(full, index=i) for i in CAM_FRAMES])
    frames.setflags(write=False)
    return frames


def cam_frames_rgb() -> np.ndarray:
    """The sampled frames (len(CAM_FRAMES), 480, 640, 3) uint8 RGB, read-only."""
    return _frames()


def key_frame_rgb() -> np.ndarray:
    return _frames()[CAM_FRAMES.index(KEY_FRAME)]


def gaussian_cam(rows: int = 480, cols: int = 640) -> np.ndarray:
    """Grad-CAM stand-in: a Gaussian blob inside the crop, strongest at the key frame."""
    yy, xx = np.mgrid[0:rows, 0:cols]
    cy, cx = BLOB_CENTRE
    blob = np.exp(-(((yy - cy) / 50.0) ** 2 + ((xx - cx) / 60.0) ** 2) / 2.0)
    inside = np.zeros((rows, cols), dtype=bool)
    inside[CROP.y0 : CROP.y1, CROP.x0 : CROP.x1] = True
    maps = [blob * inside * np.exp(-(((f - KEY_FRAME) / 40.0) ** 2)) for f in CAM_FRAMES]
    cam = np.stack(maps).astype(np.float32)
    return cam / cam.max()


def make_model(**changes: object) -> ModelInfo:
    fields: dict[str, object] = {
        "name": "aln-tin-demo",
        "arch": "tin",
        "version": "1.2.0",
        "model_uid": MODEL_UID,
        "synthetic_only": True,
    }
    fields.update(changes)
    return ModelInfo(**fields)  # type: ignore[arg-type]


def make_prediction(probability: float = 0.734, model: ModelInfo | None = None, **changes: object) -> Prediction:
    fields: dict[str, object] = {
        "sop_instance_uid": str(_header().SOPInstanceUID),
        "probability": probability,
        "clip_logits": np.zeros((3, 2), dtype=np.float32),
        "frame_indices": np.arange(48).reshape(3, 16),
        "key_frame": KEY_FRAME,
        "cam": gaussian_cam(),
        "cam_frames": CAM_FRAMES,
        "crop": CROP,
        "model": model or make_model(),
    }
    fields.update(changes)
    return Prediction(**fields)  # type: ignore[arg-type]


def save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def dciodvfy_errors(path: Path) -> list[str]:
    """``Error -`` lines of ``dciodvfy -new`` (skips the test when dicom3tools is not installed)."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.skip("dciodvfy (dicom3tools) not installed")
    run = subprocess.run([tool, "-new", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def dsr2html_text(path: Path) -> str:
    """Visible text of ``dsr2html`` output, tags stripped (skips when DCMTK is not installed)."""
    tool = shutil.which("dsr2html")
    if tool is None:
        pytest.skip("dsr2html (DCMTK) not installed")
    run = subprocess.run([tool, str(path)], capture_output=True, timeout=60)
    assert run.returncode == 0, run.stderr
    html = run.stdout.decode("utf-8", errors="replace")
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def round_trip(ds: Dataset) -> Dataset:
    """Save to bytes and read back, as a PACS would receive the object."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)
