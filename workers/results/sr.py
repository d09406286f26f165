"""TID 1500 Measurement Report (Comprehensive 3D SR) for one classified cine loop, per IHE AIR.

Content tree (PS3.16 TID 1500 / 1501 / 4019 / 300, IHE AI Results profile rev 1.1 section 6.5.3.3)::

    CONTAINER Imaging Measurement Report (SEPARATE)
      Language, Observer = device (UID = device UID of the model, manufacturer aln-node, model name = arch)
      Procedure reported: Ultrasonography of breast (SCT 47079000)
      CONTAINER Imaging Measurements
        CONTAINER Measurement Group (TID 1501)
          Tracking Identifier + Tracking Unique Identifier (deterministic)
          Finding (DCM 121071) = Axillary nodal metastases (DCM 111301)
          Finding Site: Axillary lymph node (SCT 68171009) [+ Laterality R/L]
          Algorithm Identification (TID 4019): "aln-node <arch>", bundle version, parameters
          Probability of cancer (DCM 111047) = 100 x P, UCUM "%"           } each NUM INFERRED FROM a
          [OOD score (Mahalanobis), OOD threshold, UCUM "{score}"]        } SCOORD POLYLINE on the key frame
          Axillary nodal metastases (DCM 111301) = Present / Absent at the threshold
          TEXT Comment: "AI: ALN metastasis PRESENT 99 % (threshold 50 %)"
          Source images: the loop (key frame as Referenced Frame Number) + the heatmap SCs
      TEXT Comment: research use, not for diagnosis [+ synthetic / untrained model caveat]

A loop that failed the input gate (:mod:`workers.gate`) gets the same tree without the probability and
without Present/Absent: its comments say *not assessable* and why (with the OOD score NUMs when the model
ran). ``Probability of cancer`` is the standard concept viewers label the number with; the comment says
what it is here (ALN metastasis). See :mod:`workers.results.sr_content` for what OHIF needs to show it.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from workers.errors import ResultError
from workers.prediction import Prediction
from workers.results import common, sr_content, uids

logger = logging.getLogger(__name__)

FINDING = codes.DCM.AxillaryNodalMetastases  # DCM 111301 "Axillary nodal metastases"
PROBABILITY = sr_content.PROBABILITY
FINDING_SITE = codes.SCT.AxillaryLymphNode  # SCT 68171009
PROCEDURE = codes.SCT.UltrasonographyOfBreast  # SCT 47079000
PRESENT = Code("52101004", "SCT", "Present")
# CID 240 "Present-Absent Only" lists SCT 2667000 "Absent"; pydicom's table still has the
# retired 272519000, so the code is spelled out here.
ABSENT = Code("2667000", "SCT", "Absent")
PERCENT = sr_content.PERCENT
_LATERALITY = {"R": codes.SCT.Right, "L": codes.SCT.Left}


def algorithm_identification(prediction: Prediction, threshold: float) -> hd.sr.AlgorithmIdentification:
    """TID 4019 for the bundle that made ``prediction``."""
    model = prediction.model
    parameters = [
        f"arch={model.arch}",
        f"threshold={threshold:g}",
        f"bundle={model.name}",
        f"model_uid={model.model_uid}",
    ]
    if prediction.temperature != 1.0:
        parameters.append(f"temperature={prediction.temperature:.4g}")
    if prediction.ood_threshold is not None:
        parameters.append(f"ood_threshold={prediction.ood_threshold:.4g}")
    if model.synthetic_only:
        parameters.append("synthetic_only=true")
    if model.untrained:
        parameters.append("untrained=true")
    return hd.sr.AlgorithmIdentification(
        name=f"aln-node {model.arch}",
        version=model.version,
        parameters=parameters,
        manufacturer=common.MANUFACTURER,
    )


def _heatmap_reference(heatmap: Dataset, key_frame: int) -> hd.sr.SourceImageForMeasurementGroup:
    """Reference a heatmap SC; for a multi-frame one, the frame that shows the key frame."""
    frames: list[int] | None = None
    if int(heatmap.get("NumberOfFrames", 1) or 1) > 1:
        for item in heatmap.get("SourceImageSequence", []):
            numbers = _as_ints(item.get("ReferencedFrameNumber"))
            if key_frame + 1 in numbers:
                frames = [numbers.index(key_frame + 1) + 1]
                break
    return hd.sr.SourceImageForMeasurementGroup(
        referenced_sop_class_uid=heatmap.SOPClassUID,
        referenced_sop_instance_uid=heatmap.SOPInstanceUID,
        referenced_frame_numbers=frames,
    )


def _as_ints(value: object) -> list[int]:
    """An IS value (None, one number or a MultiValue) as a list of ints."""
    if value is None:
        return []
    if isinstance(value, str | int):
        return [int(value)]
    return [int(v) for v in value]  # type: ignore[attr-defined]


def _containers(items: Sequence[Dataset]) -> Iterator[Dataset]:
    for item in items:
        if item.get("ValueType") == "CONTAINER":
            yield item
        yield from _containers(item.get("ContentSequence", []))


def _make_containers_separate(sr: Dataset) -> None:
    """Set Continuity Of Content to SEPARATE on every CONTAINER (root included).

    highdicom writes CONTINUOUS, which tells renderers (dsr2html, PACS SR viewers) to run the
    children together as one sentence, dropping the concept names a reader needs (PS3.3
    C.18.8.1.3). The items here are independent observations, so SEPARATE is the truth.
    """
    sr.ContinuityOfContent = "SEPARATE"
    for item in _containers(sr.ContentSequence):
        item.ContinuityOfContent = "SEPARATE"


def build_sr(
    prediction: Prediction,
    source: Dataset,
    *,
    threshold: float,
    heatmaps: Sequence[Dataset] = (),
    institution_name: str | None = None,
    institutional_department_name: str | None = None,
    manufacturer: str = common.MANUFACTURER,
) -> Dataset:
    """Build the Comprehensive 3D SR (TID 1500) reporting ``prediction`` for ``source``.

    Parameters
    ----------
    prediction
        The classification of ``source``.
    source
        The classified cine loop (header is enough; pixel data is not read).
    threshold
        Operating point in [0, 1]: the finding is Present when probability >= threshold.
    heatmaps
        Secondary captures already built for this prediction; referenced as source images and
        listed as evidence.
    institution_name, institutional_department_name
        Written to the SR's General Equipment module when given.
    manufacturer
        Manufacturer of the SR (General Equipment).

    Returns
    -------
    pydicom.dataset.Dataset
        A :class:`highdicom.sr.Comprehensive3DSR` in the source's study, in a new series whose
        Series and SOP Instance UIDs depend only on the source and the model.

    Raises
    ------
    ResultError
        When the source does not match the prediction or highdicom rejects a value.
    """
    common.check_source(prediction, source, threshold)
    model = prediction.model
    evidence_source = common.with_type2_filled(source)
    source_uid = prediction.sop_instance_uid
    try:
        device = hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uids.device_uid(model.model_uid),
            name=f"aln-node {model.arch}",
            manufacturer_name=common.MANUFACTURER,
            model_name=model.arch,
        )
        observation_context = hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Device,
                observer_identifying_attributes=device,
            )
        )
        side = common.laterality(source)
        finding_site = hd.sr.FindingSite(
            anatomic_location=FINDING_SITE,
            laterality=_LATERALITY[side] if side else None,
        )
        algorithm = algorithm_identification(prediction, threshold)
        evaluations = []
        if prediction.assessable:
            evaluations.append(hd.sr.QualitativeEvaluation(
                name=FINDING, value=PRESENT if prediction.is_positive(threshold) else ABSENT))  # fmt: skip
        source_images = [
            hd.sr.SourceImageForMeasurementGroup.from_source_image(
                evidence_source, referenced_frame_numbers=[prediction.key_frame + 1]
            ),
            *(_heatmap_reference(h, prediction.key_frame) for h in heatmaps),
        ]
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=uids.result_uid(source_uid, model.model_uid, uids.TRACKING),
                identifier="AI ALN metastasis classification",
            ),
            finding_type=FINDING,
            algorithm_id=algorithm,
            finding_sites=[finding_site],
            measurements=sr_content.measurements(prediction, evidence_source),
            qualitative_evaluations=evaluations,
            source_images=source_images,
        )
        group[0].ContentSequence.append(sr_content.group_comment(prediction, threshold))
        report = hd.sr.MeasurementReport(
            observation_context=observation_context,
            procedure_reported=PROCEDURE,
            imaging_measurements=[group],
        )
        caveat = common.caveat_sentence(model)
        if not prediction.assessable:
            caveat = f"Not assessable: {prediction.not_assessable}. No probability is reported. {caveat}"
        comment = hd.sr.TextContentItem(
            name=codes.DCM.Comment,
            value=caveat,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        report[0].ContentSequence.append(comment)
        equipment = hd.ContributingEquipment(
            manufacturer=common.MANUFACTURER,
            purpose_of_reference=codes.DCM.ProcessingEquipment,  # IHE's 99IHE code is refused
            manufacturer_model_name=model.arch,
            software_versions=common.software_versions(model),
            contribution_description=f"AI inference: {common.model_label(model)}"[:1024],
        )
        with warnings.catch_warnings():
            # The source's name is copied as it is; highdicom's advice about its form is noise here.
            warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
            sr = hd.sr.Comprehensive3DSR(
                evidence=[evidence_source, *heatmaps],
                content=report[0],
                series_instance_uid=uids.result_uid(source_uid, model.model_uid, uids.SR_SERIES),
                series_number=common.SR_SERIES_NUMBER,
                sop_instance_uid=uids.result_uid(source_uid, model.model_uid, uids.SR_INSTANCE),
                instance_number=1,
                manufacturer=manufacturer,
                is_complete=True,
                is_final=False,
                is_verified=False,
                institution_name=institution_name,
                institutional_department_name=institutional_department_name,
                performed_procedure_codes=[PROCEDURE],
                contributing_equipment=[equipment],
                specific_character_set=common.RESULT_CHARSET,
            )
    except (ValueError, TypeError, AttributeError) as exc:
        raise ResultError(f"source {source_uid}: cannot build the SR: {exc}") from exc

    _make_containers_separate(sr)
    _finish_header(sr, source, prediction)
    if prediction.assessable:
        logger.info("SR %s for %s: P=%.3f, %s at threshold %g", sr.SOPInstanceUID, source_uid, prediction.probability,
                    "Present" if prediction.is_positive(threshold) else "Absent", threshold)  # fmt: skip
    else:
        logger.info("SR %s for %s: not assessable: %s", sr.SOPInstanceUID, source_uid, prediction.not_assessable)
    return sr


def _finish_header(sr: Dataset, source: Dataset, prediction: Prediction) -> None:
    """Header fields highdicom does not write: copied study attributes, labels.

    The model's device UID is the Device Observer UID of the observation context (TID 1004); it is not
    repeated in Contributing Equipment, whose IOD macro (PS3.3 C.12.1, Table C.12-2a) has no Device UID.
    """
    model = prediction.model
    common.copy_patient_study(common.with_type2_filled(source), sr)
    sr.SeriesDescription = common.series_description(common.SR_SERIES_DESCRIPTION, model)
    sr.ManufacturerModelName = model.arch[:64]
    sr.SoftwareVersions = common.software_versions(model)
