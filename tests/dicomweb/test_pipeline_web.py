"""DICOMweb end to end: loops stored by ``dicomweb-client`` and pushed by a real Orthanc (its DICOMweb
client plugin) are processed; the SR reaches the Orthanc destination, and a DICOMweb client finds it on
the node by QIDO-RS and retrieves by WADO-RS exactly the bytes the PACS received."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread

from tests.dicomweb.conftest import TOKENS
from tests.e2e.support import destination_toml, pipeline_config, wait_states
from tests.helpers import NodeProcess, free_port, loop_copies, wait_for
from tests.orthanc import OrthancServer

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
pytestmark = pytest.mark.timeout(500)


def multipart_parts(r: requests.Response) -> list[bytes]:
    boundary = r.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"').encode()
    chunks = r.content.split(b"--" + boundary)[1:-1]
    return [c.split(b"\r\n\r\n", 1)[1][:-2] for c in chunks]


def test_stow_pipeline_qido_wado(
    orthanc: OrthancServer, small_bundle: Path, tmp_path: Path, credentials_toml: str
) -> None:
    cfg, port, data = pipeline_config(tmp_path, small_bundle, destination_toml("dicomweb", orthanc))
    http_port = free_port()
    cfg.write_text(cfg.read_text() + f"\n[http]\nenabled = true\nport = {http_port}\n{credentials_toml}")
    node = NodeProcess(cfg, port, tmp_path / "node.log").start()
    dicomweb = f"http://127.0.0.1:{http_port}/dicom-web"
    try:
        mine, pushed = loop_copies(tmp_path / "in", 2, "web")
        stow = DICOMwebClient(dicomweb, headers={"Authorization": f"Bearer {TOKENS['modality']}"})
        reply = stow.store_instances([dcmread(mine)])
        assert "FailedSOPSequence" not in reply

        # Orthanc pushes a study to the node through its DICOMweb client plugin
        r = requests.put(f"{orthanc.url}/dicom-web/servers/aln", timeout=30,
                         json={"Url": dicomweb, "HttpHeaders": {"Authorization": f"Bearer {TOKENS['modality']}"}})  # fmt: skip
        r.raise_for_status()
        study = requests.post(f"{orthanc.url}/instances", data=pushed.read_bytes(), timeout=60).json()[
            "ParentStudy"
        ]
        r = requests.post(
            f"{orthanc.url}/dicom-web/servers/aln/stow", json={"Resources": [study]}, timeout=120
        )
        assert r.status_code == 200, r.text

        uids = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in (mine, pushed)]
        wait_states(data, uids, {"dispatched"}, timeout=300)

        viewer = DICOMwebClient(dicomweb, headers={"Authorization": f"Bearer {TOKENS['viewer']}"})
        srs = viewer.search_for_instances(search_filters={"SOPClassUID": SR_CLASS})
        assert len(srs) == 2
        for sr in srs:
            study_uid, series_uid, sop_uid = (sr[t]["Value"][0] for t in ("0020000D", "0020000E", "00080018"))
            url = f"{dicomweb}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
            r = requests.get(url, headers={"Authorization": f"Bearer {TOKENS['viewer']}",
                                           "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}, timeout=60)  # fmt: skip
            assert r.status_code == 200
            (body,) = multipart_parts(r)
            wait_for(lambda uid=sop_uid: orthanc.orthanc_id(uid) is not None, 30, what="SR in Orthanc")
            assert body == orthanc.file(sop_uid)
            assert viewer.retrieve_instance(study_uid, series_uid, sop_uid).SOPInstanceUID == sop_uid
    finally:
        node.stop()
