"""The result of classifying one cine loop: the contract between inference and the result writers."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Box:
    """A pixel box in original frame coordinates: rows [y0, y1), columns [x0, x1)."""

    y0: int
    x0: int
    y1: int
    x1: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0


@dataclass(frozen=True)
class ModelInfo:
    """What every output must say about the model that made it."""

    name: str  # bundle name
    arch: str  # tin | r2plus1d | r3d | resnet50 | inceptionv3 | vgg19
    version: str  # bundle version
    model_uid: str  # changes whenever the weights change
    synthetic_only: bool  # trained only on synthetic phantoms
    untrained: bool = False  # random weights (bundle create)
    operating_point: float | None = None  # the bundle's calibrated threshold (None: none stored)


@dataclass(frozen=True)
class Prediction:
    """Probability of ALN metastasis for one loop, with the Grad-CAM explanation.

    ``cam`` holds one map per frame of ``cam_frames`` (0-based source frame indices, sorted),
    float32 in [0, 1], in the original frame geometry (rows x columns of the source; zero outside
    ``crop``). ``key_frame`` is a 0-based source frame index contained in ``cam_frames``
    (DICOM Referenced Frame Number = key_frame + 1).
    """

    sop_instance_uid: str
    probability: float  # P(metastasis), 0..1, mean over clips of softmax
    clip_logits: np.ndarray  # (n_clips, 2) float32
    frame_indices: np.ndarray  # (n_clips, T) int, source frames used per clip
    key_frame: int
    cam: np.ndarray  # (len(cam_frames), rows, cols) float32 in [0, 1]
    cam_frames: tuple[int, ...]
    crop: Box
    model: ModelInfo
    device: str = "cpu"
    seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)
    # Calibration and input gate (workers.calibration, workers.ood, workers.gate); None: not available.
    temperature: float = 1.0  # the probability is mean softmax(logits / temperature)
    ood_score: float | None = None  # Mahalanobis score of the loop's features
    ood_threshold: float | None = None
    energy_score: float | None = None
    energy_threshold: float | None = None
    not_assessable: str | None = None  # why the loop failed the input gate (then no probability is reported)

    def is_positive(self, threshold: float) -> bool:
        return self.probability >= threshold

    @property
    def assessable(self) -> bool:
        return self.not_assessable is None
