"""UPS workitems of the node (PS3.4 Annex CC, PS3.18 11; IHE AI Workflow for Imaging).

Every job (a received instance) is a workitem whose UID derives from its SOP Instance UID and whose
state follows the ledger: received/queued SCHEDULED, classified/rendered IN PROGRESS, dispatched
COMPLETED (with the SR and SC as output), skipped/failed CANCELED (with the reason). A workitem
created over UPS-RS names a study on a configured ``[[sources]]`` archive: it is kept as JSON under
``data_dir/workitems``, the study is retrieved by WADO-RS and each instance goes through the C-STORE
acceptance (``node.receive.accept``); its state is then that of its jobs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from node.config import Settings, Source
from node.errors import StoreRejected
from node.ledger import Ledger
from node.outbox import result_files
from node.receive.accept import accept
from node.spool import Spool, write_atomic

logger = logging.getLogger(__name__)

UPS_PUSH_SOP_CLASS = "1.2.840.10008.5.1.4.34.6.1"  # PS3.4 CC.3.1
STATE_OF_JOB = {"received": "SCHEDULED", "queued": "SCHEDULED", "classified": "IN PROGRESS", "rendered": "IN PROGRESS",
                "dispatched": "COMPLETED", "skipped": "CANCELED", "failed": "CANCELED"}  # fmt: skip


def job_workitem_uid(sop_instance_uid: str) -> str:
    """A stable UID for the workitem of a job (PS3.5 B.2: 2.25 + a 128-bit integer)."""
    return f"2.25.{int.from_bytes(hashlib.sha256(('ups/' + sop_instance_uid).encode()).digest()[:16], 'big')}"


class Workitems:
    """Created workitems (JSON files) and the threads that fetch their studies."""

    def __init__(self, settings: Settings, spool: Spool, ledger: Ledger, on_stored: Any = None) -> None:
        self.settings, self.spool, self.ledger, self.on_stored = settings, spool, ledger, on_stored
        self.folder = settings.storage.data_dir / "workitems"
        self._lock = threading.Lock()

    # -- storage ------------------------------------------------------------------------------
    def _path(self, uid: str) -> Path:
        return self.folder / f"{hashlib.sha256(uid.encode()).hexdigest()}.json"

    def load(self, uid: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = json.loads(self._path(uid).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return found

    def save(self, record: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(self._path(record["uid"]), json.dumps(record).encode())

    def created(self) -> list[dict[str, Any]]:
        if not self.folder.is_dir():
            return []
        return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(self.folder.glob("*.json"))]

    # -- creation and retrieval -------------------------------------------------------------------
    def create(self, uid: str, ds: Dataset, source: Source, study: str) -> dict[str, Any]:
        with self._lock:
            if self.load(uid) is not None:
                raise FileExistsError(uid)
            record: dict[str, Any] = {"uid": uid, "dataset": ds.to_json_dict(), "source": source.name, "study": study,
                      "inputs": [], "fetch": "pending", "reason": None}  # fmt: skip
            self.save(record)
        threading.Thread(
            target=self._fetch, args=(record, source), name=f"alnnode-ups-{uid[-8:]}", daemon=True
        ).start()
        return record

    def _fetch(self, record: dict[str, Any], source: Source) -> None:
        from dicomweb_client import DICOMwebClient
        from dicomweb_client.session_utils import create_session, create_session_from_user_pass

        if source.username and source.password:
            session = create_session_from_user_pass(source.username, source.password.get_secret_value())
        else:
            session = create_session()
            if source.token:
                session.headers["Authorization"] = f"Bearer {source.token.get_secret_value()}"
        client = DICOMwebClient(source.url, session=session, timeout=source.timeout)
        work = self.spool.incoming / f"ups-{uuid.uuid4().hex}"
        work.mkdir(parents=True)
        try:
            record["fetch"] = "running"
            self.save(record)
            for i, ds in enumerate(
                client.iter_study(record["study"], media_types=(("application/dicom", "*"),))
            ):
                temp = work / f"{i:05d}.dcm"
                ds.save_as(temp, enforce_file_format=True)
                try:
                    done = accept(self.settings, self.spool, self.ledger, temp, context_sop_class=str(ds.SOPClassUID),
                                  transfer_syntax=str(ds.file_meta.TransferSyntaxUID), affected_sop_instance=str(ds.SOPInstanceUID),
                                  on_stored=self.on_stored, what=f"UPS-RS {record['uid']}")  # fmt: skip
                    record["inputs"].append(done.info.sop_instance_uid)
                except StoreRejected as rej:
                    logger.warning(
                        "UPS-RS %s: %s refused with 0x%04X: %s",
                        record["uid"],
                        str(ds.SOPInstanceUID)[:64],
                        rej.status,
                        rej.reason,
                    )
                finally:
                    temp.unlink(missing_ok=True)
            record["fetch"] = "done"
            if not record["inputs"]:
                record["reason"] = (
                    f"study {record['study']} on source {source.name!r} has no instance the node accepts"
                )
        except Exception as exc:  # the source is down, the study is unknown: the workitem is CANCELED
            logger.error(
                "UPS-RS %s: retrieving study %s from %s failed: %s",
                record["uid"],
                record["study"],
                source.name,
                exc,
            )
            record["fetch"], record["reason"] = (
                "failed",
                f"retrieval from source {source.name!r} failed: {type(exc).__name__}",
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
            self.save(record)

    # -- what a workitem shows --------------------------------------------------------------------
    def outputs(self, uids: list[str]) -> list[Dataset]:
        """OutputInformationSequence items: the SR and SC each job produced (PS3.4 CC.2.5.1.4)."""
        items = []
        for uid in uids:
            for path in result_files(self.settings, uid):
                if path.exists():
                    r = dcmread(path, stop_before_pixels=True)
                    ref = Dataset()
                    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = r.SOPClassUID, r.SOPInstanceUID
                    item = Dataset()
                    item.TypeOfInstances = "DICOM"
                    item.StudyInstanceUID, item.SeriesInstanceUID = r.StudyInstanceUID, r.SeriesInstanceUID
                    item.ReferencedSOPSequence = [ref]
                    items.append(item)
        return items

    def state_of(self, record: dict[str, Any]) -> tuple[str, str | None, list[str]]:
        """(ProcedureStepState, reason, SOP Instance UIDs of jobs that completed) of a created workitem."""
        if record["fetch"] == "failed" or (record["fetch"] == "done" and not record["inputs"]):
            return "CANCELED", record["reason"], []
        jobs = [self.ledger.find(u) for u in record["inputs"]]
        states = [j["state"] for j in jobs if j is not None]
        done = [
            u
            for u, j in zip(record["inputs"], jobs, strict=True)
            if j is not None and j["state"] == "dispatched"
        ]
        if record["fetch"] != "done" or any(
            STATE_OF_JOB[s] != "COMPLETED" and STATE_OF_JOB[s] != "CANCELED" for s in states
        ):
            return ("IN PROGRESS" if record["fetch"] == "running" or states else "SCHEDULED"), None, done
        if done:
            return "COMPLETED", None, done
        reasons = "; ".join(sorted({str(j["reason"]) for j in jobs if j is not None and j.get("reason")}))
        return "CANCELED", reasons or "no instance reached the destinations", []
