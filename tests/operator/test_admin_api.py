"""The admin REST API, /metrics, /healthz and the audit trail on a real node (storescu, echoscu, httpx)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from pydicom import dcmread

from tests.helpers import NodeProcess, free_port, loop_copies, require_tool, write_config
from tests.operator.conftest import ADMIN, ADMIN_PASSWORD, ADMIN_USER, VIEWER, http_toml
from tests.operator.support import alnnode, audit_messages, echo, event_of


def _store(port: int, aet: str, files: list[Path]) -> None:
    exe = require_tool("storescu")
    out = subprocess.run([exe, "-v", "-xe", "-aet", aet, "-aec", "ALN_AI", "127.0.0.1", str(port), *map(str, files)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert (out.stdout + out.stderr).count("Received Store Response (Success)") == len(files), out.stdout + out.stderr


def _metrics(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = httpx.get(f"{base}/metrics", headers=VIEWER, timeout=30)
    assert r.status_code == 200, r.text
    values = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return values


def test_admin_api_changes_apply_live_persist_and_are_audited(tmp_path: Path, credentials_toml: str) -> None:
    http, http_port = http_toml(credentials_toml)
    port, data = free_port(), tmp_path / "var"
    cfg = write_config(tmp_path / "alnnode.toml", port=port, data_dir=data, extra=http, peers=("US_ROOM1", "STORESCU"))
    cfg.write_text("# hand-written notes stay\n" + cfg.read_text())
    base = f"http://127.0.0.1:{http_port}"
    files = loop_copies(tmp_path / "in", 3, "api", name="US1_UNCR.dcm")
    ds = dcmread(files[0])
    ds.AccessionNumber = "ACC0042"
    ds.save_as(files[0])
    node = NodeProcess(cfg, port, tmp_path / "node.log").start()
    api = httpx.Client(base_url=f"{base}/api/v1", headers=ADMIN, timeout=30)
    try:
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
        assert httpx.get(f"{base}/api/v1/peers").status_code == 401
        assert httpx.get(f"{base}/api/v1/peers", headers=VIEWER).status_code == 403  # admin role only

        _store(port, "US_ROOM1", files[:2])
        _store(port, "STORESCU", files[2:])
        assert echo(port, "INTRUDER").returncode != 0

        # peers: added live, refused with the field named, removed live
        assert echo(port, "NEWAE").returncode != 0
        r = api.post("/peers", json={"ae_title": "NEWAE"})
        assert r.status_code == 201 and r.json()["applied"] == ["peers"], r.text
        assert echo(port, "NEWAE").returncode == 0
        r = api.post("/peers", json={"ae_title": "WAY_TOO_LONG_AE_TITLE"})
        assert r.status_code == 422 and "peers[3].ae_title = 'WAY_TOO_LONG_AE_TITLE'" in r.text
        r = api.put("/destinations/pacs", json={"kind": "dimse", "ae_title": "PACS", "host": "127.0.0.1", "port": 70000})
        assert r.status_code == 422 and "destinations[0].port = 70000" in r.text
        r = api.put("/destinations/pacs", json={"kind": "dimse", "ae_title": "PACS", "host": "127.0.0.1", "port": 11113})
        assert r.status_code == 200 and r.json()["applied"] == ["destinations"], r.text
        assert api.put("/model", json={"threshold": 2}).status_code == 422
        assert api.put("/model", json={"threshold": 0.65}).json()["applied"] == ["model.threshold"]
        assert [d["name"] for d in api.get("/destinations").json()] == ["pacs"]

        # jobs with filters; accession numbers for admins only
        jobs = api.get("/jobs", params={"ae": "US_ROOM1"}).json()
        assert len(jobs) == 2 and {j["calling_ae"] for j in jobs} == {"US_ROOM1"}
        assert [j["sop_instance_uid"] for j in api.get("/jobs", params={"accession": "ACC0042"}).json()] == [str(ds.SOPInstanceUID)]
        assert api.get("/jobs", params={"since": "yesterday"}).status_code == 422
        job = api.get(f"/jobs/{ds.SOPInstanceUID}").json()
        assert job["accession_number"] == "ACC0042" and job["history"][0]["state"] == "received"

        values = _metrics(base)
        assert values[("alnnode_instances_received_total", (("calling_ae", "US_ROOM1"),))] == 2
        assert values[("alnnode_instances_received_total", (("calling_ae", "STORESCU"),))] == 1
        assert values[("alnnode_cstore_status_total", (("calling_ae", "US_ROOM1"), ("status", "0x0000")))] == 2
        assert values[("alnnode_received_bytes_total", (("calling_ae", "US_ROOM1"),))] >= 2 * files[0].stat().st_size - 4096
        assert values[("alnnode_associations_total", (("calling_ae", "INTRUDER"), ("outcome", "rejected")))] == 1
        assert values[("alnnode_associations_total", (("calling_ae", "NEWAE"), ("outcome", "accepted")))] == 1
        assert values[("alnnode_jobs", (("state", "skipped"),))] + values[("alnnode_jobs", (("state", "received"),))] == 3

        # a QIDO-RS search (Query audit event, PS3.15 A.5.3.10)
        assert httpx.get(f"{base}/dicom-web/studies", params={"AccessionNumber": "ACC0042"}, headers=VIEWER, timeout=30).status_code == 200

        # console login: one good and one bad (User Authentication audit events)
        assert httpx.post(f"{base}/console/login", data={"username": ADMIN_USER, "password": "wrong"}).status_code == 401
        assert httpx.post(f"{base}/console/login", data={"username": ADMIN_USER, "password": ADMIN_PASSWORD}).status_code == 303

        node.stop()
        node.start()  # every API change is in the TOML
        assert echo(port, "NEWAE").returncode == 0
        assert api.get("/model").json()["threshold"] == 0.65
        assert api.delete("/peers/NEWAE").status_code == 200
        assert echo(port, "NEWAE").returncode != 0
        assert api.delete("/peers/NEWAE").status_code == 404
    finally:
        api.close()
        node.stop()
    assert cfg.read_text().startswith("# hand-written notes stay\n")
    status = alnnode("status", "--config", str(cfg), "--accession", "ACC0042")
    assert status.returncode == 0 and str(ds.SOPInstanceUID) in status.stdout and "ACC0042" in status.stdout

    messages = audit_messages(data)
    kinds = [event_of(m) for m in messages]
    for kind in [("110100", "110120"), ("110100", "110121"), ("110104", None), ("110112", None), ("110113", "110126"), ("110113", "110131"), ("110114", "110122")]:
        assert kind in kinds, kind
    query = next(m for m in messages if event_of(m) == ("110112", None))
    assert query.find(".//ParticipantObjectQuery") is not None, "the query itself is in the message"
    rejected = [m for m in messages if event_of(m) == ("110113", "110126")
                and m.find("EventIdentification").get("EventOutcomeIndicator") == "4"]  # type: ignore[union-attr]  # fmt: skip
    caller = rejected[0].find("ActiveParticipant")
    assert caller is not None and caller.get("UserID") == "INTRUDER" and caller.get("NetworkAccessPointID") == "127.0.0.1"
    logins = [m.find("EventIdentification").get("EventOutcomeIndicator") for m in messages if event_of(m)[0] == "110114"]  # type: ignore[union-attr]
    assert logins == ["4", "0"]
    received = [m for m in messages if event_of(m) == ("110104", None)]
    assert len(received) == 3 and all(m.find("EventIdentification").get("EventActionCode") == "C" for m in received)  # type: ignore[union-attr]
    assert b"horse" not in (data / "audit" / "audit.xml.log").read_bytes()  # no password in the trail
