"""``alnnode status`` (finding the ledger, filters, pipes) and the PS3.15 A.5 message structure of
every audit event (also those whose HTTP endpoints come with other issues: Query)."""

from __future__ import annotations

import base64
import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

from node.audit import AuditLog
from node.ledger import Ledger, NewInstance
from tests.helpers import ALNNODE, ROOT, free_port, write_config
from tests.operator.support import alnnode, audit_messages, event_of


def _ledger_with_jobs(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "var"
    data.mkdir()
    cfg = write_config(tmp_path / "alnnode.toml", port=free_port(), data_dir=data)
    ledger = Ledger(f"sqlite:///{data / 'ledger.sqlite'}")
    for i, (ae, acc) in enumerate([("US_ROOM1", "A100"), ("US_ROOM2", None), ("US_ROOM1", "A200")] * 20):
        ledger.add_instance(NewInstance(f"2.25.{1000 + i}", "1.2.840.10008.5.1.4.1.1.3.1", "2.25.1", "2.25.2", "1.2.840.10008.1.2.1",
                                        f"x/{i}.dcm", 10, 8, ae, None, accession_number=acc))  # fmt: skip
    ledger.close()
    return cfg, data


def test_status_finds_the_ledger_filters_and_pipes(tmp_path: Path) -> None:
    cfg, _data = _ledger_with_jobs(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "ALNNODE_CONFIG"} | {"PYTHONPATH": str(ROOT)}
    lost = alnnode("status", cwd=elsewhere, env=env)
    assert lost.returncode == 1 and "Traceback" not in lost.stderr
    assert "no ledger at" in lost.stderr and "--config" in lost.stderr and len(lost.stderr.splitlines()) == 1
    assert not (elsewhere / "var").exists()  # no empty ledger made on the way

    found = alnnode("status", cwd=elsewhere, env=env | {"ALNNODE_CONFIG": str(cfg)})
    assert found.returncode == 0 and "received 60" in found.stdout
    by_ae = alnnode("status", "--config", str(cfg), "--ae", "US_ROOM2", "-n", "100").stdout
    assert "last 20 job(s) from US_ROOM2" in by_ae and "US_ROOM1" not in by_ae.split("job(s)")[-1]
    acc = alnnode("status", "--config", str(cfg), "--accession", "A200", "-n", "100").stdout
    assert "last 20 job(s) with accession A200" in acc
    assert "last 10 job(s) since" in alnnode("status", "--config", str(cfg), "--since", "1h").stdout
    none = alnnode("status", "--config", str(cfg), "--since", "2999-01-01").stdout
    assert "no jobs since 2999-01-01 00:00 UTC" in none
    bad = alnnode("status", "--config", str(cfg), "--since", "last tuesday")
    assert bad.returncode == 1 and "--since 'last tuesday'" in bad.stderr and "Traceback" not in bad.stderr

    # `status | head -1`: the reader leaves early; no BrokenPipeError
    pipe = subprocess.run(f"{' '.join(ALNNODE)} status --config {cfg} -n 60 | head -1", shell=True, capture_output=True, text=True,
                          cwd=ROOT, timeout=120)  # fmt: skip
    assert pipe.stdout.startswith("disk:") and "BrokenPipeError" not in pipe.stderr and "Traceback" not in pipe.stderr, pipe.stderr


def test_every_audit_event_has_the_ps3_15_a5_structure(tmp_path: Path) -> None:
    data = tmp_path / "var"
    log = AuditLog(data / "audit" / "audit.xml.log", ae_title="ALN_AI")
    log.application(started=True, user="alnnode")
    log.association("US_ROOM1", "10.0.0.7", accepted=True)
    log.association("EVIL", "10.6.6.6", accepted=False, reason="calling AE title 'EVIL' is not a configured peer")
    log.transferred(received=True, peer_ae="US_ROOM1", peer_host="10.0.0.7", study_uid="2.25.7", sop_classes={"1.2.840.10008.5.1.4.1.1.3.1": 1})
    log.transferred(received=False, peer_ae="pacs (PACS)", peer_host="10.0.0.9", study_uid="2.25.7", sop_classes={"1.2.840.10008.5.1.4.1.1.88.34": 1})
    log.query("ohif", "10.0.0.8", "1.2.840.10008.5.1.4.1.2.2.1", b"StudyDate=20261201")
    log.authentication("ops", "10.0.0.8", success=False, reason="wrong password")
    log.config_changed({"peers": []}, {"peers": [{"ae_title": "NEWAE"}]}, ["peers"], user="ops (admin API)")
    log.application(started=False)
    msgs = audit_messages(data)
    assert [event_of(m) for m in msgs] == [
        ("110100", "110120"), ("110113", "110126"), ("110113", "110126"), ("110104", None), ("110104", None),
        ("110112", None), ("110114", "110122"), ("110113", "110131"), ("110100", "110121"),
    ]  # fmt: skip
    for m in msgs:  # PS3.15 A.5.1: EventIdentification, ActiveParticipant+, AuditSourceIdentification, objects*
        assert m.tag == "AuditMessage"
        tags = [c.tag for c in m]
        assert tags[0] == "EventIdentification" and "AuditSourceIdentification" in tags and "ActiveParticipant" in tags
        ident = m.find("EventIdentification")
        assert ident is not None and ident.get("EventActionCode") in {"C", "R", "U", "D", "E"}
        assert ident.get("EventOutcomeIndicator") in {"0", "4", "8", "12"} and ident.get("EventDateTime", "").endswith("Z")
        assert all(c.get("codeSystemName") == "DCM" for c in m.iter() if c.get("csd-code"))
    evil = msgs[2]
    who = evil.find("ActiveParticipant")
    assert who is not None and (who.get("UserID"), who.get("NetworkAccessPointID"), who.get("UserIsRequestor")) == ("EVIL", "10.6.6.6", "true")
    assert evil.find("EventIdentification/EventOutcomeDescription").text.startswith("calling AE title 'EVIL'")  # type: ignore[union-attr]
    assert [m.find("EventIdentification").get("EventActionCode") for m in msgs[3:5]] == ["C", "R"]  # type: ignore[union-attr]
    study = msgs[3].find("ParticipantObjectIdentification")
    assert study is not None and study.get("ParticipantObjectID") == "2.25.7"
    assert study.find("ParticipantObjectDescription/SOPClass").get("NumberOfInstances") == "1"  # type: ignore[union-attr]
    query = msgs[5].find("ParticipantObjectIdentification/ParticipantObjectQuery")
    assert query is not None and base64.b64decode(query.text or "") == b"StudyDate=20261201"
    details = {d.get("type"): base64.b64decode(d.get("value", "")).decode() for d in msgs[7].iter("ParticipantObjectDetail")}
    assert details == {"before:peers": "[]", "after:peers": '[{"ae_title": "NEWAE"}]'}


def test_audit_to_syslog_rfc5424(tmp_path: Path) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(10)
        log = AuditLog(tmp_path / "audit.log", syslog=("127.0.0.1", rx.getsockname()[1]))
        log.association("EVIL", "10.6.6.6", accepted=False, reason="not a peer")
        packet = rx.recv(65536)
    header, _, body = packet.partition(b" - \xef\xbb\xbf")
    fields = header.split(b" ")
    assert fields[0] == b"<85>1" and fields[3] == b"alnnode" and fields[5] == b"IHE+RFC-3881"
    assert ET.fromstring(body).tag == "AuditMessage"
