"""Per-job result folder: the prediction (between classify and render) and the rendered objects.

``data_dir/results/ab/<sha256(uid)>/`` holds ``prediction.npz`` and the SR/SC files. Every file is
written to a temp name, fsync'd and renamed, so a redelivered task sees either nothing or a whole file.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from node.outbox import result_dir
from node.spool import write_atomic
from workers.prediction import Box, ModelInfo, Prediction

PREDICTION = "prediction.npz"
_GATE_FIELDS = ("temperature", "ood_score", "ood_threshold", "energy_score", "energy_threshold", "not_assessable")


__all__ = ["PREDICTION", "load_prediction", "result_dir", "save_dataset", "save_prediction", "write_atomic"]


def save_prediction(folder: Path, prediction: Prediction) -> Path:
    meta = {
        "sop_instance_uid": prediction.sop_instance_uid,
        "probability": prediction.probability,
        "key_frame": prediction.key_frame,
        "cam_frames": list(prediction.cam_frames),
        "crop": [prediction.crop.y0, prediction.crop.x0, prediction.crop.y1, prediction.crop.x1],
        "model": prediction.model.__dict__,
        "device": prediction.device,
        "seconds": prediction.seconds,
        "extra": prediction.extra,
        "gate": {k: getattr(prediction, k) for k in _GATE_FIELDS},
    }
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        clip_logits=prediction.clip_logits,
        frame_indices=prediction.frame_indices,
        cam=prediction.cam.astype(np.float16),  # 1/2 the size; 3 decimals is plenty for a heatmap
    )
    path = folder / PREDICTION
    write_atomic(path, buf.getvalue())
    return path


def load_prediction(folder: Path) -> Prediction:
    with np.load(folder / PREDICTION) as data:
        meta = json.loads(bytes(data["meta"]).decode())
        return Prediction(
            sop_instance_uid=meta["sop_instance_uid"],
            probability=float(meta["probability"]),
            clip_logits=data["clip_logits"],
            frame_indices=data["frame_indices"],
            key_frame=int(meta["key_frame"]),
            cam=data["cam"].astype(np.float32),
            cam_frames=tuple(int(f) for f in meta["cam_frames"]),
            crop=Box(*meta["crop"]),
            model=ModelInfo(**meta["model"]),
            device=meta["device"],
            seconds=float(meta["seconds"]),
            extra={k: float(v) for k, v in meta["extra"].items()},
            **meta.get("gate", {}),  # absent in predictions saved before the input gate
        )


def save_dataset(folder: Path, name: str, ds: Dataset) -> Path:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    path = folder / name
    write_atomic(path, buf.getvalue())
    return path
