"""Secrets: inline, from an environment variable (``env:NAME``) or a file (``file:PATH``); never printed
by ``alnnode config check``, and masked in delivery errors (what the ledger and ``alnnode status`` show)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from node.config import load_config
from node.dispatch.errors import DeliveryError, Failure
from node.http.hashing import make_hash
from tests.helpers import ALNNODE, ROOT

SECRETS = {
    "ledger": "pg-Secret-4411",
    "broker": "redis-Secret-9902",
    "dest_password": "dest-Secret-1717",
    "dest_token": "dest-Token-2828",
    "url_password": "url-Secret-3939",
    "source_password": "source-Secret-5151",
    "source_token": "source-Token-6262",
}


def test_config_check_never_prints_a_secret(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(SECRETS["dest_token"] + "\n")
    token_hash = make_hash("viewer-token")
    cfg = tmp_path / "alnnode.toml"
    cfg.write_text(
        f"""[storage]
data_dir = "{tmp_path / "var"}"
ledger_url = "postgresql+psycopg://alnnode:{SECRETS["ledger"]}@db.example.org:5432/alnnode"
[queue]
broker_url = "env:TEST_BROKER_URL"
[http]
[[http.credentials]]
name = "ohif"
role = "viewer"
token_hash = "{token_hash}"
[[destinations]]
name = "pacs"
kind = "dicomweb"
url = "https://aln:{SECRETS["url_password"]}@pacs.example.org/dicom-web"
username = "aln"
password = "{SECRETS["dest_password"]}"
[[destinations]]
name = "orthanc"
kind = "orthanc"
url = "http://orthanc.example.org:8042"
token = "file:{tmp_path / "token"}"
[[sources]]
name = "archive"
url = "https://archive.example.org/dicom-web"
username = "aln"
password = "env:TEST_SOURCE_PASSWORD"
[[sources]]
name = "cloud"
url = "https://cloud.example.org/dicomweb"
token = "{SECRETS["source_token"]}"
""",
        encoding="utf-8",
    )
    env = dict(
        os.environ,
        TEST_BROKER_URL=f"redis://:{SECRETS['broker']}@redis.example.org:6379/0",
        TEST_SOURCE_PASSWORD=SECRETS["source_password"],
    )
    out = subprocess.run(
        [*ALNNODE, "config", "check", "--config", str(cfg)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    for name, secret in SECRETS.items():
        assert secret not in text, name
    assert token_hash not in text and token_hash.split("$")[-1] not in text
    assert (
        "redis://:***@redis.example.org" in text
        and "alnnode:***@db.example.org" in text
        and "[[sources]]" in text
    )

    # the values reach the code that needs them
    os.environ.update(TEST_BROKER_URL="redis://:x@r:6379/0", TEST_SOURCE_PASSWORD="y")
    try:
        settings = load_config(cfg)
    finally:
        del os.environ["TEST_BROKER_URL"], os.environ["TEST_SOURCE_PASSWORD"]
    assert (
        settings.destinations[1].token is not None
        and settings.destinations[1].token.get_secret_value() == SECRETS["dest_token"]
    )
    assert settings.sources[0].password is not None and settings.sources[0].password.get_secret_value() == "y"
    assert SECRETS["ledger"] in settings.ledger_url and SECRETS["ledger"] not in repr(settings)


def test_missing_secret_source_is_one_line_naming_it(tmp_path: Path) -> None:
    cfg = tmp_path / "alnnode.toml"
    cfg.write_text(f'[storage]\ndata_dir = "{tmp_path}"\n[queue]\nbroker_url = "env:NO_SUCH_VARIABLE_4711"\n')
    out = subprocess.run(
        [*ALNNODE, "config", "check", "--config", str(cfg)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode != 0 and "NO_SUCH_VARIABLE_4711" in out.stderr and "Traceback" not in out.stderr


def test_delivery_errors_mask_url_passwords() -> None:
    err = DeliveryError(
        f"pacs (http://aln:{SECRETS['url_password']}@pacs:8042/dicom-web): 503", transient=True
    )
    failure = Failure("1.2.3", True, f"POST http://aln:{SECRETS['url_password']}@pacs/dicom-web/studies: 500")
    assert SECRETS["url_password"] not in str(err) and SECRETS["url_password"] not in failure.reason
    assert "http://aln:***@pacs" in str(err)
