"""Content items of the SR measurement group that viewers show on the image.

OHIF (the most used open-source web viewer) and other TID 1500 readers display a measurement group only when
its NUM items carry image coordinates: each NUM here has one SCOORD child (INFERRED FROM, PS3.16 TID 300
row 8 / TID 320) on the key frame of the source loop, with SourceImageForRegion naming the loop and its
Referenced Frame Number (PS3.3 C.18.6.1.1). The region is the Grad-CAM peak region of the key frame as a
closed POLYLINE, so the reader sees where the evidence is. A short TEXT comment (DCM 121106) in the group is
what a viewer prints beside it: OHIF cuts labels at about 45 characters and shows at most 5 label lines.
"""

from __future__ import annotations

import math

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from scipy import ndimage

from workers.prediction import Prediction

PROBABILITY = codes.DCM.ProbabilityOfCancer  # DCM 111047 "Probability of cancer" (the reader's label)
PERCENT = Code("%", "UCUM", "percent")
# The out-of-distribution score is a Mahalanobis distance in the model's feature space (workers.ood): standard
# concepts DCM 121206 "Distance" and DCM 122411 "Threshold Value", with a UCUM annotation unit that names the
# kind of distance (UCUM 2.7: "{...}" is a unity with a label), so a viewer reads "Distance: 8.20 {Mahalanobis}".
# A private scheme ("99...") would read better but validators flag every item that uses it.
OOD_SCORE = codes.DCM.Distance
OOD_THRESHOLD = Code("122411", "DCM", "Threshold Value")
SCORE_UNIT = Code("{Mahalanobis}", "UCUM", "Mahalanobis distance of the model features to its training loops")
PEAK_FRACTION = 0.5  # the region is where the key frame's map is at least half its peak
_MIN_PERCENT = 1e-6  # a float32 softmax can underflow to 0; OHIF prints a NUM of 0 as a bare " %"


def percent_value(probability: float) -> float:
    """P as a percentage with 6 significant digits, never exactly 0 (then it still reads as a number)."""
    return max(float(f"{100.0 * probability:.6g}"), _MIN_PERCENT)


def percent_text(probability: float) -> str:
    """Short human form: ``< 0.1 %``, ``0.4 %``, ``37 %``, ``> 99.9 %``."""
    pct = 100.0 * probability
    if pct < 0.1:
        return "< 0.1 %"
    if pct > 99.9:
        return "> 99.9 %"
    if pct < 1.0 or pct > 99.0:
        return f"{pct:.1f} %"
    return f"{pct:.0f} %"


def threshold_text(threshold: float) -> str:
    pct = 100.0 * threshold
    return f"{pct:.0f} %" if abs(pct - round(pct)) < 0.05 else f"{pct:.1f} %"


COMMENT_MAX = 50


def comment_text(prediction: Prediction, threshold: float) -> str:
    """What the reader sees on the image, e.g. ``AI: ALN metastasis PRESENT 99 % (threshold 50 %)``."""
    if not prediction.assessable:
        short = str(prediction.not_assessable).split(" (")[0]
        text = f"AI: not assessable ({short})"
        return text if len(text) <= 45 else text[:44] + "…"
    verdict = "PRESENT" if prediction.is_positive(threshold) else "ABSENT"
    head = f"AI: ALN metastasis {verdict} {percent_text(prediction.probability)}"
    text = f"{head} (threshold {threshold_text(threshold)})"
    # OHIF cuts a label line after about 50 characters (shared/FIELD-NOTES.md): "> 99.9 %" with a
    # calibrated operating point such as 43.7 % would not fit, so the word is shortened then.
    return text if len(text) <= COMMENT_MAX else f"{head} (thr. {threshold_text(threshold)})"


def peak_region(prediction: Prediction) -> np.ndarray:
    """Closed polyline (5 x 2, column/row pixel coordinates, PS3.3 C.18.6.1.2) around the key frame's CAM peak.

    The connected region where the key frame's map is >= half its maximum, holding the maximum; without a
    map (or a flat one) the ultrasound region (``crop``). Pixel edges: the box spans whole pixels.
    """
    box = prediction.crop
    y0, x0, y1, x1 = box.y0, box.x0, box.y1, box.x1
    if prediction.key_frame in prediction.cam_frames:
        cam = prediction.cam[prediction.cam_frames.index(prediction.key_frame)]
        peak = float(cam.max())
        if peak > 0.0:
            labels, _ = ndimage.label(cam >= PEAK_FRACTION * peak)
            at = np.unravel_index(int(np.argmax(cam)), cam.shape)
            rows, cols = np.nonzero(labels == labels[at])
            y0, x0, y1, x1 = int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)


def coordinates(prediction: Prediction, source: Dataset) -> hd.sr.CoordinatesForMeasurement:
    """The SCOORD of a NUM: the peak region on the key frame of the loop (Referenced Frame Number = key + 1)."""
    return hd.sr.CoordinatesForMeasurement(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=peak_region(prediction),
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=str(source.SOPClassUID),
            referenced_sop_instance_uid=str(source.SOPInstanceUID),
            referenced_frame_numbers=[prediction.key_frame + 1],
        ),
    )


def measurements(prediction: Prediction, source: Dataset) -> list[hd.sr.Measurement]:
    """The probability NUM and, when the bundle has OOD statistics, the OOD score and its threshold."""
    out = []
    if prediction.assessable:
        out.append(hd.sr.Measurement(name=PROBABILITY, value=percent_value(prediction.probability), unit=PERCENT,
                                     referenced_coordinates=[coordinates(prediction, source)]))  # fmt: skip
    if prediction.ood_score is not None and prediction.ood_threshold is not None and math.isfinite(prediction.ood_score):
        for name, value in ((OOD_SCORE, prediction.ood_score), (OOD_THRESHOLD, prediction.ood_threshold)):
            out.append(hd.sr.Measurement(name=name, value=round(float(value), 3), unit=SCORE_UNIT,
                                         referenced_coordinates=[coordinates(prediction, source)]))  # fmt: skip
    return out


def group_comment(prediction: Prediction, threshold: float) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=codes.DCM.Comment, value=comment_text(prediction, threshold),
                                 relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)  # fmt: skip
