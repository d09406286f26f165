"""A local Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) on free loopback ports: the PACS of
``make demo``, the benchmarks and the tests.

``LocalOrthanc(folder).start()`` writes a minimal JSON configuration, starts ``Orthanc`` and waits
for ``/system``. ``stop()`` (SIGTERM; Orthanc needs about 3 s) and ``start()`` again reuse the same
storage and ports, so a destination can be taken down and brought back.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import requests

from node.errors import NodeError

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
AE_TITLE = "ORTHANC"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalOrthanc:
    """One Orthanc process; ``users`` (name -> password) turns HTTP basic authentication on.

    ``check_called_aet`` makes Orthanc reject associations to another called AE title, as a PACS
    does (Orthanc's own default accepts any). ``overwrite`` sets ``OverwriteInstances``: by default
    Orthanc keeps the first copy of a SOP Instance UID and answers a resend with ``AlreadyStored``.
    """

    def __init__(
        self,
        root: Path,
        *,
        users: dict[str, str] | None = None,
        check_called_aet: bool = True,
        overwrite: bool = False,
        name: str = "aln-node-test",
    ) -> None:
        binary = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
        if binary is None:
            raise NodeError("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
        if not DICOMWEB_PLUGIN.is_file():
            raise NodeError(f"{DICOMWEB_PLUGIN} is missing (apt-get install orthanc-dicomweb)")
        self.binary = binary
        self.users = dict(users or {})
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.root = root / f"orthanc-{self.http_port}"
        self.root.mkdir(parents=True, exist_ok=True)
        self.ae_title = AE_TITLE
        self.config_path = self.root / "orthanc.json"
        self.log_path = self.root / "orthanc.log"
        config: dict[str, Any] = {
            "Name": name,
            "StorageDirectory": str(self.root / "db"),
            "IndexDirectory": str(self.root / "db"),
            "DicomAet": AE_TITLE,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users,
            "DicomAlwaysAllowStore": True,
            "DicomCheckCalledAet": check_called_aet,
            "OverwriteInstances": overwrite,
            # Only the DICOMweb plugin: the other plugins of the Debian folder are not needed.
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        self.config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        self.proc: subprocess.Popen[bytes] | None = None

    # -- addresses ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str] | None:
        """Credentials of the first registered user (for the helper's own REST calls)."""
        return next(iter(self.users.items()), None)

    # -- process --------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 30.0) -> LocalOrthanc:
        if self.running:
            return self
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--verbose", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
            )
        deadline = time.monotonic() + timeout
        while not self._alive():
            if not self.running:
                raise NodeError(f"Orthanc exited at start-up:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise NodeError(f"Orthanc did not answer /system within {timeout:.0f} s")
            time.sleep(0.1)
        return self

    def _alive(self) -> bool:
        try:
            return requests.get(f"{self.url}/system", auth=self.auth, timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM and wait until the process and its ports are gone (about 3 s for Orthanc)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL (fast teardown; the storage is not reused afterwards)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    # -- REST -----------------------------------------------------------------------------
    def get(self, path: str) -> Any:
        r = requests.get(f"{self.url}{path}", auth=self.auth, timeout=10)
        r.raise_for_status()
        return r.json()

    def instances(self) -> list[str]:
        """SOP Instance UIDs of every stored instance (one entry per stored copy)."""
        return [i["MainDicomTags"]["SOPInstanceUID"] for i in self.get("/instances?expand")]

    def orthanc_id(self, sop_instance_uid: str) -> str | None:
        r = requests.post(f"{self.url}/tools/lookup", data=sop_instance_uid, auth=self.auth, timeout=10)
        r.raise_for_status()
        ids = [x["ID"] for x in r.json() if x.get("Type") == "Instance"]
        return ids[0] if ids else None

    def lookup(self, dicom_uid: str) -> list[str]:
        """Orthanc identifiers of the patient/study/series/instance with this DICOM UID."""
        try:
            r = requests.post(f"{self.url}/tools/lookup", data=dicom_uid, auth=self.auth, timeout=10)
            r.raise_for_status()
        except requests.RequestException as exc:
            raise NodeError(f"Orthanc lookup of {dicom_uid} failed: {exc}") from None
        return [str(x["ID"]) for x in r.json()]

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""
