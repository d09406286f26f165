"""A real Orthanc server (Debian ``orthanc`` + ``orthanc-dicomweb``) for tests, on free loopback ports.

Usage::

    from tests.orthanc import OrthancServer, orthanc  # noqa: F401  (``orthanc`` is a fixture)

    def test_x(orthanc: OrthancServer) -> None:
        ...  # orthanc.url, orthanc.dicomweb_url, orthanc.dicom_port, orthanc.instances()

``OrthancServer(tmp_path).start()`` writes a minimal JSON configuration, starts ``/usr/sbin/Orthanc``
and waits for ``/system``. ``stop()`` (SIGTERM; Orthanc needs about 3 s) and ``start()`` again reuse the
same storage and ports, so a test can take a destination down and bring it back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.helpers import free_port, require_tool, wait_for

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
AE_TITLE = "ORTHANC"


class OrthancServer:
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
    ) -> None:
        self.binary = require_tool("Orthanc")
        if not DICOMWEB_PLUGIN.is_file():
            if os.environ.get("CI"):
                pytest.fail(f"{DICOMWEB_PLUGIN} is missing (.ci/run must apt-get install orthanc-dicomweb)")
            pytest.skip(f"{DICOMWEB_PLUGIN} is missing (apt-get install orthanc-dicomweb)")
        self.users = dict(users or {})
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.root = root / f"orthanc-{self.http_port}"
        self.root.mkdir(parents=True, exist_ok=True)
        self.ae_title = AE_TITLE
        self.config_path = self.root / "orthanc.json"
        self.log_path = self.root / "orthanc.log"
        config: dict[str, Any] = {
            "Name": "aln-node-test",
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

    def start(self, timeout: float = 30.0) -> OrthancServer:
        if self.running:
            return self
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--verbose", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
            )
        wait_for(lambda: self._alive() or not self.running, timeout, what="Orthanc /system")
        if not self.running:
            pytest.fail(f"Orthanc exited at start-up:\n{self.log_path.read_text(errors='replace')[-3000:]}")
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

    def tags(self, sop_instance_uid: str) -> dict[str, Any]:
        """Simplified tags of a stored instance (fails the test if it is not stored)."""
        oid = self.orthanc_id(sop_instance_uid)
        if oid is None:
            pytest.fail(f"Orthanc has no instance {sop_instance_uid}")
        tags: dict[str, Any] = self.get(f"/instances/{oid}/simplified-tags")
        return tags

    def file(self, sop_instance_uid: str) -> bytes:
        oid = self.orthanc_id(sop_instance_uid)
        if oid is None:
            pytest.fail(f"Orthanc has no instance {sop_instance_uid}")
        r = requests.get(f"{self.url}/instances/{oid}/file", auth=self.auth, timeout=30)
        r.raise_for_status()
        return r.content

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    """A started Orthanc without authentication; killed at teardown."""
    server = OrthancServer(tmp_path).start()
    yield server
    server.kill()


@pytest.fixture
def orthanc_auth(tmp_path: Path) -> Iterator[OrthancServer]:
    """A started Orthanc with HTTP basic authentication for user ``alice`` / ``wonderland``."""
    server = OrthancServer(tmp_path, users={"alice": "wonderland"}).start()
    yield server
    server.kill()
