"""Audit trail: DICOM PS3.15 Annex A.5 audit messages (the IHE ATNA profile), as XML.

Each message is one ``<AuditMessage>`` document (PS3.15 A.5.1 schema: EventIdentification,
ActiveParticipant, AuditSourceIdentification, ParticipantObjectIdentification), written as one line
appended to ``[audit] path`` (``O_APPEND``: the node and its worker processes append to the same
file without tearing lines) and, when ``syslog_host`` is set, sent as RFC 5424 syslog over UDP
(RFC 5426), MSGID ``IHE+RFC-3881``, as IHE ITI TF-2a 3.20 asks.

Messages carry AE titles, addresses and UIDs, never patient names or identifiers (the optional
Patient participant object of A.5.3 is left out on purpose).
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
import socket
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.config import Settings

logger = logging.getLogger(__name__)

# EventID / EventTypeCode / RoleIDCode / ParticipantObjectIDTypeCode values (PS3.16 CID 400-404, DCM).
APPLICATION_ACTIVITY = ("110100", "Application Activity")
APPLICATION_START = ("110120", "Application Start")
APPLICATION_STOP = ("110121", "Application Stop")
INSTANCES_TRANSFERRED = ("110104", "DICOM Instances Transferred")
QUERY = ("110112", "Query")
SECURITY_ALERT = ("110113", "Security Alert")
USER_AUTHENTICATION = ("110114", "User Authentication")
LOGIN = ("110122", "Login")
NODE_AUTHENTICATION = ("110126", "Node Authentication")
SOFTWARE_CONFIGURATION = ("110131", "Software Configuration")
ROLE_APPLICATION = ("110150", "Application")
ROLE_LAUNCHER = ("110151", "Application Launcher")
ROLE_DESTINATION = ("110152", "Destination Role ID")
ROLE_SOURCE = ("110153", "Source Role ID")
STUDY_UID = ("110180", "Study Instance UID")
SOP_CLASS_UID = ("110181", "SOP Class UID")
NODE_ID = ("110182", "Node ID")
# EventOutcomeIndicator (PS3.15 A.5.1): 0 success, 4 minor failure, 8 serious failure
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE = "0", "4", "8"
SYSLOG_PRI = 10 * 8 + 5  # facility authpriv (10), severity notice (5): RFC 5424 6.2.1


def _code(parent: ET.Element, tag: str, code: tuple[str, str], system: str = "DCM") -> None:
    ET.SubElement(parent, tag, {"csd-code": code[0], "codeSystemName": system, "originalText": code[1]})


@dataclass(frozen=True)
class Participant:
    user_id: str
    requestor: bool
    address: str | None = None
    role: tuple[str, str] | None = None
    alternative_id: str | None = None


@dataclass(frozen=True)
class ParticipantObject:
    object_id: str
    id_type: tuple[str, str]
    type_code: str = "2"  # 2 system object
    role: str = "3"  # 3 report / 4 data repository / 13 security resource ... (PS3.15 A.5.1)
    sop_classes: tuple[tuple[str, int], ...] = ()
    query: bytes | None = None
    details: tuple[tuple[str, str], ...] = ()
    name: str | None = None


def message(
    event: tuple[str, str],
    *,
    action: str = "E",
    outcome: str = SUCCESS,
    event_type: tuple[str, str] | None = None,
    participants: Iterable[Participant] = (),
    objects: Iterable[ParticipantObject] = (),
    source: str = "alnnode",
    outcome_description: str | None = None,
    when: dt.datetime | None = None,
) -> bytes:
    """One PS3.15 A.5.1 ``AuditMessage`` as UTF-8 XML (one line)."""
    root = ET.Element("AuditMessage")
    stamp = (when or dt.datetime.now(dt.UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    ident = ET.SubElement(root, "EventIdentification",
                          {"EventActionCode": action, "EventDateTime": stamp, "EventOutcomeIndicator": outcome})  # fmt: skip
    _code(ident, "EventID", event)
    if event_type is not None:
        _code(ident, "EventTypeCode", event_type)
    if outcome_description:
        ET.SubElement(ident, "EventOutcomeDescription").text = outcome_description
    for p in participants:
        attrs = {"UserID": p.user_id, "UserIsRequestor": "true" if p.requestor else "false"}
        if p.alternative_id:
            attrs["AlternativeUserID"] = p.alternative_id
        if p.address:
            # NetworkAccessPointTypeCode 1: machine name, 2: IP address
            attrs |= {"NetworkAccessPointID": p.address, "NetworkAccessPointTypeCode": "2" if _is_ip(p.address) else "1"}
        el = ET.SubElement(root, "ActiveParticipant", attrs)
        if p.role is not None:
            _code(el, "RoleIDCode", p.role)
    src = ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": source})
    ET.SubElement(src, "AuditSourceTypeCode", {"csd-code": "4", "codeSystemName": "DCM", "originalText": "Application Server Process"})
    for o in objects:
        el = ET.SubElement(root, "ParticipantObjectIdentification",
                           {"ParticipantObjectID": o.object_id, "ParticipantObjectTypeCode": o.type_code,
                            "ParticipantObjectTypeCodeRole": o.role})  # fmt: skip
        _code(el, "ParticipantObjectIDTypeCode", o.id_type)
        if o.name:
            ET.SubElement(el, "ParticipantObjectName").text = o.name
        if o.query is not None:
            ET.SubElement(el, "ParticipantObjectQuery").text = base64.b64encode(o.query).decode()
        for key, value in o.details:
            ET.SubElement(el, "ParticipantObjectDetail", {"type": key, "value": base64.b64encode(value.encode()).decode()})
        if o.sop_classes:
            desc = ET.SubElement(el, "ParticipantObjectDescription")
            for uid, count in o.sop_classes:
                ET.SubElement(desc, "SOPClass", {"UID": uid, "NumberOfInstances": str(count)})
    return ET.tostring(root, encoding="utf-8", xml_declaration=False)


def _is_ip(text: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, text)
            return True
        except OSError:
            continue
    return False


class AuditLog:
    """Appends audit messages to a file (and syslog); a failure to audit is logged, never raised."""

    def __init__(self, path: Path | None, *, ae_title: str = "ALN_AI", syslog: tuple[str, int] | None = None) -> None:
        self.path = path
        self.ae_title = ae_title
        self.syslog = syslog
        self.host = socket.gethostname()
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> AuditLog:
        cfg = settings.audit
        if not cfg.enabled:
            return cls(None)
        path = cfg.path or settings.storage.data_dir / "audit" / "audit.xml.log"
        syslog = (cfg.syslog_host, cfg.syslog_port) if cfg.syslog_host else None
        return cls(path, ae_title=settings.node.ae_title, syslog=syslog)

    @property
    def source(self) -> str:
        return f"{self.ae_title}@{self.host}"

    def _me(self, requestor: bool = False, role: tuple[str, str] | None = None) -> Participant:
        return Participant(self.ae_title, requestor, self.host, role, alternative_id=str(os.getpid()))

    def emit(self, event: tuple[str, str], **kwargs: Any) -> None:
        if self.path is None:
            return
        data = message(event, source=self.source, **kwargs)
        try:
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                try:
                    os.write(fd, data + b"\n")  # one write per message: lines never interleave
                finally:
                    os.close(fd)
        except OSError as exc:
            logger.error("audit message %s not written to %s: %s", event[1], self.path, exc)
        if self.syslog is not None:
            self._send_syslog(data)

    def _send_syslog(self, data: bytes) -> None:
        assert self.syslog is not None
        stamp = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        # RFC 5424 6: <PRI>VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA MSG
        header = f"<{SYSLOG_PRI}>1 {stamp} {self.host} alnnode {os.getpid()} IHE+RFC-3881 - ".encode()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(header + b"\xef\xbb\xbf" + data, self.syslog)  # BOM: MSG is UTF-8 (RFC 5424 6.4)
        except OSError as exc:
            logger.error("audit message not sent to syslog %s:%d: %s", *self.syslog, exc)

    # -- the events (PS3.15 A.5.3) ------------------------------------------------------------------
    def application(self, started: bool, user: str | None = None) -> None:
        participants = [self._me(role=ROLE_APPLICATION)]
        if user:
            participants.append(Participant(user, True, role=ROLE_LAUNCHER))
        self.emit(APPLICATION_ACTIVITY, event_type=APPLICATION_START if started else APPLICATION_STOP, participants=participants)

    def association(self, calling: str, host: str, *, accepted: bool, reason: str | None = None) -> None:
        """An association request: accepted (outcome 0) or rejected (4), as a Node Authentication alert."""
        self.emit(
            SECURITY_ALERT,
            event_type=NODE_AUTHENTICATION,
            outcome=SUCCESS if accepted else MINOR_FAILURE,
            outcome_description=reason,
            participants=[Participant(calling or "(empty)", True, host), self._me()],
            objects=[ParticipantObject(f"{calling}@{host}", NODE_ID, type_code="2", role="13")],
        )

    def transferred(self, *, received: bool, peer_ae: str, peer_host: str | None, study_uid: str | None,
                    sop_classes: dict[str, int], outcome: str = SUCCESS, reason: str | None = None) -> None:  # fmt: skip
        """DICOM Instances Transferred: ``received`` (action C, we are the destination) or sent (R)."""
        peer = Participant(peer_ae, received, peer_host, ROLE_SOURCE if received else ROLE_DESTINATION)
        me = self._me(not received, ROLE_DESTINATION if received else ROLE_SOURCE)
        self.emit(
            INSTANCES_TRANSFERRED,
            action="C" if received else "R",
            outcome=outcome,
            outcome_description=reason,
            participants=[peer, me],
            objects=[ParticipantObject(study_uid or "unknown", STUDY_UID, role="3", sop_classes=tuple(sop_classes.items()))],
        )

    def query(self, user: str, address: str | None, sop_class: str, query: bytes, outcome: str = SUCCESS) -> None:
        """A query (QIDO-RS or C-FIND): the query itself is kept base64 in ParticipantObjectQuery."""
        self.emit(
            QUERY,
            outcome=outcome,
            participants=[Participant(user, True, address), self._me()],
            objects=[ParticipantObject(sop_class, SOP_CLASS_UID, role="3", query=query)],
        )

    def authentication(self, user: str, address: str | None, *, success: bool, reason: str | None = None) -> None:
        """User Authentication (an HTTP login): outcome 0 or 4, never the password tried."""
        self.emit(
            USER_AUTHENTICATION,
            event_type=LOGIN,
            outcome=SUCCESS if success else MINOR_FAILURE,
            outcome_description=reason,
            participants=[Participant(user or "(empty)", True, address), self._me()],
        )

    def config_changed(self, before: dict[str, Any], after: dict[str, Any], keys: list[str], *, user: str, action: str = "changed") -> None:
        """A configuration change (Software Configuration alert) with the changed sections before and after:
        ``changed`` in the file (by a user), ``applied`` to the running node (its reload)."""
        import json

        sections = sorted({k.split(".")[0] for k in keys})
        details = []
        for s in sections:
            details += [(f"before:{s}", json.dumps(before.get(s), sort_keys=True)), (f"after:{s}", json.dumps(after.get(s), sort_keys=True))]
        self.emit(
            SECURITY_ALERT,
            event_type=SOFTWARE_CONFIGURATION,
            outcome_description=f"{action}: " + (", ".join(keys) or "nothing"),
            participants=[Participant(user, True), self._me()],
            objects=[ParticipantObject("alnnode configuration", NODE_ID, type_code="2", role="13", details=tuple(details))],
        )
