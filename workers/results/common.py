"""What the SR and the secondary captures share: patient/study copying, labels and disclaimers."""

from __future__ import annotations

import copy
import datetime
import logging

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID

import workers
from workers.errors import ResultError
from workers.prediction import ModelInfo, Prediction

logger = logging.getLogger(__name__)

MANUFACTURER = "aln-node"
# Results are written in UTF-8 (PS3.3 C.12.1.1.2 "ISO_IR 192"): the descriptions contain an em dash,
# which the sources' usual Latin-1 (ISO_IR 100) cannot encode; copied names are re-encoded.
RESULT_CHARSET = "ISO_IR 192"
DISCLAIMER = "research use, not for diagnosis"
BANNER_DISCLAIMER = "RESEARCH USE - NOT FOR DIAGNOSTIC USE"
SR_SERIES_DESCRIPTION = f"AI ALN metastasis — {DISCLAIMER}"
SC_SERIES_DESCRIPTION = f"AI ALN heatmap — {DISCLAIMER}"
# Fixed, high series numbers keep AI series after the acquired ones in a viewer's series list.
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902

# Patient (C.7.1.1), General Study (C.7.2.1) and Patient Study (C.7.2.2) attributes that results
# inherit from the source. Type 2 ones are written empty when the source lacks them.
_TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
_OPTIONAL_PATIENT_STUDY = (
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "OtherPatientIDsSequence",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "StudyDescription",
    "IssuerOfAccessionNumberSequence",
    "ProcedureCodeSequence",
    "ReferencedStudySequence",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
)
_LATERALITY_CODES = {"R": "Right", "L": "Left"}


def source_uid(source: Dataset) -> str:
    """SOP Instance UID of ``source`` for messages (never the patient's name)."""
    return str(source.get("SOPInstanceUID", "<no SOP Instance UID>"))


def check_source(prediction: Prediction, source: Dataset, threshold: float) -> None:
    """Raise :class:`ResultError` unless ``source`` is the instance ``prediction`` was made from."""
    uid = source_uid(source)
    if not 0.0 <= threshold <= 1.0:
        raise ResultError(f"source {uid}: threshold {threshold!r} outside [0, 1]")
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        value = source.get(keyword)
        if not value or not UID(str(value)).is_valid:
            raise ResultError(f"source {uid}: {keyword} is missing or not a valid UID: {value!r}")
    if str(source.SOPInstanceUID) != prediction.sop_instance_uid:
        raise ResultError(
            f"prediction is for {prediction.sop_instance_uid} but the source is {uid}"
        )
    frames = int(source.get("NumberOfFrames", 1) or 1)
    if not 0 <= prediction.key_frame < frames:
        raise ResultError(f"source {uid}: key_frame {prediction.key_frame} outside 0..{frames - 1}")
    if not prediction.assessable:
        return  # no probability and possibly no map: nothing more to check
    if prediction.key_frame not in prediction.cam_frames:
        raise ResultError(
            f"source {uid}: key_frame {prediction.key_frame} is not one of cam_frames "
            f"{prediction.cam_frames}"
        )
    if not 0.0 <= prediction.probability <= 1.0:
        raise ResultError(f"source {uid}: probability {prediction.probability!r} outside [0, 1]")


def with_type2_filled(source: Dataset) -> Dataset:
    """Return a shallow-enough copy of ``source``'s header with empty Type 2 patient/study values.

    highdicom's SR constructor reads PatientBirthDate, AccessionNumber, ... from its first
    evidence item and raises AttributeError when one is absent; an empty value is what PS3.3
    asks for a Type 2 attribute whose value is unknown. Pixel data is not copied.
    """
    header = Dataset()
    header.file_meta = FileMetaDataset(copy.deepcopy(getattr(source, "file_meta", Dataset())))
    for element in source:
        if element.tag == 0x7FE00010:  # Pixel Data: not needed for references
            continue
        header.add(copy.deepcopy(element))
    for keyword in _TYPE2_PATIENT_STUDY:
        if keyword not in header:
            setattr(header, keyword, "")
    return header


def copy_patient_study(source: Dataset, target: Dataset) -> None:
    """Copy the patient and study attributes of ``source`` onto ``target`` (Type 2 filled)."""
    target.StudyInstanceUID = source.StudyInstanceUID
    for keyword in _TYPE2_PATIENT_STUDY:
        setattr(target, keyword, copy.deepcopy(source.get(keyword, "")))
    for keyword in _OPTIONAL_PATIENT_STUDY:
        if keyword in source and source[keyword].value not in (None, ""):
            target[keyword] = copy.deepcopy(source[keyword])
    target.SpecificCharacterSet = RESULT_CHARSET


def laterality(source: Dataset) -> str | None:
    """``"R"`` or ``"L"`` from Image Laterality, else Series Laterality; None when unknown.

    Image Laterality (0020,0062) may be ``B`` (both) or ``U`` (unpaired): neither names one
    axilla, so the SR then leaves the finding site without laterality.
    """
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(source.get(keyword, "") or "").strip().upper()
        if value in _LATERALITY_CODES:
            return value
    return None


def model_label(model: ModelInfo) -> str:
    """Short model label for banners and algorithm names: ``"tin v1.0.0"``."""
    return f"{model.arch} v{model.version}"


def caveat_sentence(model: ModelInfo) -> str:
    """One sentence for comments: the disclaimer plus the model caveat when there is one."""
    caveat = model_caveat(model)
    text = f"AI result for {DISCLAIMER}."
    return f"{text} Note: {caveat}." if caveat else text


def model_caveat(model: ModelInfo) -> str | None:
    """What a reader must know about a model that did not learn from clinical data, if anything."""
    if model.untrained:
        return "model has random (untrained) weights"
    if model.synthetic_only:
        return "model trained on synthetic data only"
    return None


def series_description(base: str, model: ModelInfo) -> str:
    """Series Description with the model caveat, within LO's 64 bytes.

    PS3.5 6.2 limits LO to 64 characters and validators (dciodvfy) count encoded bytes; the
    em dash takes three in UTF-8. The full caveat does not fit after the disclaimer, so the
    longest form that fits is used; the SR's comment item, the SC banner and Image Comments
    carry the full sentence.
    """
    caveat = model_caveat(model)
    if caveat is None:
        return _fit_lo(base)
    tag = "UNTRAINED" if model.untrained else "SYNTHETIC"
    short = "untrained model" if model.untrained else "synthetic-data model"
    for candidate in (f"{base} ({caveat})", f"{base} ({short})", f"{base} ({tag})", f"{base}; {tag}"):
        if len(candidate.encode("utf-8")) <= 64:
            return candidate
    return _fit_lo(f"{tag}: {base}")


def _fit_lo(text: str) -> str:
    while len(text.encode("utf-8")) > 64:
        text = text[:-1]
    return text


def software_versions(model: ModelInfo) -> list[str]:
    """Software Versions (LO, multi-valued): the node's version and the model bundle's."""
    return [f"aln-node {workers.__version__}", f"{model.name} {model.version}"[:64]]


def now() -> tuple[str, str]:
    """Local date and time as DICOM DA and TM strings."""
    stamp = datetime.datetime.now()
    return stamp.strftime("%Y%m%d"), stamp.strftime("%H%M%S")
