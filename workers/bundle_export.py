"""What a bundle holds besides its weights: the MONAI ``network_data_format`` and ``inference.json``, and the
TorchScript export (MONAI bundle specification, ``docs/source/mb_specification.rst``).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch

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


def inference_config(arch: str, options: dict[str, Any]) -> dict[str, Any]:
    return {
        "imports": ["$import torch", "$import workers.models"],
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": "workers.models.build", "arch": arch, **options},
        "network": "$@network_def.to(@device)",
        "checkpoint": "$@bundle_root + '/models/model.pt'",
        "load_weights": "$@network.load_state_dict(torch.load(@checkpoint, map_location=@device, weights_only=True))",
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {"_target_": "Activations", "softmax": True},
        "preprocessing_note": "frames are decoded, cropped and sampled by workers.preprocess; see docs/README.md",
    }


def save_torchscript(model: ClipClassifier, path: Path, frames: int, size: int) -> None:
    example = torch.rand(1, 3, frames, size, size, device=next(model.parameters()).device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # torch.jit is deprecated upstream but still the format MONAI bundles ship (models/model.ts);
            # the tracer's shape-check warnings concern input checks that are constant for a fixed clip size
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.jit.save(torch.jit.trace(model, example, check_trace=False), str(path))
    except (RuntimeError, TypeError) as exc:
        logger.warning("TorchScript export of %s failed, bundle has no model.ts: %s", model.arch, exc)
    finally:
        model.train(was_training)
