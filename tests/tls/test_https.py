"""HTTPS for the HTTP application (uvicorn with the configured certificate and key)."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest

from node.config import load_config
from node.http.app import create_app
from node.http.hashing import make_hash
from node.http.server import HttpServer
from node.ledger import Ledger
from tests.tls.certs import issue, make_ca


def test_https_with_a_verified_certificate(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "pki")
    server_cert = issue(ca, tmp_path / "pki", "localhost", server=True)
    settings = load_config(
        None,
        storage={"data_dir": str(tmp_path / "var")},
        http={"enabled": True, "port": 0, "tls_certificate": str(server_cert.cert), "tls_private_key": str(server_cert.key),
              "credentials": [{"name": "v", "role": "viewer", "token_hash": make_hash("tok-123")}]},
    )  # fmt: skip
    settings.storage.data_dir.mkdir(parents=True)
    ledger = Ledger(settings.ledger_url)
    http = HttpServer(settings, create_app(settings, ledger))
    http.start()
    try:
        assert http.url.startswith("https://")
        verify = ssl.create_default_context(cafile=str(ca.cert))
        with httpx.Client(base_url=http.url, verify=verify, timeout=20) as c:
            assert c.get("/dicom-web/studies").status_code == 401
            r = c.get("/dicom-web/studies", headers={"Authorization": "Bearer tok-123"})
            assert r.status_code == 200 and r.json() == []
        with pytest.raises(httpx.HTTPError):  # an untrusted certificate is refused by a verifying client
            httpx.get(f"{http.url}/dicom-web/studies", timeout=10)
        with pytest.raises(httpx.HTTPError):  # no plain HTTP on the HTTPS port
            httpx.get(http.url.replace("https://", "http://") + "/dicom-web/studies", timeout=10)
    finally:
        http.stop()
        ledger.close()
