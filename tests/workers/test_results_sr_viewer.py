"""The SR content viewers and machine readers rely on: coordinates on the key frame, finding type, short comment,
OOD score, not-assessable reports; read back with highdicom, rendered by dsr2html, checked by dciodvfy."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from conftest_results import BLOB_CENTRE, KEY_FRAME, make_prediction, save, source_header
from pydicom.dataset import Dataset

from tests.helpers import require_tool
from workers.gate import GateRules, image_reason, tag_reason
from workers.prediction import Box
from workers.results import build_sr
from workers.results.sr_content import COMMENT_MAX, comment_text, percent_value

FINDING = hd.sr.CodedConcept("111301", "DCM", "Axillary nodal metastases")


def with_ood(probability: float = 0.734, **changes: object) -> object:
    return dataclasses.replace(make_prediction(probability=probability), ood_score=8.25, ood_threshold=20.5,
                               energy_score=-3.0, energy_threshold=-1.0, **changes)  # fmt: skip


def _dsr2html_full(path: Path) -> str:
    run = subprocess.run([require_tool("dsr2html"), "+Rd", str(path)], capture_output=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", run.stdout.decode("utf-8", errors="replace")))


def test_highdicom_reads_finding_probability_verdict_coordinates_and_frame(tmp_path: Path) -> None:
    path = save(build_sr(with_ood(), source_header(), threshold=0.5), tmp_path / "sr.dcm")

    report = hd.sr.srread(path)
    (group,) = report.content.get_image_measurement_groups(finding_type=FINDING)
    assert group.finding_type == FINDING
    by_name = {m.name.meaning: m for m in group.get_measurements()}
    probability = by_name["Probability of cancer"]
    assert probability.value == pytest.approx(73.4) and probability.unit.value == "%"
    (scoord,) = probability.referenced_coordinates  # type: ignore[misc]
    assert scoord.GraphicType == "POLYLINE"
    xy = np.asarray(scoord.value).reshape(-1, 2)
    assert np.array_equal(xy[0], xy[-1])  # closed
    (x0, y0), (x1, y1) = xy.min(axis=0), xy.max(axis=0)
    assert x0 < BLOB_CENTRE[1] < x1 and y0 < BLOB_CENTRE[0] < y1  # around the Grad-CAM peak
    ref = scoord.ContentSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedFrameNumber == KEY_FRAME + 1 and ref.ReferencedSOPInstanceUID == source_header().SOPInstanceUID
    assert by_name["Distance"].value == pytest.approx(8.25) and by_name["Distance"].unit.value == "{Mahalanobis}"
    assert by_name["Threshold Value"].value == pytest.approx(20.5)
    (verdict,) = group.get_qualitative_evaluations()
    assert verdict.name == FINDING and verdict.value.meaning == "Present"


def test_dciodvfy_finds_nothing_of_ours_and_dsr2html_names_finding_probability_and_frame(tmp_path: Path) -> None:
    path = save(build_sr(with_ood(), source_header(), threshold=0.5), tmp_path / "sr.dcm")

    run = subprocess.run([require_tool("dciodvfy"), "-new", str(path)], capture_output=True, text=True, timeout=60)
    lines = [ln for ln in (run.stdout + run.stderr).splitlines() if ln.startswith(("Error", "Warning"))]
    # the one remaining warning is the source file's retired PatientName form, copied as it is
    assert [ln for ln in lines if "PatientName" not in ln] == [], lines
    text = _dsr2html_full(path)
    for expected in ("Finding: Axillary nodal metastases", "Probability of cancer: 73.4 %",
                     "Referenced Frame Number: 41", "Axillary nodal metastases: Present",
                     "AI: ALN metastasis PRESENT 73 % (threshold 50 %)", "Distance: 8.25 {Mahalanobis}"):
        assert expected in text, expected


@pytest.mark.parametrize(
    ("probability", "threshold", "comment"),
    [
        (0.99, 0.5, "AI: ALN metastasis PRESENT 99 % (threshold 50 %)"),
        (0.995, 0.5, "AI: ALN metastasis PRESENT 99.5 % (threshold 50 %)"),
        (0.4372, 0.4371, "AI: ALN metastasis PRESENT 44 % (threshold 43.7 %)"),
        (0.2, 0.5, "AI: ALN metastasis ABSENT 20 % (threshold 50 %)"),
        (1e-9, 0.5, "AI: ALN metastasis ABSENT < 0.1 % (threshold 50 %)"),
        (0.99995, 0.5, "AI: ALN metastasis PRESENT > 99.9 % (thr. 50 %)"),
    ],
)
def test_comment_is_short_and_a_tiny_probability_still_reads_as_a_number(probability: float, threshold: float,
                                                                         comment: str) -> None:  # fmt: skip
    prediction = make_prediction(probability=probability)
    assert comment_text(prediction, threshold) == comment and len(comment) <= COMMENT_MAX
    assert percent_value(probability) > 0.0  # OHIF prints a NUM of exactly 0 as a bare " %"
    sr = build_sr(prediction, source_header(), threshold=threshold)
    (value,) = [i.MeasuredValueSequence[0].NumericValue for i in _items(sr) if i.ValueType == "NUM"]
    assert float(value) > 0.0


def _items(ds: Dataset) -> list[Dataset]:
    out = []
    for item in ds.get("ContentSequence", []):
        out.append(item)
        out += _items(item)
    return out


def test_not_assessable_sr_has_the_reason_and_no_probability(tmp_path: Path) -> None:
    gated = make_prediction(probability=float("nan"), not_assessable="frozen loop (mean change between frames 0.00 grey levels)",
                            cam=np.zeros((0, 480, 640), np.float32), cam_frames=())  # fmt: skip
    sr = build_sr(gated, source_header(), threshold=0.5)
    path = save(sr, tmp_path / "sr.dcm")

    items = _items(sr)
    assert not [i for i in items if i.ValueType == "NUM"]
    assert not [i for i in items if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodeValue == "111301"]
    comments = [i.TextValue for i in items if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "121106"]
    assert comments[0] == "AI: not assessable (frozen loop)"
    assert comments[-1].startswith("Not assessable: frozen loop (mean change") and "No probability" in comments[-1]
    (group,) = hd.sr.srread(path).content.get_image_measurement_groups(finding_type=FINDING)
    assert group.get_measurements() == []
    if shutil.which("dciodvfy"):
        run = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=60)
        assert not [ln for ln in run.stderr.splitlines() if ln.startswith("Error")]


# ---------------------------------------------------------------------------------------------- input gate
def _header(**tags: object) -> Dataset:
    ds = Dataset()
    ds.Modality = "US"
    for k, v in tags.items():
        setattr(ds, k, v)
    return ds


def _region(code: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, "SCT", meaning
    return item


def test_tag_rules_modality_body_part_and_anatomic_region() -> None:
    rules = GateRules()
    assert tag_reason(_header(), rules) is None  # many devices leave the body part empty
    assert tag_reason(_header(BodyPartExamined="BREAST"), rules) is None
    assert tag_reason(_header(AnatomicRegionSequence=[_region("91470000", "Axilla")]), rules) is None
    assert tag_reason(_header(Modality="CT"), rules) == "Modality 'CT' is not US"
    assert tag_reason(_header(BodyPartExamined="HEART"), rules) == "body part 'HEART' is not one of BREAST, AXILLA"
    assert "'THYROID'" in str(tag_reason(_header(AnatomicRegionSequence=[_region("69748006", "Thyroid")]), rules))
    strict = GateRules.of(None, require_body_part=True)
    assert "empty" in str(tag_reason(_header(), strict))
    assert tag_reason(_header(BodyPartExamined="CHEST"), GateRules.of(["breast", "chest"])) is None


def test_image_checks_blank_frozen_and_no_region() -> None:
    rng = np.random.default_rng(0)
    box = Box(0, 0, 64, 64)
    moving = rng.integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
    assert image_reason(moving, box) is None
    assert "blank" in str(image_reason(np.full((4, 64, 64, 3), 7, np.uint8), box))
    frozen = np.repeat(moving[:1], 4, axis=0)
    assert str(image_reason(frozen, box)).startswith("frozen loop")
    assert "no ultrasound image region" in str(image_reason(moving, Box(0, 0, 20, 64)))
