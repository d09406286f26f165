"""The TID 1500 SR as a PACS and a radiologist see it: valid IOD, readable rendering, stable UIDs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from conftest_results import (
    KEY_FRAME,
    cam_frames_rgb,
    dciodvfy_errors,
    dsr2html_text,
    key_frame_rgb,
    make_model,
    make_prediction,
    round_trip,
    save,
    source_header,
)
from pydicom.dataset import Dataset

from workers.errors import ResultError
from workers.results import build_cine_sc, build_key_frame_sc, build_sr, result_uid

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def items(ds: Dataset) -> Iterator[Dataset]:
    """Every content item of the tree, depth first."""
    for item in ds.get("ContentSequence", []):
        yield item
        yield from items(item)


def named(ds: Dataset, code_value: str) -> list[Dataset]:
    return [i for i in items(ds) if i.ConceptNameCodeSequence[0].CodeValue == code_value]


@pytest.fixture
def source() -> Dataset:
    return source_header()


def test_sr_round_trips_into_the_source_study_as_an_unverified_preliminary_report(source: Dataset) -> None:
    sr = round_trip(build_sr(make_prediction(), source, threshold=0.5))

    assert sr.SOPClassUID == COMPREHENSIVE_3D_SR
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert sr.PatientID == source.PatientID and sr.PatientName == source.PatientName
    assert sr.VerificationFlag == "UNVERIFIED"
    assert sr.PreliminaryFlag == "PRELIMINARY"
    assert sr.SeriesDescription.startswith("AI ALN metastasis — research use, not for diagnosis")
    assert sr.Manufacturer == "aln-node"
    assert sr.ContinuityOfContent == "SEPARATE"
    assert all(i.ContinuityOfContent == "SEPARATE" for i in items(sr) if i.ValueType == "CONTAINER")


def test_sr_carries_probability_in_percent_and_the_finding_at_the_threshold(source: Dataset) -> None:
    prediction = make_prediction(probability=0.734)
    positive = build_sr(prediction, source, threshold=0.5)
    negative = build_sr(prediction, source, threshold=0.8)

    (probability,) = named(positive, "111047")
    value = probability.MeasuredValueSequence[0]
    assert float(value.NumericValue) == pytest.approx(73.4)
    assert value.MeasurementUnitsCodeSequence[0].CodeValue == "%"
    assert value.MeasurementUnitsCodeSequence[0].CodingSchemeDesignator == "UCUM"
    (finding,) = named(positive, "111301")
    assert finding.ConceptNameCodeSequence[0].CodeMeaning == "Axillary nodal metastases"
    assert finding.ConceptCodeSequence[0].CodeValue == "52101004"  # Present
    assert named(negative, "111301")[0].ConceptCodeSequence[0].CodeValue == "2667000"  # Absent
    (site,) = named(positive, "363698007")
    assert site.ConceptCodeSequence[0].CodeValue == "68171009"  # Axillary lymph node


def test_sr_identifies_the_algorithm_and_the_device(source: Dataset) -> None:
    sr = build_sr(make_prediction(), source, threshold=0.35)

    assert named(sr, "111001")[0].TextValue == "aln-node tin"  # Algorithm Name
    assert named(sr, "111003")[0].TextValue == "1.2.0"  # Algorithm Version
    parameters = {i.TextValue for i in named(sr, "111002")}
    assert {"arch=tin", "threshold=0.35", f"model_uid={make_model().model_uid}"} <= parameters
    assert named(sr, "121012")[0].UID == make_model().model_uid  # Device Observer UID
    assert named(sr, "121015")[0].TextValue == "tin"  # Device Observer Model Name
    (processing,) = [
        e for e in sr.ContributingEquipmentSequence if e.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
        and e.Manufacturer == "aln-node"
    ]
    assert "DeviceUID" not in processing  # not in the Contributing Equipment macro (dciodvfy warns)


def test_sr_references_the_key_frame_and_the_heatmaps(source: Dataset) -> None:
    prediction = make_prediction()
    key = build_key_frame_sc(prediction, source, key_frame_rgb(), threshold=0.5)
    cine = build_cine_sc(prediction, source, cam_frames_rgb(), threshold=0.5)
    sr = round_trip(build_sr(prediction, source, threshold=0.5, heatmaps=[key, cine]))

    images = {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID: i.ReferencedSOPSequence[0]
              for i in items(sr) if i.ValueType == "IMAGE"}
    assert images[source.SOPInstanceUID].ReferencedFrameNumber == KEY_FRAME + 1
    assert key.SOPInstanceUID in images
    # In the cine SC the key frame (source frame 41) is its 6th frame: cam_frames 0, 8, ..., 40.
    assert images[cine.SOPInstanceUID].ReferencedFrameNumber == 6
    evidence = {
        s.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for s in series.ReferencedSOPSequence
    }
    assert evidence == {source.SOPInstanceUID, key.SOPInstanceUID, cine.SOPInstanceUID}


def test_sr_uids_are_stable_per_source_and_model(source: Dataset) -> None:
    first = build_sr(make_prediction(), source, threshold=0.5)
    again = build_sr(make_prediction(), source_header(), threshold=0.5)
    other = build_sr(make_prediction(model=make_model(model_uid="1.2.826.0.1.3680043.8.498.99")), source,
                     threshold=0.5)

    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (again.SOPInstanceUID, again.SeriesInstanceUID)
    assert first.SOPInstanceUID != other.SOPInstanceUID
    assert first.SeriesInstanceUID != other.SeriesInstanceUID
    uid = result_uid(source.SOPInstanceUID, make_model().model_uid, "sr-instance")
    assert uid == first.SOPInstanceUID and uid.startswith("2.25.") and len(uid) <= 64
    assert pydicom.uid.UID(uid).is_valid


@pytest.mark.parametrize(("side", "code"), [("R", "24028007"), ("L", "7771000")])
def test_sr_finding_site_has_the_image_laterality(source: Dataset, side: str, code: str) -> None:
    source.ImageLaterality = side
    sr = build_sr(make_prediction(), source, threshold=0.5)

    laterality = named(sr, "272741003")
    assert [i.ConceptCodeSequence[0].CodeValue for i in laterality] == [code]


def test_sr_falls_back_to_series_laterality(source: Dataset) -> None:
    source.Laterality = "L"
    sr = build_sr(make_prediction(), source, threshold=0.5)

    assert [i.ConceptCodeSequence[0].CodeValue for i in named(sr, "272741003")] == ["7771000"]


def test_sr_without_laterality_in_the_source_has_none(source: Dataset) -> None:
    assert named(build_sr(make_prediction(), source, threshold=0.5), "272741003") == []


def test_sr_builds_when_type2_patient_attributes_are_missing(source: Dataset, tmp_path: Path) -> None:
    for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "ReferringPhysicianName", "StudyID"):
        delattr(source, keyword)
    sr = round_trip(build_sr(make_prediction(), source, threshold=0.5))

    assert sr.PatientBirthDate == "" and sr.AccessionNumber == "" and sr.ReferringPhysicianName == ""
    assert dciodvfy_errors(save(sr, tmp_path / "sr.dcm")) == []


def test_sr_copies_study_attributes_highdicom_leaves_out(source: Dataset) -> None:
    source.PatientName = "Müller^Anna"
    source.IssuerOfPatientID = "HOSP-A"
    source.StudyDescription = "US Breast right"
    source.AccessionNumber = "ACC123"
    source.ReferringPhysicianName = "Referrer^Rita"
    sr = round_trip(build_sr(make_prediction(), source, threshold=0.5))

    assert str(sr.PatientName) == "Müller^Anna"
    assert (sr.IssuerOfPatientID, sr.StudyDescription, sr.AccessionNumber) == ("HOSP-A", "US Breast right", "ACC123")
    assert str(sr.ReferringPhysicianName) == "Referrer^Rita"


def test_sr_says_when_the_model_never_saw_clinical_data(source: Dataset) -> None:
    synthetic = build_sr(make_prediction(), source, threshold=0.5)
    clinical = build_sr(make_prediction(model=make_model(synthetic_only=False)), source, threshold=0.5)

    assert "SYNTHETIC" in synthetic.SeriesDescription
    assert "synthetic data only" in named(synthetic, "121106")[-1].TextValue  # the report's closing comment
    assert clinical.SeriesDescription == "AI ALN metastasis — research use, not for diagnosis"
    assert "synthetic" not in named(clinical, "121106")[-1].TextValue
    untrained = build_sr(make_prediction(model=make_model(untrained=True)), source, threshold=0.5)
    assert "UNTRAINED" in untrained.SeriesDescription.upper()


def test_sr_passes_dciodvfy_and_dsr2html_shows_the_labels(source: Dataset, tmp_path: Path) -> None:
    source.ImageLaterality = "L"
    path = save(build_sr(make_prediction(probability=0.734), source, threshold=0.5), tmp_path / "sr.dcm")

    assert dciodvfy_errors(path) == []
    text = dsr2html_text(path)
    for expected in ("Axillary nodal metastases", "Probability of cancer", "73.4 %", "Present",
                     "aln-node tin", "research use", "Left", "Ultrasonography of breast"):
        assert expected in text, expected


def test_sr_refuses_a_source_that_is_not_the_predicted_one(source: Dataset) -> None:
    source.SOPInstanceUID = "1.2.3.4.5"
    with pytest.raises(ResultError, match="1.2.3.4.5"):
        build_sr(make_prediction(), source, threshold=0.5)
