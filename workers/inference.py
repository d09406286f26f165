"""Classify one cine loop with a bundle: probability of ALN metastasis, Grad-CAM and key frame.

Steps (the study's evaluation path): decode -> crop the ultrasound image region -> ``n_clips`` clips of
T frames, each a uniform-stride pass over the whole loop -> model -> P(metastasis) = mean over clips of
softmax(logits / T)[:, 1] (T: the bundle's temperature, 1 without calibration) -> out-of-distribution score of
the penultimate features (workers.ood) -> Grad-CAM of the clip with the highest probability (batch 1,
always the metastasis class) ->
key frame = frame with the highest CAM peak -> maps put back into the source frame geometry.

A worker process keeps loaded bundles in a small cache keyed by (path, model_uid, device): the model is
loaded once and reloaded only when the bundle's weights change.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from pydicom import Dataset

from workers.bundle import LoadedBundle, load_bundle
from workers.decode import Clip, load_clip
from workers.errors import BundleError
from workers.gate import GateRules, image_reason, tag_reason
from workers.gradcam import clip_cam, key_frame_position, make_explainer
from workers.ood import capture_features, clip_features, score_loop
from workers.prediction import Box, Prediction
from workers.preprocess import find_image_region, map_to_original, prepare_clip, sample_clip_indices

logger = logging.getLogger(__name__)

BASE = 256  # the study's resize before the (centre) crop; workers.preprocess default
_CLIPS_PER_BATCH = 4
METASTASIS = 1  # class index of "ALN metastasis" (workers.bundle.CLASS_NAMES)


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def configure_determinism() -> None:
    """Ask PyTorch for deterministic kernels (warn-only where none exists); called once per loaded bundle.

    Eval mode draws no random numbers (dropout off, evenly spaced clips), so with deterministic kernels
    the same loop gives the same probability and map on the same machine.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it before its first use
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


@functools.lru_cache(maxsize=4)
def _cached(path: str, model_uid: str, device: str) -> LoadedBundle:
    configure_determinism()
    loaded = load_bundle(path, device=device)
    if loaded.info.model_uid != model_uid:
        raise BundleError(
            f"model_uid: bundle {path} changed while loading ({model_uid} -> {loaded.info.model_uid})"
        )
    for p in loaded.model.parameters():  # inference only; Grad-CAM needs activation gradients only
        p.requires_grad_(False)
    return loaded


def get_bundle(path: str | Path, device: str | None = None) -> LoadedBundle:
    """Load a bundle once per process; a bundle whose weights changed (new ``model_uid``) is reloaded."""
    root = Path(path).resolve()
    try:
        uid = json.loads((root / "configs" / "metadata.json").read_text())["model_uid"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"configs/metadata.json: cannot read model_uid of bundle {root}: {exc}") from exc
    return _cached(str(root), str(uid), device or default_device())


class _DecodedFrames:
    """The frames of a clip that inference needs, decoded once (a video stream is decoded from its start
    on every ``Clip.frames`` call); quacks like :class:`workers.decode.Clip` for ``prepare_clip``."""

    def __init__(self, clip: Clip, indices: np.ndarray) -> None:
        self.sop_instance_uid, self.rows, self.cols, self.n_frames = (
            clip.sop_instance_uid,
            clip.rows,
            clip.cols,
            clip.n_frames,
        )
        wanted = sorted({int(i) for i in np.asarray(indices).ravel()})
        self._pos = {i: k for k, i in enumerate(wanted)}
        self._frames = clip.frames(wanted)

    def frames(self, indices: Sequence[int]) -> np.ndarray:
        return self._frames[[self._pos[int(i)] for i in indices]]


PRECISIONS = ("fp32", "bf16", "auto")


def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX: oneDNN runs bf16 convolutions natively (about 3x fp32 on 2 Zen 4 cores)."""
    check = getattr(torch.backends.mkldnn, "is_bf16_supported", None) or getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(check and check())


def _autocast(device: torch.device, precision: str = "auto") -> torch.autocast | None:
    """Mixed precision for inference: always on CUDA (bf16, else fp16); on the CPU only with
    ``precision="bf16"``, or ``"auto"`` when the CPU has native bf16 (``[model] precision``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    if precision == "bf16" or (precision == "auto" and cpu_has_bf16()):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return None


def _resolve(bundle: LoadedBundle | str | Path, device: str | None) -> LoadedBundle:
    if not isinstance(bundle, LoadedBundle):
        return get_bundle(bundle, device)
    if device is None or torch.device(device) == torch.device(bundle.device):
        return bundle
    if bundle.path is None:
        raise ValueError(
            f"bundle {bundle.info.name} is on {bundle.device}; load it for {device} with load_bundle"
        )
    return get_bundle(bundle.path, device)


def predict(
    bundle: LoadedBundle | str | Path,
    source: str | os.PathLike[str] | Dataset,
    *,
    device: str | None = None,
    n_clips: int | None = None,
    explain: bool = True,
    precision: str = "fp32",
    gate: GateRules | None = None,
) -> Prediction:
    """Classify one cine loop.

    Parameters
    ----------
    bundle
        A loaded bundle or a bundle directory (loaded once per process, see :func:`get_bundle`).
    source
        DICOM file path or dataset of a (multi-frame) ultrasound image.
    device
        ``cuda`` / ``cpu``; default: CUDA when available (with autocast), else CPU.
    n_clips
        Clips per loop; default from :func:`workers.preprocess.sample_clip_indices`.
    precision
        On the CPU: ``fp32`` (default), ``bf16`` (autocast), ``auto`` (bf16 where the CPU supports it
        natively). CUDA always runs with autocast (bf16, else fp16).
    gate
        Input-gate rules (:mod:`workers.gate`): a loop that fails the tag or image checks comes back at once,
        without running the model, as a prediction with ``not_assessable`` set and a NaN probability; one
        whose out-of-distribution score is above the bundle's threshold has ``not_assessable`` set too.
        None: no gate (the scores are still computed).
    explain
        Compute Grad-CAM. Without it ``cam`` is empty (0, rows, cols), ``cam_frames`` is empty and
        ``key_frame`` is the middle frame of the most positive clip.

    Raises
    ------
    workers.errors.DecodeError, workers.errors.BundleError
    """
    started = time.perf_counter()
    loaded = _resolve(bundle, device)
    model, dev = loaded.model, torch.device(loaded.device)
    clip = load_clip(source)
    box = find_image_region(clip)
    indices = sample_clip_indices(clip.n_frames, frames=loaded.frames, n_clips=n_clips)
    decoded = cast(Clip, _DecodedFrames(clip, indices))
    if gate is not None:
        reason = tag_reason(getattr(clip, "_header", Dataset()), gate)
        if reason is None and gate.check_image:
            reason = image_reason(decoded.frames(sorted({int(i) for i in indices.ravel()})), box)
        if reason is not None:
            return _not_assessable(clip, loaded, box, indices, reason, started)
    batch = torch.stack([prepare_clip(decoded, idx, box, size=loaded.size, base=BASE) for idx in indices])
    autocast = _autocast(dev, precision)
    logits_parts, sizes = [], []
    with capture_features(model) as captured, torch.no_grad(), autocast if autocast is not None else contextlib.nullcontext():
        for chunk in batch.split(_CLIPS_PER_BATCH):
            logits_parts.append(model(chunk.to(dev)).float().cpu())
            sizes.append(len(chunk))
    logits = torch.cat(logits_parts)
    calibration, ood = getattr(loaded, "calibration", None), getattr(loaded, "ood", None)
    temperature = calibration.temperature if calibration is not None else 1.0
    probs = torch.softmax(logits / temperature, dim=1)[:, 1]
    best = int(torch.argmax(probs))
    best_idx = indices[best]
    extra: dict[str, float] = {"n_clips": float(len(indices)), "best_clip": float(best),
                               "best_clip_probability": float(probs[best]),
                               "uncalibrated_probability": float(torch.softmax(logits, dim=1)[:, 1].mean())}  # fmt: skip
    scores = score_loop(ood, clip_features(captured, sizes), logits.numpy()) if ood is not None else None
    if explain:
        if loaded.explainer is None:
            loaded.explainer = make_explainer(model)
        # Always the metastasis class: the map explains the score the SR reports, whatever the threshold
        # (the argmax class would explain the opposite verdict when 0.5 < P < threshold).
        cam_class = METASTASIS
        cam = clip_cam(model, loaded.explainer, batch[best : best + 1].to(dev), cam_class, autocast)
        position = key_frame_position(cam)
        key_frame = int(best_idx[position])
        cam_frames, cam_src = _per_source_frame(cam, best_idx, box, clip.rows, clip.cols, loaded.size)
        extra.update(cam_class=float(cam_class), key_frame_position=float(position))
    else:
        key_frame = int(best_idx[len(best_idx) // 2])
        cam_frames, cam_src = (), np.zeros((0, clip.rows, clip.cols), np.float32)
    prediction = Prediction(
        sop_instance_uid=clip.sop_instance_uid,
        probability=float(probs.mean()),
        clip_logits=logits.numpy().astype(np.float32),
        frame_indices=np.asarray(indices, dtype=np.int64),
        key_frame=key_frame,
        cam=cam_src,
        cam_frames=cam_frames,
        crop=box,
        model=loaded.info,
        device=str(dev),
        seconds=time.perf_counter() - started,
        extra=extra,
        temperature=temperature,
        ood_score=None if scores is None else scores.score,
        ood_threshold=None if scores is None else scores.threshold,
        energy_score=None if scores is None else scores.energy,
        energy_threshold=None if scores is None else scores.energy_threshold,
        not_assessable=scores.reason() if gate is not None and gate.check_ood and scores is not None
        and scores.out_of_distribution else None,
    )
    if prediction.not_assessable:
        logger.warning("%s: not assessable: %s", clip.sop_instance_uid, prediction.not_assessable)
    logger.info("%s: P(ALN metastasis)=%.3f over %d clips, key frame %d, %s on %s in %.2f s",
                clip.sop_instance_uid, prediction.probability, len(indices), key_frame, loaded.info.arch,
                dev, prediction.seconds)  # fmt: skip
    return prediction


def _not_assessable(
    clip: Clip, loaded: LoadedBundle, box: Box, indices: np.ndarray, reason: str, started: float
) -> Prediction:
    """A loop that failed the gate before the model: no probability, no map; key frame = middle frame."""
    logger.warning("%s: not assessable: %s", clip.sop_instance_uid, reason)
    return Prediction(
        sop_instance_uid=clip.sop_instance_uid, probability=float("nan"), clip_logits=np.zeros((0, 2), np.float32),
        frame_indices=np.asarray(indices, dtype=np.int64), key_frame=clip.n_frames // 2,
        cam=np.zeros((0, clip.rows, clip.cols), np.float32), cam_frames=(), crop=box, model=loaded.info,
        device=loaded.device, seconds=time.perf_counter() - started, not_assessable=reason,
    )  # fmt: skip


def _per_source_frame(
    cam: np.ndarray, clip_indices: np.ndarray, box: Any, rows: int, cols: int, size: int
) -> tuple[tuple[int, ...], np.ndarray]:
    """One map per distinct source frame of the clip (max over repeats), in source geometry."""
    frames = sorted({int(i) for i in clip_indices})
    merged = np.stack([cam[clip_indices == f].max(axis=0) for f in frames])
    return tuple(frames), map_to_original(merged, box, rows, cols, size=size, base=BASE).clip(0.0, 1.0)
