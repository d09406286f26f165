"""UPS-RS Request Cancellation (PS3.18 11.8): a SCHEDULED workitem is canceled at once (202, then CANCELED
with the requester's reason; a stage that picks its job up later changes nothing), an IN PROGRESS,
COMPLETED or CANCELED one gets 409, an unknown one 404, a viewer 403. The node's HTTP application on a
real socket, over a ledger that no publisher or worker moves on, so the jobs stay where the test puts them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from pydicom import dcmread

from node.config import load_config
from node.http.app import create_app
from node.http.hashing import make_hash
from node.http.server import HttpServer
from node.http.ups_work import job_workitem_uid
from node.ledger import Ledger
from tests.dicomweb.conftest import TOKENS
from tests.dicomweb.test_stow import multipart
from tests.helpers import loop_copies

DICOM_JSON = "application/dicom+json"


@pytest.fixture
def app_server(tmp_path: Path) -> Iterator[tuple[str, Ledger]]:
    settings = load_config(
        None,
        storage={"data_dir": str(tmp_path / "var")},
        http={
            "enabled": True,
            "port": 0,
            "credentials": [
                {"name": f"{role}-client", "role": role, "token_hash": make_hash(token)}
                for role, token in TOKENS.items()
            ],
        },
    )
    settings.storage.data_dir.mkdir(parents=True)
    ledger = Ledger(settings.ledger_url)
    http = HttpServer(settings, create_app(settings, ledger))
    http.start()
    try:
        yield http.url + "/dicom-web", ledger
    finally:
        http.stop()
        ledger.close()


def session(role: str) -> requests.Session:
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {TOKENS[role]}"
    return s


def test_cancel_request_cancels_scheduled_workitems_only(app_server: tuple[str, Ledger], tmp_path: Path) -> None:
    root, ledger = app_server
    loops = loop_copies(tmp_path / "in", 3, "ups-cancel", name="OBXXXX1A_rle_2frame.dcm")
    body, ctype = multipart(*(p.read_bytes() for p in loops))
    assert session("modality").post(f"{root}/studies", data=body, headers={"Content-Type": ctype}).status_code == 200
    waiting, queued, running = (str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in loops)
    assert ledger.transition(queued, "queued", expected=("received",))
    assert ledger.transition(running, "classified", expected=("received",))
    viewer, modality = session("viewer"), session("modality")

    def workitem(uid: str) -> dict[str, dict[str, list[str]]]:
        r = viewer.get(f"{root}/workitems/{job_workitem_uid(uid)}")
        assert r.status_code == 200, r.text
        found: dict[str, dict[str, list[str]]] = r.json()[0]
        return found

    def cancel(uid: str, who: requests.Session = modality, **kwargs: object) -> requests.Response:
        return who.post(f"{root}/workitems/{job_workitem_uid(uid)}/cancelrequest", **kwargs)  # type: ignore[arg-type]

    assert workitem(waiting)["00741000"]["Value"] == ["SCHEDULED"]
    assert cancel(waiting, viewer).status_code == 403  # a viewer may read workitems, not cancel them
    reason = [{"00741238": {"vr": "LT", "Value": ["wrong side scanned"]}}]
    r = cancel(waiting, data=json.dumps(reason), headers={"Content-Type": DICOM_JSON})
    assert r.status_code == 202, r.text
    item = workitem(waiting)
    assert item["00741000"]["Value"] == ["CANCELED"]
    assert item["00741238"]["Value"] == ["canceled by 'modality-client' (UPS-RS): wrong side scanned"]
    job = ledger.find(waiting)
    assert job is not None and job["state"] == "skipped"
    # a classify task that arrives late finds the job moved on: nothing changes
    assert not ledger.transition(waiting, "classified", expected=("received", "queued"))

    assert cancel(queued).status_code == 202  # queued for a worker, not started: still SCHEDULED
    assert workitem(queued)["00741000"]["Value"] == ["CANCELED"]
    again = cancel(queued)
    assert again.status_code == 409 and "already CANCELED" in again.json()["detail"]
    busy = cancel(running)
    assert busy.status_code == 409 and "IN PROGRESS" in busy.json()["detail"] and "Warning" in busy.headers
    still = ledger.find(running)
    assert still is not None and still["state"] == "classified"
    assert modality.post(f"{root}/workitems/2.25.1234/cancelrequest").status_code == 404
    bad = cancel(running, data=b"not json", headers={"Content-Type": DICOM_JSON})
    assert bad.status_code == 400
