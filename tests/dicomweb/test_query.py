"""QIDO-RS and WADO-RS of what the node holds, with the real ``dicomweb-client``."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian

from tests.dicomweb.conftest import TOKENS, HttpNode
from tests.helpers import loop_copies


def client(node: HttpNode, role: str = "viewer") -> DICOMwebClient:
    return DICOMwebClient(node.dicomweb, headers={"Authorization": f"Bearer {TOKENS[role]}"})


def test_search_retrieve_metadata_rendered(http_node: HttpNode, tmp_path: Path) -> None:
    rle = loop_copies(tmp_path / "a", 2, "q", name="OBXXXX1A_rle_2frame.dcm")
    (jpeg,) = loop_copies(tmp_path / "b", 1, "j", name="JPGLosslessP14SV1_1s_1f_8b.dcm")
    sent = [dcmread(p) for p in (*rle, jpeg)]
    client(http_node, "modality").store_instances(sent)
    web = client(http_node)

    studies = web.search_for_studies()
    assert {s["0020000D"]["Value"][0] for s in studies} == {d.StudyInstanceUID for d in sent}
    study = next(s for s in studies if s["0020000D"]["Value"][0] == sent[0].StudyInstanceUID)
    assert study["00201208"]["Value"] == [2] and study["00080061"]["Value"] == ["US"]
    assert study["00081190"]["Value"][0].endswith(f"/dicom-web/studies/{sent[0].StudyInstanceUID}")
    # attribute matching: single value, wildcard, UID list, universal; limit/offset; includefield
    pid = str(sent[0].PatientID)
    assert len(web.search_for_studies(search_filters={"PatientID": pid})) >= 1
    assert web.search_for_studies(search_filters={"PatientID": "no-such-patient"}) == []
    assert len(web.search_for_studies(search_filters={"PatientID": pid[:2] + "*"})) >= 1
    uids = ",".join(d.SOPInstanceUID for d in sent[:2])
    assert len(web.search_for_instances(search_filters={"SOPInstanceUID": uids})) == 2
    assert len(web.search_for_instances(limit=1)) == 1 and len(web.search_for_instances(offset=1)) == 2
    series = web.search_for_series(sent[0].StudyInstanceUID, fields=["Manufacturer"])
    assert series[0]["0020000E"]["Value"] == [sent[0].SeriesInstanceUID]
    assert series[0]["00201209"]["Value"] == [2] and "00080070" in series[0]
    full = web.search_for_instances(sent[0].StudyInstanceUID, sent[0].SeriesInstanceUID, fields=["all"])
    assert len(full) == 2 and "00280010" in full[0]  # Rows, from includefield=all

    # retrieve: the stored bytes, in the stored transfer syntax; transcoded on request
    got = web.retrieve_instance(sent[0].StudyInstanceUID, sent[0].SeriesInstanceUID, sent[0].SOPInstanceUID)
    assert got.file_meta.TransferSyntaxUID == sent[0].file_meta.TransferSyntaxUID
    assert got.PixelData == sent[0].PixelData
    plain = web.retrieve_instance(sent[0].StudyInstanceUID, sent[0].SeriesInstanceUID, sent[0].SOPInstanceUID,
                                  media_types=(("application/dicom", ExplicitVRLittleEndian),))  # fmt: skip
    assert (
        plain.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        and plain.pixel_array.shape == sent[0].pixel_array.shape
    )
    assert len(web.retrieve_study(sent[0].StudyInstanceUID)) == 2
    meta = web.retrieve_series_metadata(sent[0].StudyInstanceUID, sent[0].SeriesInstanceUID)
    assert len(meta) == 2 and "BulkDataURI" in meta[0]["7FE00010"]

    # rendered frames: JPEG by default, PNG on request, 404 beyond the last frame
    jpg = web.retrieve_instance_frames_rendered(
        sent[0].StudyInstanceUID, sent[0].SeriesInstanceUID, sent[0].SOPInstanceUID, [2]
    )
    image = Image.open(BytesIO(jpg))
    assert image.format == "JPEG" and image.size == (sent[0].Columns, sent[0].Rows)
    png = web.retrieve_instance_rendered(
        sent[2].StudyInstanceUID,
        sent[2].SeriesInstanceUID,
        sent[2].SOPInstanceUID,
        media_types=("image/png",),
    )
    assert Image.open(BytesIO(png)).format == "PNG"
    s = http_node.session("viewer")
    base = f"{http_node.dicomweb}/studies/{sent[0].StudyInstanceUID}/series/{sent[0].SeriesInstanceUID}/instances/{sent[0].SOPInstanceUID}"
    assert s.get(f"{base}/frames/3/rendered", timeout=30).status_code == 404
    assert s.get(f"{http_node.dicomweb}/studies/1.2.3/metadata", timeout=30).status_code == 404
    assert s.get(f"{http_node.dicomweb}/studies?NoSuchKeyword=1", timeout=30).status_code == 400
    # roles: a modality credential cannot read
    assert http_node.session("modality").get(f"{http_node.dicomweb}/studies", timeout=30).status_code == 403
