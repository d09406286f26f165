"""A real Orthanc server for tests (fixtures ``orthanc`` and ``orthanc_auth``, registered in the root
conftest): ``node.localpacs.LocalOrthanc`` on free loopback ports with test conveniences.

    def test_x(orthanc: OrthancServer) -> None:
        ...  # orthanc.url, orthanc.dicomweb_url, orthanc.dicom_port, orthanc.instances()
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from node.errors import NodeError
from node.localpacs import AE_TITLE, DICOMWEB_PLUGIN, LocalOrthanc
from tests.helpers import require_tool

__all__ = ["AE_TITLE", "OrthancServer", "orthanc", "orthanc_auth"]


class OrthancServer(LocalOrthanc):
    """``node.localpacs.LocalOrthanc`` with test conveniences; fails under CI if Orthanc is missing."""

    def __init__(self, root: Path, **kwargs: Any) -> None:
        require_tool("Orthanc")
        if not DICOMWEB_PLUGIN.is_file():
            if os.environ.get("CI"):
                pytest.fail(f"{DICOMWEB_PLUGIN} is missing (.ci/run must apt-get install orthanc-dicomweb)")
            pytest.skip(f"{DICOMWEB_PLUGIN} is missing (apt-get install orthanc-dicomweb)")
        super().__init__(root, **kwargs)

    def start(self, timeout: float = 30.0) -> OrthancServer:
        try:
            super().start(timeout)
        except NodeError as exc:
            pytest.fail(str(exc))
        return self

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
