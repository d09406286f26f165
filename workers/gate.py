"""The input gate before the model: is this loop something the model can assess?

A loop that fails gets an SR that says *not assessable* and why, with no probability (``alnnode status``
shows the reason). Three kinds of check, in order:

1. **Tags** (no pixels): Modality must be US; when Body Part Examined (0018,0015) or Anatomic Region
   Sequence (0008,2218) is present it must name the breast or the axilla. Many devices leave both empty, so
   empty passes unless ``require_body_part`` is set ([model] section, or per [[peers]] entry).
2. **Image**: an ultrasound image region was found, and the sampled frames are neither blank (no contrast)
   nor frozen (no change from frame to frame: a still image saved as a loop).
3. **Out of distribution** (after the model, :mod:`workers.ood`): the loop's feature distance to the
   training loops is above the bundle's threshold.

Only numpy and pydicom here: the node's configuration is turned into :class:`GateRules` by the worker.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from node.outbox import NOT_ASSESSABLE_FILE  # in the job's result folder: the gate's reason, one line
from workers.prediction import Box, ModelInfo, Prediction

# PS3.16 Annex L (Body Part Examined defined terms) and the SNOMED CT codes of CID 4 "Anatomic Region".
DEFAULT_BODY_PARTS = ("BREAST", "AXILLA")
_REGION_CODES = {
    "76752008": "BREAST",  # SCT Breast
    "80248007": "BREAST",  # SCT Left breast structure
    "73056007": "BREAST",  # SCT Right breast structure
    "91470000": "AXILLA",  # SCT Axilla
    "68171009": "AXILLA",  # SCT Axillary lymph node
    "T-04000": "BREAST",  # SRT (retired scheme still written by older devices)
    "T-D8104": "AXILLA",
}
MIN_REGION_PX = 32  # a smaller "image region" is a logo or a text box, not an ultrasound image
BLANK_STD = 2.0  # grey-level standard deviation (of 255) below which a frame has no image content
FROZEN_DIFF = 0.25  # mean absolute grey-level change between sampled frames below which the loop is a still


@dataclass(frozen=True)
class GateRules:
    """What the gate accepts; built from ``[model]`` (and the sending peer's overrides)."""

    modalities: tuple[str, ...] = ("US",)
    body_parts: tuple[str, ...] = DEFAULT_BODY_PARTS
    require_body_part: bool = False
    check_image: bool = True
    check_ood: bool = True

    @classmethod
    def of(cls, body_parts: Iterable[str] | None = None, require_body_part: bool | None = None,
           check_image: bool = True, check_ood: bool = True) -> GateRules:  # fmt: skip
        parts = tuple(p.strip().upper() for p in body_parts) if body_parts is not None else DEFAULT_BODY_PARTS
        return cls(("US",), parts, bool(require_body_part), check_image, check_ood)


def _body_parts(ds: Dataset) -> list[str]:
    """What the header says was examined: Body Part Examined and the Anatomic Region codes, normalised."""
    found = []
    body_part = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    if body_part:
        found.append(body_part)
    for item in ds.get("AnatomicRegionSequence", []) or []:
        code = str(item.get("CodeValue", "") or "").strip()
        meaning = str(item.get("CodeMeaning", "") or "").strip().upper()
        found.append(_REGION_CODES.get(code, meaning or code))
    return found


def tag_reason(ds: Dataset, rules: GateRules) -> str | None:
    """Why the header says the loop is not for this model (None: it passes)."""
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality not in rules.modalities:
        return f"Modality {modality or '(empty)'!r} is not {'/'.join(rules.modalities)}"
    parts = _body_parts(ds)
    if not parts:
        if rules.require_body_part:
            return "Body Part Examined and Anatomic Region Sequence are empty (require_body_part = true)"
        return None
    wrong = [p for p in parts if not any(a in p for a in rules.body_parts)]
    if wrong:
        return f"body part {wrong[0]!r} is not one of {', '.join(rules.body_parts)}"
    return None


def image_reason(frames: np.ndarray, box: Box) -> str | None:
    """Why the sampled frames (n, rows, cols, 3) uint8 inside ``box`` cannot be assessed (None: fine)."""
    if box.height < MIN_REGION_PX or box.width < MIN_REGION_PX:
        return f"no ultrasound image region (largest region {box.height}x{box.width} px)"
    grey = frames[:, box.y0 : box.y1, box.x0 : box.x1].astype(np.float32).mean(axis=-1)
    if float(grey.reshape(len(grey), -1).std(axis=1).max()) < BLANK_STD:
        return "blank loop (no image content in the ultrasound region)"
    if len(grey) >= 2:
        change = float(np.abs(np.diff(grey, axis=0)).mean())
        if change < FROZEN_DIFF:
            return f"frozen loop (mean change between frames {change:.2f} grey levels)"
    return None


# ---------------------------------------------------------------- pipeline hooks (workers/stages.py)


def rules_for(model: Any, peers: Sequence[Any], calling_ae: str | None) -> GateRules | None:
    """The gate of ``[model]`` with the sending peer's overrides (None when ``[model] gate = false``)."""
    if not model.gate:
        return None
    peer = next((p for p in peers if calling_ae and p.ae_title == calling_ae.strip()), None)
    parts = peer.body_parts if peer is not None and peer.body_parts is not None else model.body_parts
    required = peer.require_body_part if peer is not None and peer.require_body_part is not None else model.require_body_part
    return GateRules.of(parts, required)


def operating_threshold(configured: float | None, model: ModelInfo) -> float:
    """``[model] threshold`` when set, else the bundle's calibrated operating point, else 0.5."""
    if configured is not None:
        return float(configured)
    return float(model.operating_point) if model.operating_point is not None else 0.5


def classified_values(prediction: Prediction, folder: Path) -> dict[str, Any]:
    """Ledger columns for ``classified``; a not-assessable loop gets its reason and no probability."""
    marker = folder / NOT_ASSESSABLE_FILE
    values: dict[str, Any] = {"model_uid": prediction.model.model_uid}
    if prediction.assessable:
        marker.unlink(missing_ok=True)
        values["probability"] = f"{prediction.probability:.4f}"
    else:
        marker.write_text(f"{prediction.not_assessable}\n", encoding="utf-8")
        values.update(probability=None, reason=not_assessable_reason(prediction.not_assessable))
    return values


def not_assessable_reason(reason: str | None) -> str:
    return f"not assessable: {reason}"


def not_assessable(folder: Path) -> str | None:
    """The gate's reason recorded for a job, or None."""
    marker = folder / NOT_ASSESSABLE_FILE
    return marker.read_text(encoding="utf-8").strip() if marker.is_file() else None
