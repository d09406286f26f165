"""HTTP credentials: no anonymous access, 401 for a missing or wrong credential, 403 for a wrong role,
hashes only in the configuration, refusal to listen beyond loopback without credentials."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, Depends

from node.config import load_config
from node.errors import ConfigError
from node.http.app import create_app
from node.http.auth import Principal, main, require
from node.http.hashing import make_hash
from node.http.server import HttpServer
from node.ledger import Ledger

VIEWER_TOKEN = "viewer-token-7d1f0c"
MODALITY_TOKEN = "modality-token-19ab"


@pytest.fixture(scope="module")
def hashes() -> dict[str, str]:
    return {
        "viewer": make_hash(VIEWER_TOKEN),
        "modality": make_hash(MODALITY_TOKEN),
        "pw": make_hash("s3cret pass"),
    }


@pytest.fixture
def server(tmp_path: Path, hashes: dict[str, str]) -> Iterator[str]:
    settings = load_config(
        None,
        storage={"data_dir": str(tmp_path / "var")},
        http={
            "enabled": True,
            "port": 0,
            "credentials": [
                {"name": "ohif", "role": "viewer", "token_hash": hashes["viewer"]},
                {"name": "us1", "role": "modality", "token_hash": hashes["modality"]},
                {"name": "ops", "role": "admin", "username": "ops", "password_hash": hashes["pw"]},
            ],
        },
    )
    settings.storage.data_dir.mkdir(parents=True)
    ledger = Ledger(settings.ledger_url)
    app = create_app(settings, ledger)
    probe = APIRouter()

    @probe.get("/probe/viewer")
    def viewer(who: Annotated[Principal, Depends(require("viewer"))]) -> dict[str, str]:
        return {"name": who.name}

    @probe.get("/probe/admin")
    def admin(who: Annotated[Principal, Depends(require("admin"))]) -> dict[str, str]:
        return {"name": who.name}

    app.include_router(probe)
    http = HttpServer(settings, app)
    http.start()
    try:
        yield http.url
    finally:
        http.stop()
        ledger.close()


def test_no_anonymous_access_and_roles(server: str) -> None:
    with httpx.Client(base_url=server, timeout=10) as c:
        r = c.get("/probe/viewer")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert c.get("/probe/viewer", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/probe/viewer", headers={"Authorization": "Bearer"}).status_code == 401
        assert c.get("/probe/viewer", headers={"Authorization": f"Bearer {VIEWER_TOKEN}"}).json() == {
            "name": "ohif"
        }
        r = c.get("/probe/viewer", headers={"Authorization": f"Bearer {MODALITY_TOKEN}"})
        assert r.status_code == 403 and "'modality'" in r.json()["detail"]
        assert c.get("/probe/admin", headers={"Authorization": f"Bearer {VIEWER_TOKEN}"}).status_code == 403
        basic = base64.b64encode(b"ops:s3cret pass").decode()
        assert c.get("/probe/admin", headers={"Authorization": f"Basic {basic}"}).json() == {"name": "ops"}
        assert (
            c.get("/probe/viewer", headers={"Authorization": f"Basic {basic}"}).status_code == 200
        )  # admin implies viewer
        wrong = base64.b64encode(b"ops:nope").decode()
        assert c.get("/probe/admin", headers={"Authorization": f"Basic {wrong}"}).status_code == 401
        assert c.get("/probe/admin", headers={"Authorization": "Basic !!notbase64"}).status_code == 401


def test_refuses_network_host_without_credentials(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"http\.host = '0\.0\.0\.0'.*credentials"):
        load_config(None, storage={"data_dir": str(tmp_path)}, http={"enabled": True, "host": "0.0.0.0"})
    load_config(None, storage={"data_dir": str(tmp_path)}, http={"enabled": True, "host": "127.0.0.1"})


def test_hash_format_checked_without_echoing_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, storage={"data_dir": str(tmp_path)},
                    http={"credentials": [{"name": "x", "role": "viewer", "token_hash": "plaintext-token"}]})  # fmt: skip
    assert "scrypt$N$r$p$salt$hash" in str(err.value) and "plaintext-token" not in str(err.value)


def test_token_maker_prints_a_usable_entry(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import tomllib

    assert main(["--name", "pacs", "--role", "modality"]) == 0
    out = capsys.readouterr().out
    token = out.splitlines()[0].rsplit(" ", 1)[1]
    entry = tomllib.loads(out)["http"]["credentials"][0]
    settings = load_config(None, storage={"data_dir": str(tmp_path)}, http={"credentials": [entry]})
    from node.http.auth import Authenticator

    assert Authenticator(settings.http.credentials).authenticate(f"Bearer {token}") == Principal(
        "pacs", "modality"
    )
