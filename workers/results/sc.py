"""Grad-CAM secondary captures: the key frame (SC Image) and the sampled loop (Multi-frame True Color SC).

Both are built with pydicom: highdicom's ``SCImage`` writes single-frame SC only, and one builder
for both keeps their headers identical. Modules follow PS3.3 A.8.1 (SC Image IOD) and A.8.5
(Multi-frame True Color SC IOD); pixels are RGB, 8 bit, PlanarConfiguration 0, uncompressed
Explicit VR Little Endian, which every PACS and viewer accepts.
"""

from __future__ import annotations

import logging

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian

from workers.errors import ResultError
from workers.prediction import Prediction
from workers.results import common, overlay, uids

logger = logging.getLogger(__name__)

SC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
MULTIFRAME_TRUE_COLOR_SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7.4"
IMPLEMENTATION_VERSION_NAME = "ALN_NODE"
_FRAME_TIME = Tag(0x0018, 0x1063)
_FRAME_TIME_VECTOR = Tag(0x0018, 0x1065)


def banner_lines(prediction: Prediction, threshold: float, frame: int, n_frames: int) -> list[overlay.BannerLine]:
    """Burned-in text for one rendered frame (0-based source ``frame`` of ``n_frames``)."""
    model = prediction.model
    positive = prediction.is_positive(threshold)
    verdict = ("POSITIVE", overlay.ORANGE) if positive else ("NEGATIVE", overlay.LIGHT_GREEN)
    frame_text = f"frame {frame + 1}/{n_frames}"
    lines = [
        overlay.BannerLine(
            (
                ("ALN metastasis probability ", overlay.WHITE),
                (f"{100.0 * prediction.probability:.1f} %", overlay.YELLOW),
                ("   ", overlay.WHITE),
                verdict,
                (f" at threshold {100.0 * threshold:g} %", overlay.WHITE),
            )
        ),
        overlay.BannerLine(
            (
                (f"Model {common.model_label(model)} ({model.name})   {frame_text}", overlay.GREY),
                ("   KEY FRAME" if frame == prediction.key_frame else "", overlay.YELLOW),
            )
        ),
        overlay.BannerLine(((common.BANNER_DISCLAIMER, overlay.YELLOW),)),
    ]
    if model.untrained:
        lines.append(overlay.BannerLine((("UNTRAINED MODEL - RANDOM WEIGHTS", overlay.ORANGE),)))
    elif model.synthetic_only:
        lines.append(overlay.BannerLine((("SYNTHETIC-DATA MODEL", overlay.ORANGE),)))
    return lines


def _n_frames(source: Dataset) -> int:
    return int(source.get("NumberOfFrames", 1) or 1)


def _check_pixels(prediction: Prediction, source: Dataset, pixels: np.ndarray, what: str) -> None:
    rows, cols = int(source.Rows), int(source.Columns)
    expected = (rows, cols, 3)
    if pixels.dtype != np.uint8 or pixels.shape[-3:] != expected:
        raise ResultError(
            f"source {prediction.sop_instance_uid}: {what} must be uint8 (..., {rows}, {cols}, 3), "
            f"got {pixels.dtype} {pixels.shape}"
        )
    if prediction.cam.shape != (len(prediction.cam_frames), rows, cols):
        raise ResultError(
            f"source {prediction.sop_instance_uid}: cam shape {prediction.cam.shape} does not match "
            f"{len(prediction.cam_frames)} cam_frames of {rows} x {cols}"
        )


def _base_dataset(
    prediction: Prediction,
    source: Dataset,
    *,
    sop_class_uid: str,
    kind: str,
    instance_number: int,
    referenced_frames: list[int],
    derivation: str,
) -> Dataset:
    """Header shared by both SCs: patient/study, series, equipment, general image, SOP common."""
    model = prediction.model
    source_uid = prediction.sop_instance_uid
    sop_instance_uid = uids.result_uid(source_uid, model.model_uid, kind)
    date, time = common.now()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME

    ds = Dataset()
    ds.file_meta = meta
    common.copy_patient_study(common.with_type2_filled(source), ds)
    # SOP Common
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    # General Series: a new series in the source's study. Laterality of a paired body part
    # (breast, axilla) is copied from the source or left empty (unknown), never guessed.
    ds.Modality = "OT"
    ds.SeriesInstanceUID = uids.result_uid(source_uid, model.model_uid, uids.SC_SERIES)
    ds.SeriesNumber = common.SC_SERIES_NUMBER
    ds.SeriesDescription = common.series_description(common.SC_SERIES_DESCRIPTION, model)
    ds.SeriesDate, ds.SeriesTime = date, time
    # PS3.3 C.7.3.1: Laterality is Type 2C, present only when Image Laterality is absent.
    if source.get("ImageLaterality"):
        ds.ImageLaterality = source.ImageLaterality
    else:
        ds.Laterality = source.get("Laterality", "") or ""
    # General Equipment + SC Equipment (C.8.6.1): workstation-made, from an ultrasound loop.
    ds.Manufacturer = common.MANUFACTURER
    ds.ManufacturerModelName = model.arch[:64]
    ds.SoftwareVersions = common.software_versions(model)
    ds.ConversionType = "WSD"
    ds.SecondaryCaptureDeviceManufacturer = common.MANUFACTURER
    ds.SecondaryCaptureDeviceManufacturerModelName = model.arch[:64]
    ds.SecondaryCaptureDeviceSoftwareVersions = common.software_versions(model)
    ds.DateOfSecondaryCapture, ds.TimeOfSecondaryCapture = date, time
    # General Image
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = ""
    ds.ContentDate, ds.ContentTime = date, time
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.BurnedInAnnotation = "YES"
    ds.DerivationDescription = derivation[:1024]
    ds.ImageComments = common.caveat_sentence(model)
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if _n_frames(source) > 1:
        reference.ReferencedFrameNumber = referenced_frames if len(referenced_frames) > 1 else referenced_frames[0]
    purpose = Dataset()
    purpose.CodeValue = codes.DCM.SourceImage.value  # DCM 121324 "Source image"
    purpose.CodingSchemeDesignator = "DCM"
    purpose.CodeMeaning = codes.DCM.SourceImage.meaning
    reference.PurposeOfReferenceCodeSequence = DicomSequence([purpose])
    ds.SourceImageSequence = DicomSequence([reference])
    # PS3.3 C.7.6.1.1.5: an image derived from a lossy-compressed one stays marked lossy.
    if str(source.get("LossyImageCompression", "")) == "01":
        ds.LossyImageCompression = "01"
        for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
            if source.get(keyword):
                setattr(ds, keyword, source[keyword].value)
    return ds


def _set_rgb_pixels(ds: Dataset, pixels: np.ndarray) -> None:
    """Image Pixel module for 8-bit RGB, colour-by-pixel (PlanarConfiguration 0)."""
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = int(pixels.shape[-3]), int(pixels.shape[-2])
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    ds["PixelData"].VR = "OB"


def build_key_frame_sc(
    prediction: Prediction,
    source: Dataset,
    key_frame_rgb: np.ndarray,
    *,
    threshold: float,
) -> Dataset:
    """Secondary Capture of the key frame with its Grad-CAM overlay and the information panel.

    Parameters
    ----------
    prediction
        The classification of ``source``.
    source
        The classified cine loop (header; pixel data is not read).
    key_frame_rgb
        The key frame, uint8 (Rows, Columns, 3) RGB, in the source's geometry.
    threshold
        Operating point in [0, 1] for the POSITIVE / NEGATIVE label.

    Returns
    -------
    pydicom.dataset.Dataset
        SC Image Storage instance, Rows = source Rows + panel height, Columns = source Columns.
    """
    common.check_source(prediction, source, threshold)
    _check_pixels(prediction, source, key_frame_rgb, "key_frame_rgb")
    n_frames = _n_frames(source)
    index = prediction.cam_frames.index(prediction.key_frame)
    lines = banner_lines(prediction, threshold, prediction.key_frame, n_frames)
    image = overlay.render_frame(key_frame_rgb, prediction.cam[index], prediction.crop, lines)
    ds = _base_dataset(
        prediction,
        source,
        sop_class_uid=SC_IMAGE_STORAGE,
        kind=uids.SC_KEY_FRAME,
        instance_number=1,
        referenced_frames=[prediction.key_frame + 1],
        derivation=(
            f"Grad-CAM of {common.model_label(prediction.model)} blended over frame "
            f"{prediction.key_frame + 1} of the source loop; information panel appended below"
        ),
    )
    _set_rgb_pixels(ds, image)
    logger.info("key-frame SC %s for %s", ds.SOPInstanceUID, prediction.sop_instance_uid)
    return ds


def _source_frame_time(source: Dataset) -> float | None:
    """Milliseconds between source frames (Cine module), or None when the source does not say."""
    if source.get("FrameTime"):
        return float(source.FrameTime)
    vector = source.get("FrameTimeVector")
    if vector is not None and len(vector) > 1:
        return float(np.mean([float(v) for v in list(vector)[1:]]))
    for keyword in ("RecommendedDisplayFrameRate", "CineRate"):
        if source.get(keyword):
            return 1000.0 / float(source[keyword].value)
    return None


def build_cine_sc(
    prediction: Prediction,
    source: Dataset,
    frames_rgb: np.ndarray,
    *,
    threshold: float,
) -> Dataset:
    """Multi-frame True Color SC of the sampled ``cam_frames`` with their overlays.

    Parameters
    ----------
    frames_rgb
        uint8 (len(cam_frames), Rows, Columns, 3) RGB source frames, in ``cam_frames`` order.

    Returns
    -------
    pydicom.dataset.Dataset
        Multi-frame True Color SC; frame i shows source frame ``cam_frames[i] + 1``. Timing follows
        the source (Frame Time when the sampling step is constant, else Frame Time Vector), so
        the loop plays at the speed of the acquisition.
    """
    common.check_source(prediction, source, threshold)
    _check_pixels(prediction, source, frames_rgb, "frames_rgb")
    if frames_rgb.ndim != 4 or frames_rgb.shape[0] != len(prediction.cam_frames):
        raise ResultError(
            f"source {prediction.sop_instance_uid}: frames_rgb has {frames_rgb.shape[0]} frames "
            f"for {len(prediction.cam_frames)} cam_frames"
        )
    n_frames = _n_frames(source)
    lines = [banner_lines(prediction, threshold, frame, n_frames) for frame in prediction.cam_frames]
    # The text differs per frame (its frame number), and on narrow frames it may wrap differently.
    panel = max(overlay.panel_height(frames_rgb.shape[2], frame_lines) for frame_lines in lines)
    rendered = np.stack(
        [
            overlay.render_frame(frames_rgb[i], prediction.cam[i], prediction.crop, lines[i], panel_rows=panel)
            for i in range(len(lines))
        ]
    )
    ds = _base_dataset(
        prediction,
        source,
        sop_class_uid=MULTIFRAME_TRUE_COLOR_SC_STORAGE,
        kind=uids.SC_CINE,
        instance_number=2,
        referenced_frames=[f + 1 for f in prediction.cam_frames],
        derivation=(
            f"Grad-CAM of {common.model_label(prediction.model)} blended over the "
            f"{len(prediction.cam_frames)} sampled frames of the source loop; information panel appended"
        ),
    )
    _set_rgb_pixels(ds, rendered)
    ds.NumberOfFrames = len(prediction.cam_frames)
    # Cine module (C.7.6.5): Frame Time when sampling is regular, else Frame Time Vector,
    # whose first value is 0 and each later one the time since the previous frame.
    frame_ms = _source_frame_time(source)
    if frame_ms is None:
        frame_ms = 1000.0 / 30.0
        logger.warning("source %s has no frame timing; assuming 30 frames/s", prediction.sop_instance_uid)
    steps = np.diff(np.asarray(prediction.cam_frames, dtype=float))
    if len(steps) == 0 or np.all(steps == steps[0]):
        ds.FrameTime = f"{(steps[0] if len(steps) else 1.0) * frame_ms:.3f}"
        ds.FrameIncrementPointer = _FRAME_TIME
    else:
        ds.FrameTimeVector = ["0", *(f"{s * frame_ms:.3f}" for s in steps)]
        ds.FrameIncrementPointer = _FRAME_TIME_VECTOR
    logger.info(
        "cine SC %s for %s: %d frames", ds.SOPInstanceUID, prediction.sop_instance_uid, ds.NumberOfFrames
    )
    return ds
