"""UPS-RS: a workitem created for a study on an Orthanc DICOMweb source is retrieved by WADO-RS, run,
dispatched and ends COMPLETED with the SR as output; jobs received otherwise are workitems too."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.dicomweb.conftest import TOKENS
from tests.e2e.support import destination_toml, pipeline_config, storescu
from tests.helpers import NodeProcess, free_port, loop_copies, wait_for
from tests.orthanc import OrthancServer

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
pytestmark = pytest.mark.timeout(500)


def workitem_request(study: str, retrieve_url: str) -> dict[str, object]:
    ds = Dataset()
    ds.ProcedureStepState = "SCHEDULED"
    ds.ScheduledProcedureStepPriority = "HIGH"
    item = Dataset()
    item.StudyInstanceUID = study
    item.RetrieveURL = retrieve_url
    ds.InputInformationSequence = [item]
    return ds.to_json_dict()


def test_workitem_from_an_orthanc_source_completes(
    orthanc: OrthancServer, small_bundle: Path, tmp_path: Path, credentials_toml: str
) -> None:
    cfg, port, data = pipeline_config(tmp_path, small_bundle, destination_toml("dicomweb", orthanc))
    http_port = free_port()
    cfg.write_text(cfg.read_text() + f'\n[[sources]]\nname = "orthanc"\nurl = "{orthanc.dicomweb_url}"\n'
                   f"\n[http]\nenabled = true\nport = {http_port}\n{credentials_toml}")  # fmt: skip
    node = NodeProcess(cfg, port, tmp_path / "node.log").start()
    root = f"http://127.0.0.1:{http_port}/dicom-web"
    viewer = {"Authorization": f"Bearer {TOKENS['viewer']}"}
    try:
        loop, direct = loop_copies(tmp_path / "in", 2, "ups")
        study = str(dcmread(loop, stop_before_pixels=True).StudyInstanceUID)
        assert (
            requests.post(f"{orthanc.url}/instances", data=loop.read_bytes(), timeout=60).status_code == 200
        )
        uid = generate_uid()
        headers = {"Authorization": f"Bearer {TOKENS['modality']}", "Content-Type": "application/dicom+json"}
        r = requests.post(
            f"{root}/workitems?{uid}",
            json=[workitem_request(study, f"{orthanc.dicomweb_url}/studies/{study}")],
            headers=headers,
            timeout=30,
        )
        assert r.status_code == 201 and r.headers["location"].endswith(f"/workitems/{uid}")
        assert (
            requests.post(
                f"{root}/workitems?{uid}",
                json=[workitem_request(study, orthanc.dicomweb_url)],
                headers=headers,
                timeout=30,
            ).status_code
            == 409
        )
        assert (
            requests.post(
                f"{root}/workitems",
                json=[workitem_request(study, orthanc.dicomweb_url)],
                headers=viewer,
                timeout=30,
            ).status_code
            == 403
        )
        bad = requests.post(
            f"{root}/workitems",
            json=[workitem_request(study, "http://elsewhere/dicom-web")],
            headers=headers,
            timeout=30,
        )
        assert bad.status_code == 400 and "[[sources]]" in bad.json()["detail"]

        def state() -> str:
            got = requests.get(f"{root}/workitems/{uid}", headers=viewer, timeout=30)
            assert got.status_code == 200
            return str(Dataset.from_json(got.json()[0]).ProcedureStepState)

        wait_for(lambda: state() in ("COMPLETED", "CANCELED"), 300, 0.5, what="workitem to finish")
        item = Dataset.from_json(
            requests.get(f"{root}/workitems/{uid}", headers=viewer, timeout=30).json()[0]
        )
        assert item.ProcedureStepState == "COMPLETED", item.get("ReasonForCancellation")
        assert item.ScheduledProcedureStepPriority == "HIGH"
        outputs = item.UnifiedProcedureStepPerformedProcedureSequence[0].OutputInformationSequence
        refs = [o.ReferencedSOPSequence[0] for o in outputs]
        sr = [r.ReferencedSOPInstanceUID for r in refs if r.ReferencedSOPClassUID == SR_CLASS]
        assert len(sr) == 1 and len(refs) == 3
        wait_for(lambda: orthanc.orthanc_id(sr[0]) is not None, 60, what="SR in the destination")
        done = requests.post(f"{root}/workitems/{uid}/cancelrequest", headers=headers, timeout=30)
        assert done.status_code == 409 and "already COMPLETED" in done.json()["detail"]

        # a job received over DIMSE is a workitem too
        storescu(port, direct)
        listed = requests.get(f"{root}/workitems", headers=viewer, timeout=30).json()
        assert len(listed) == 2 and {d["00080018"]["Value"][0] for d in listed} >= {uid}
    finally:
        node.stop()
