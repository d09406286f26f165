"""Device side of the synthetic breast-ultrasound phantom: screen layout, burned-in UI and the DICOM file.

The pixel content (anatomy, lesion, speckle) lives in :mod:`workers.research.phantom`; this module places it
on a scanner-like screen (UI bars, burned-in text, grey-scale bar, depth marks) and writes it as an
Ultrasound Multi-frame Image (PS3.3 A.7) with a US Region Calibration module (PS3.3 C.8.5.5) so that
readers can find the image region without guessing.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    UltrasoundMultiFrameImageStorage,
)

logger = logging.getLogger(__name__)

SYNTAXES: dict[str, UID] = {"jpeg": JPEGBaseline8Bit, "rle": RLELossless, "explicit": ExplicitVRLittleEndian}
MANUFACTURER = "aln-node phantom"
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:aln-node:phantom")
FRAME_TIME_MS = 50.0  # 20 frames/s, a common B-mode cine rate for a linear breast probe


@dataclass(frozen=True)
class Region:
    """The B-mode image region in frame pixels: rows [y0, y1), columns [x0, x1); square pixels."""

    y0: int
    x0: int
    y1: int
    x1: int
    delta_cm: float  # physical size of one pixel, both directions

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0


def layout(size: tuple[int, int], depth_cm: float) -> Region:
    """Place the image region on a screen of ``size`` (H, W): a title bar on top, a status bar below,
    a narrow left margin and a right panel for the grey-scale bar, as on common scanners."""
    h, w = size
    top, bottom = max(10, round(0.075 * h)), max(6, round(0.05 * h))
    left, right = max(4, round(0.06 * w)), max(14, round(0.14 * w))
    rows = h - top - bottom
    return Region(y0=top, x0=left, y1=top + rows, x1=w - right, delta_cm=depth_cm / rows)


def draw_chrome(size: tuple[int, int], region: Region, top_text: str, bottom_text: str) -> np.ndarray:
    """The static screen around the image region: UI bars, burned-in text, grey bar and depth marks.

    Returns a uint8 (H, W) frame whose image region is zero; everything drawn lies outside it.
    """
    h, w = size
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=max(7, region.y0 - 4))
    draw.rectangle((0, 0, w - 1, region.y0 - 2), fill=38)
    draw.text((3, 1), top_text, fill=225, font=font)
    draw.rectangle((0, region.y1 + 1, w - 1, h - 1), fill=30)
    small = ImageFont.load_default(size=max(6, h - region.y1 - 3))
    draw.text((3, region.y1 + 1), bottom_text, fill=200, font=small)
    # Grey-scale bar in the right panel (the display map), then depth marks every 0.5 cm beside the image.
    bar_x0 = region.x1 + max(6, (w - region.x1) // 2)
    bar_x1 = min(w - 2, bar_x0 + max(3, (w - region.x1) // 5))
    ramp = np.linspace(255, 0, region.y1 - region.y0).astype(np.uint8)
    arr = np.asarray(img).copy()
    arr[region.y0 : region.y1, bar_x0:bar_x1] = ramp[:, None]
    mark_x = region.x1 + 2
    n_marks = int(region.shape[0] * region.delta_cm / 0.5) + 1
    for k in range(n_marks):
        y = region.y0 + round(k * 0.5 / region.delta_cm)
        if y < region.y1:
            arr[y, mark_x : mark_x + (4 if k % 2 == 0 else 2)] = 200
    # Focus marker: a small triangle right of the image at about 1.5 cm depth.
    fy = min(region.y1 - 4, region.y0 + round(1.5 / region.delta_cm))
    for d in range(3):
        arr[fy - d : fy + d + 1, region.x1 + 7 + d] = 230
    arr[region.y0 : region.y1, region.x0 : region.x1] = 0
    return arr


def compose_screen(
    gray: np.ndarray, mask_region: np.ndarray, region: Region, size: tuple[int, int], top: str, bottom: str
) -> tuple[np.ndarray, np.ndarray]:
    """Put the image region's frames (F, h, w) on the static screen; the mask goes to frame geometry too."""
    chrome = draw_chrome(size, region, top, bottom)
    out = np.repeat(chrome[None], gray.shape[0], axis=0)
    out[:, region.y0 : region.y1, region.x0 : region.x1] = gray
    mask = np.zeros(out.shape, dtype=bool)
    mask[:, region.y0 : region.y1, region.x0 : region.x1] = mask_region
    return out, mask


def check_options(n: int, positive_rate: float, label_noise: float, syntax: str, loops_per_patient: int) -> None:
    """Refuse bad data-set options with a message naming the value."""
    if n < 1 or loops_per_patient < 1:
        raise ValueError(f"n and loops_per_patient must be >= 1, got n={n}, loops_per_patient={loops_per_patient}")
    for name, value in (("positive_rate", positive_rate), ("label_noise", label_noise)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    if syntax not in SYNTAXES:
        raise ValueError(f"unknown syntax {syntax!r}; choose one of {sorted(SYNTAXES)}")


def assign_labels(seed: int, n_patients: int, positive_rate: float, label_noise: float) -> tuple[np.ndarray, np.ndarray]:
    """(true, recorded) labels per patient: exactly round(rate * n) true positives, in a seeded random order;
    each recorded label is flipped with probability ``label_noise``."""
    rng = np.random.default_rng([seed, 0])
    true = np.zeros(n_patients, dtype=int)
    true[rng.permutation(n_patients)[: round(positive_rate * n_patients)]] = 1
    return true, np.where(rng.random(n_patients) < label_noise, 1 - true, true)


def case_uid(seed: int, key: str, *parts: int | str) -> UID:
    """A UID derived only from (seed, key, parts): the same inputs give the same UID in every run.

    A name-based (SHA-1, version 5) UUID under the 2.25 root (PS3.5 B.2). ``generate_uid(prefix=None,
    entropy_srcs=...)`` would not do: pydicom ignores the entropy sources when the prefix is None.
    """
    name = "/".join(["aln-node-phantom", str(seed), key, *map(str, parts)])
    return UID(f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}")


@dataclass(frozen=True)
class DicomIds:
    """Identifiers and dates of one synthetic loop (no real-looking names; PatientID ``PH1-0007`` style: seed 1,
    patient 7, so that data sets made with different seeds can be pooled without two patients sharing an ID)."""

    seed: int
    patient_number: int
    study_uid: UID
    series_uid: UID
    sop_uid: UID
    series_number: int
    when: dt.datetime
    laterality: str
    age_years: int

    @classmethod
    def derive(cls, seed: int, patient: int, loop: int, index: int) -> DicomIds:
        """Identifiers of loop ``index`` (the ``loop``-th of ``patient``): one study per patient, one series
        per loop; UIDs and dates depend only on the arguments."""
        when = dt.datetime(2024, 1, 1, 8, 0) + dt.timedelta(days=patient % 700, minutes=(37 * patient) % 540 + 3 * loop)
        return cls(seed, patient, case_uid(seed, "study", patient), case_uid(seed, "series", index),
                   case_uid(seed, "sop", index), loop + 1, when, "LR"[patient % 2], 35 + (patient * 7) % 40)

    @property
    def screen_title(self) -> str:
        """The burned-in title bar text, as scanners show it (synthetic ID and date)."""
        return f"PHANTOM L12-5  {self.patient_id}  {self.when:%Y-%m-%d %H:%M}"

    @property
    def patient_id(self) -> str:
        return f"PH{self.seed}-{self.patient_number:04d}"

    @property
    def patient_name(self) -> str:
        return f"PHANTOM^{self.seed}-{self.patient_number:04d}"

    @property
    def short_id(self) -> str:
        """At most 16 characters (SH: Study ID, Accession Number): seed and patient, unique for seeds < 10**9."""
        return f"{self.seed % 10**9}{self.patient_number:06d}"[-15:]


def build_dataset(frames: np.ndarray, region: Region, ids: DicomIds, syntax: str) -> Dataset:
    """An Ultrasound Multi-frame Image (1.2.840.10008.5.1.4.1.1.3.1) holding ``frames`` (F, H, W) uint8.

    ``syntax`` is ``"explicit"`` (MONOCHROME2, native), ``"rle"`` (MONOCHROME2, RLE Lossless via pydicom's
    encoder) or ``"jpeg"`` (YBR_FULL_422, one JPEG Baseline fragment per frame, PS3.5 A.4.1).
    """
    if syntax not in SYNTAXES:
        raise ValueError(f"unknown syntax {syntax!r}; choose one of {sorted(SYNTAXES)}")
    if frames.dtype != np.uint8 or frames.ndim != 3:
        raise ValueError(f"frames must be uint8 (F, H, W), got {frames.dtype} {frames.shape}")
    n, h, w = frames.shape
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = ids.sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "ALNNODE_PHANTOM"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    date, time = ids.when.strftime("%Y%m%d"), ids.when.strftime("%H%M%S")
    # Patient and study modules (PS3.3 C.7.1.1, C.7.2.1): synthetic identifiers only.
    ds.PatientName = ids.patient_name
    ds.PatientID = ids.patient_id
    ds.IssuerOfPatientID = "ALN-NODE-PHANTOM"
    ds.PatientBirthDate = ""
    ds.PatientSex = "F"
    ds.PatientAge = f"{ids.age_years:03d}Y"
    ds.StudyInstanceUID = ids.study_uid
    ds.StudyDate, ds.StudyTime = date, time
    ds.ReferringPhysicianName = ""
    ds.StudyID = ids.short_id
    ds.AccessionNumber = f"A{ids.short_id}"
    ds.StudyDescription = "US BREAST SYNTHETIC PHANTOM"
    # Series and equipment (C.7.3.1, C.7.5.1).
    ds.Modality = "US"
    ds.SeriesInstanceUID = ids.series_uid
    ds.SeriesNumber = ids.series_number
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.SeriesDescription = "Breast lesion sweep (synthetic)"
    ds.Laterality = ids.laterality
    ds.BodyPartExamined = "BREAST"
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "Synthetic L12-5"
    ds.SoftwareVersions = "aln-node phantom 1"
    ds.DeviceSerialNumber = "PHANTOM-0001"
    ds.InstitutionName = "aln-node synthetic data"
    ds.StationName = "PHANTOM"
    # General image, US image, cine and multi-frame modules (C.7.6.1, C.8.5.6, C.7.6.5, C.7.6.6).
    ds.SOPClassUID = UltrasoundMultiFrameImageStorage
    ds.SOPInstanceUID = ids.sop_uid
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = date, time
    ds.AcquisitionDateTime = ids.when.strftime("%Y%m%d%H%M%S")
    ds.PatientOrientation = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "BREAST", "0001"]  # value 4 0001: 2-D (B-mode) imaging, C.8.5.6.1.1
    ds.BurnedInAnnotation = "YES"
    ds.ImageComments = "Synthetic phantom generated by aln-node; not patient data"
    ds.NumberOfFrames = n
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.FrameTime = FRAME_TIME_MS
    ds.CineRate = round(1000 / FRAME_TIME_MS)
    ds.RecommendedDisplayFrameRate = round(1000 / FRAME_TIME_MS)
    ds.ActualFrameDuration = round(FRAME_TIME_MS)
    ds.PreferredPlaybackSequencing = 0
    ds.TransducerType = "LINEAR"
    ds.SequenceOfUltrasoundRegions = [_region_item(region)]
    ds.Rows, ds.Columns = h, w
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if syntax == "jpeg":
        _set_jpeg_pixels(ds, frames)
    else:
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.LossyImageCompression = "00"
        if syntax == "rle":
            ds.compress(RLELossless, frames, generate_instance_uid=False)
        else:
            ds.PixelData = frames.tobytes()
    return ds


def _region_item(region: Region) -> Dataset:
    item = Dataset()
    item.RegionSpatialFormat = 1  # 2D (tissue or flow)
    item.RegionDataType = 1  # tissue
    item.RegionFlags = 0
    # PS3.3 C.8.5.5.1: Min/Max X0/Y0/X1/Y1 are inclusive pixel coordinates of the region's corners.
    item.RegionLocationMinX0, item.RegionLocationMinY0 = region.x0, region.y0
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = region.x1 - 1, region.y1 - 1
    item.PhysicalUnitsXDirection = 3  # cm
    item.PhysicalUnitsYDirection = 3
    item.PhysicalDeltaX = region.delta_cm
    item.PhysicalDeltaY = region.delta_cm
    item.ReferencePixelX0 = 0
    item.ReferencePixelY0 = 0
    item.ReferencePixelPhysicalValueX = 0.0
    item.ReferencePixelPhysicalValueY = 0.0
    item.TransducerFrequency = 12000  # kHz
    return item


def _set_jpeg_pixels(ds: Dataset, frames: np.ndarray) -> None:
    """JPEG Baseline frames with 4:2:2 chroma (hence YBR_FULL_422, PS3.5 8.2.1), one fragment each."""
    encoded = []
    for frame in frames:
        buf = io.BytesIO()
        Image.fromarray(frame).convert("RGB").save(buf, format="JPEG", quality=92, subsampling=1)
        encoded.append(buf.getvalue())
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PlanarConfiguration = 0
    ds.PixelData = encapsulate(encoded)
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    ratio = frames.size * 3 / max(1, sum(len(e) for e in encoded))
    ds.LossyImageCompressionRatio = f"{ratio:.2f}"
    ds.LossyImageCompressionMethod = "ISO_10918_1"


def write_dataset(ds: Dataset, path: Path) -> None:
    """Write ``ds`` as a DICOM Part 10 file (preamble, file meta) at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    logger.debug("wrote %s (%s)", ds.SOPInstanceUID, ds.file_meta.TransferSyntaxUID.name)


@dataclass(frozen=True)
class PhantomCase:
    """One written loop: where its files are, its identifiers and (noisy and true) labels."""

    case_id: str
    path: Path
    mask_path: Path
    patient_id: str
    label: int  # as recorded in the manifest (after label noise)
    true_label: int  # what the pixels show
    frames: int
    frames_with_feature: tuple[int, ...]
    static_frame: int  # the lesion's largest section: the image a sonographer would freeze and store
    study_instance_uid: str
    sop_instance_uid: str


MANIFEST_COLUMNS = (
    "path", "label", "patient_id", "case_id", "true_label", "frames", "positive_frames",
    "feature_start", "feature_stop", "static_frame", "mask_path", "study_instance_uid", "sop_instance_uid",
)


def write_case(
    out_dir: Path, case_id: str, frames: np.ndarray, mask: np.ndarray, feature_frames: np.ndarray,
    ds: Dataset, label: int, true_label: int, static_frame: int,
) -> PhantomCase:
    """Write the DICOM file ``dicom/CASE.dcm`` and the mask ``masks/CASE.npz`` (``mask`` (F, H, W) bool in
    frame geometry, ``frames_with_feature`` int indices)."""
    path, mask_path = out_dir / "dicom" / f"{case_id}.dcm", out_dir / "masks" / f"{case_id}.npz"
    write_dataset(ds, path)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(mask_path, mask=mask, frames_with_feature=feature_frames.astype(np.int32))
    return PhantomCase(case_id, path, mask_path, str(ds.PatientID), label, true_label, int(frames.shape[0]),
                       tuple(int(i) for i in feature_frames), static_frame, str(ds.StudyInstanceUID),
                       str(ds.SOPInstanceUID))


def write_manifest(out_dir: Path, cases: list[PhantomCase]) -> Path:
    """``manifest.csv``: one row per loop; paths relative to ``out_dir``; ``positive_frames`` counts the
    frames showing the feature, ``feature_start``/``feature_stop`` bound them (stop exclusive; empty if none);
    ``static_frame`` is the loop's static image for the static baselines (the lesion's largest section)."""
    path = out_dir / "manifest.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(MANIFEST_COLUMNS)
        for c in cases:
            span = (c.frames_with_feature[0], c.frames_with_feature[-1] + 1) if c.frames_with_feature else ("", "")
            writer.writerow([
                c.path.relative_to(out_dir).as_posix(), c.label, c.patient_id, c.case_id, c.true_label, c.frames,
                len(c.frames_with_feature), *span, c.static_frame, c.mask_path.relative_to(out_dir).as_posix(),
                c.study_instance_uid, c.sop_instance_uid,
            ])
    return path
