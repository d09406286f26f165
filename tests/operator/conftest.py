"""Fixtures of the operator-surface tests: a node with its HTTP application and credentials."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from node.http.hashing import make_hash
from tests.helpers import free_port

ADMIN_USER, ADMIN_PASSWORD = "ops", "correct horse 42"
VIEWER_USER, VIEWER_PASSWORD = "radiology", "viewer pass 7"
VIEWER_TOKEN = "prometheus-token-5be1"
ARTIFACTS = Path(__file__).parent / "artifacts"  # screenshots (git-ignored)


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


ADMIN = basic(ADMIN_USER, ADMIN_PASSWORD)
VIEWER = {"Authorization": f"Bearer {VIEWER_TOKEN}"}


@pytest.fixture(scope="session")
def credentials_toml() -> str:
    return (
        f'[[http.credentials]]\nname = "ops"\nrole = "admin"\nusername = "{ADMIN_USER}"\npassword_hash = "{make_hash(ADMIN_PASSWORD)}"\n'
        f'[[http.credentials]]\nname = "radiology"\nrole = "viewer"\nusername = "{VIEWER_USER}"\npassword_hash = "{make_hash(VIEWER_PASSWORD)}"\n'
        f'[[http.credentials]]\nname = "prometheus"\nrole = "viewer"\ntoken_hash = "{make_hash(VIEWER_TOKEN)}"\n'
    )


def http_toml(credentials: str) -> tuple[str, int]:
    port = free_port()
    return f"[http]\nenabled = true\nhost = \"127.0.0.1\"\nport = {port}\n{credentials}", port
