"""What a bundle holds besides its weights: the MONAI ``network_data_format`` and ``inference.json``, and the
TorchScript export (MONAI bundle specification, ``docs/source/mb_specification.rst``).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from workers.errors import BundleError
from workers.models import ClipClassifier

logger = logging.getLogger(__name__)

CLASS_NAMES = ["no ALN metastasis", "ALN metastasis"]


def data_format(frames: int, size: int) -> dict[str, Any]:
    channel_def = {str(i): name for i, name in enumerate(CLASS_NAMES)}
    return {
        "inputs": {
            "video": {
                "type": "video", "format": "RGB", "modality": "US", "num_channels": 3,
                "spatial_shape": [size, size], "frames": frames, "dtype": "float32", "value_range": [0, 1],
                "is_patch_data": False, "channel_def": {"0": "R", "1": "G", "2": "B"},
                "layout": "N,C,T,H,W",
            }
        },
        "outputs": {
            "pred": {
                "type": "probabilities", "format": "classes", "num_channels": 2, "spatial_shape": [2],
                "dtype": "float32", "value_range": [0, 1], "is_onehot": False, "channel_def": channel_def,
                "network_output": "logits (softmax in inference.json postprocessing)",
            }
        },
    }  # fmt: skip


def _resize(side: int) -> str:
    # as workers.preprocess._resize: bilinear with antialiasing, a no-op at the target size
    return (f"$lambda x: x if tuple(x.shape[-2:]) == ({side}, {side}) else torch.nn.functional.interpolate("
            f"torch.as_tensor(x, dtype=torch.float32)[None], size=({side}, {side}), mode='bilinear', "
            f"align_corners=False, antialias=True)[0]")  # fmt: skip


def preprocessing(size: int, base: int) -> dict[str, Any]:
    """MONAI ``Compose`` of :func:`workers.preprocess.make_transform` (evaluation path) as config: fold
    (3, T, H, W) to (3T, H, W), resize to ``base``, centre crop 7/8, resize to ``size``, clamp, unfold."""
    crop = round(base * 7 / 8)
    steps: list[dict[str, Any]] = [
        {"_target_": "Lambda", "func": "$lambda x: x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])"},
        {"_target_": "Lambda", "func": _resize(base)},
        {"_target_": "CenterSpatialCrop", "roi_size": [crop, crop]},
    ]
    if crop != size:
        steps.append({"_target_": "Lambda", "func": _resize(size)})
    steps += [
        {"_target_": "Lambda", "func": "$lambda x: x.clamp(0.0, 1.0)"},
        {"_target_": "Lambda", "func": "$lambda x: x.reshape(3, x.shape[0] // 3, *x.shape[1:])"},
        {"_target_": "EnsureType", "data_type": "tensor", "dtype": "$torch.float32", "track_meta": False},
    ]
    return {"_target_": "Compose", "transforms": steps}


def inference_config(*, frames: int, size: int, base: int, model_uid: str, name: str) -> dict[str, Any]:
    """A MONAI bundle config that classifies one DICOM cine loop with ``models/model.ts``, needing only torch,
    MONAI, numpy and pydicom: ``python -m monai.bundle run --config_file configs/inference.json
    --meta_file configs/metadata.json --dataset_file LOOP.dcm [--output_file prediction.json]``.

    It mirrors :func:`workers.inference.predict`: the ultrasound region (SequenceOfUltrasoundRegions, PS3.3
    C.8.5.5; the whole frame without one), the evaluation clips of :func:`workers.preprocess.sample_clip_indices`,
    the transform of :func:`workers.preprocess.make_transform` and the mean of the clips' softmax.
    """
    # PS3.3 C.8.5.5.1: Region Spatial Format 1 = 2D; Region Data Type 1 = tissue, 2 = colour flow
    regions = ("$[b for b in [(max(0, int(r.RegionLocationMinY0)), max(0, int(r.RegionLocationMinX0)), "
               "min(int(@dicom.Rows), int(r.RegionLocationMaxY1) + 1), min(int(@dicom.Columns), int(r.RegionLocationMaxX1) + 1)) "
               "for r in @dicom.get('SequenceOfUltrasoundRegions', []) if int(r.RegionSpatialFormat) == 1 "
               "and int(r.RegionDataType) in (1, 2)] if b[2] - b[0] > 1 and b[3] - b[1] > 1]")  # fmt: skip
    return {
        "imports": ["$import json", "$import math", "$import numpy as np", "$import pydicom", "$import torch"],
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "dataset_file": "",
        "output_file": "prediction.json",
        "frames": frames,
        "size": size,
        "base": base,
        "network_def": "$torch.jit.load(@bundle_root + '/models/model.ts', map_location=@device)",
        "network": "$@network_def.eval()",
        "dicom": "$pydicom.dcmread(@dataset_file)",
        "n_frames": "$int(@dicom.get('NumberOfFrames', 1) or 1)",
        "pixel_array": "$@dicom.pixel_array",
        "pixels": "$@pixel_array.reshape((@n_frames,) + @pixel_array.shape[(-3 if int(@dicom.SamplesPerPixel) == 3 else -2):])",
        "rgb": ("$@pixels if @pixels.ndim == 4 else np.repeat((255 - @pixels if str(@dicom.PhotometricInterpretation) "
                "== 'MONOCHROME1' else @pixels)[..., None], 3, axis=-1)"),
        "regions": regions,
        "main_region": "$max(@regions, key=lambda b: (b[2] - b[0]) * (b[3] - b[1])) if @regions else (0, 0, int(@dicom.Rows), int(@dicom.Columns))",
        "joined": ("$[b for b in @regions if b[0] < @main_region[2] and @main_region[0] < b[2] "
                   "and b[1] < @main_region[3] and @main_region[1] < b[3]] or [@main_region]"),
        "box": "$(min(b[0] for b in @joined), min(b[1] for b in @joined), max(b[2] for b in @joined), max(b[3] for b in @joined))",
        "n_clips": "$min(8, max(1, math.ceil(@n_frames / (4 * @frames))))",
        "indices": ("$np.clip(np.floor((np.arange(@frames)[None, :] + ((np.arange(@n_clips) + 0.5) / @n_clips)[:, None])"
                    " * (@n_frames / @frames)).astype(np.int64), 0, @n_frames - 1)"),
        "crop": "$@rgb[:, @box[0]:@box[2], @box[1]:@box[3]]",
        "preprocessing": preprocessing(size, base),
        "clips": ("$[@preprocessing(torch.from_numpy(np.ascontiguousarray(@crop[idx].transpose(3, 0, 1, 2)))"
                  ".to(torch.float32).div_(255.0)) for idx in @indices]"),
        "inferer": {"_target_": "SimpleInferer"},
        "logits": "$torch.no_grad()(lambda: torch.cat([@inferer(c[None].to(@device), @network).float().cpu() for c in @clips]))()",
        "postprocessing": {"_target_": "Activations", "softmax": True},
        "probabilities": "$torch.stack([@postprocessing(v) for v in @logits])[:, 1]",
        "result": {
            "dataset_file": "@dataset_file",
            "sop_instance_uid": "$str(@dicom.SOPInstanceUID)",
            "probability_aln_metastasis": "$float(@probabilities.mean())",
            "clip_probabilities": "$[float(v) for v in @probabilities]",
            "region": "$[int(v) for v in @box]",
            "model": name,
            "model_uid": model_uid,
            "intended_use": "research use only, not for diagnostic use",
        },
        "run": ["$print(json.dumps(@result))", "$open(@output_file, 'w').write(json.dumps(@result, indent=2) + '\\n')"],
    }


def save_torchscript(model: ClipClassifier, path: Path, frames: int, size: int, tolerance: float = 1e-5) -> bool:
    """Trace ``model`` to ``path`` (``models/model.ts``) and check the traced module against the eager one on
    seeded random clips (batch 1 and 2): a difference above ``tolerance`` is a :class:`BundleError`.
    Returns False (and writes nothing) when the model cannot be traced."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(0)
    example = torch.rand(1, 3, frames, size, size, generator=gen).to(device)
    checks = [example, torch.rand(2, 3, frames, size, size, generator=gen).to(device)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # torch.jit is deprecated upstream but still the format MONAI bundles ship (models/model.ts);
            # the tracer's shape-check warnings concern input checks that are constant for a fixed clip size
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(model, example, check_trace=False)
            worst = max(float((traced(x) - model(x)).abs().max()) for x in checks)
    except (RuntimeError, TypeError) as exc:
        logger.warning("TorchScript export of %s failed, bundle has no model.ts: %s", model.arch, exc)
        return False
    finally:
        model.train(was_training)
    if worst > tolerance:
        raise BundleError(f"models/model.ts: traced {model.arch} differs from the eager model by {worst:.3g} "
                          f"(> {tolerance:g})")  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.save is deprecated upstream, see above
        torch.jit.save(traced, str(path))
    logger.debug("%s traced to %s (max difference to eager %.3g)", model.arch, path, worst)
    return True
