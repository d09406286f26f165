"""Fixtures of the DICOMweb tests: a real ``alnnode serve`` with its HTTP application and credentials."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from node.http.hashing import make_hash
from tests.helpers import NodeProcess, free_port, write_config

TOKENS = {
    "modality": "modality-token-4f1e0a9c",
    "viewer": "viewer-token-8b2d7e11",
    "admin": "admin-token-c3a95f02",
}


@pytest.fixture(scope="session")
def credentials_toml() -> str:
    return "".join(
        f'[[http.credentials]]\nname = "{role}-client"\nrole = "{role}"\ntoken_hash = "{make_hash(token)}"\n'
        for role, token in TOKENS.items()
    )


@dataclass
class HttpNode:
    proc: NodeProcess
    config: Path
    data: Path
    dicom_port: int
    http_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def session(self, role: str = "viewer") -> requests.Session:
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {TOKENS[role]}"
        return s


def http_node_config(
    tmp: Path, credentials: str, extra: str = "", http_extra: str = ""
) -> tuple[Path, int, int, Path]:
    port, http_port = free_port(), free_port()
    data = tmp / "var"
    cfg = write_config(
        tmp / "alnnode.toml",
        port=port,
        data_dir=data,
        extra=f'{extra}\n[http]\nenabled = true\nhost = "127.0.0.1"\nport = {http_port}\n{http_extra}\n{credentials}',
    )
    return cfg, port, http_port, data


@pytest.fixture
def http_node(tmp_path: Path, credentials_toml: str) -> Iterator[HttpNode]:
    """A node without a model (jobs stop at skipped/received): STOW-RS, QIDO-RS, WADO-RS, auth."""
    cfg, port, http_port, data = http_node_config(tmp_path, credentials_toml)
    proc = NodeProcess(cfg, port, tmp_path / "node.log").start()
    yield HttpNode(proc, cfg, data, port, http_port)
    proc.stop()
