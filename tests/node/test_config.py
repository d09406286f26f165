"""`alnnode config check`: good configs print the effective TOML; each bad value is named."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from node.config import ConfigError, load_config

GOOD = """
[node]
ae_title = "ALN_AI"
host = "0.0.0.0"
port = 11112
reject_unknown_callers = true
max_associations = 16
[[peers]]
ae_title = "US_ROOM1"
host = "127.0.0.1"
[storage]
data_dir = "{data}"
[[destinations]]
name = "pacs"
kind = "dimse"
ae_title = "ORTHANC"
host = "127.0.0.1"
port = 4242
"""


def check(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "alnnode.toml"
    cfg.write_text(text.replace("{data}", str(tmp_path / "var")))
    return subprocess.run(
        [sys.executable, "-m", "node.cli", "config", "check", "--config", str(cfg)],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=60,
    )


def test_good_config_prints_effective_config(tmp_path: Path) -> None:
    out = check(tmp_path, GOOD)
    assert out.returncode == 0, out.stderr
    assert 'ae_title = "ALN_AI"' in out.stdout and 'kind = "dimse"' in out.stdout


def test_environment_overrides_file(tmp_path: Path) -> None:
    out = check(tmp_path, GOOD, {"ALNNODE_NODE__PORT": "11999", "ALNNODE_NODE__AE_TITLE": "OTHER_AI"})
    assert out.returncode == 0, out.stderr
    assert "port = 11999" in out.stdout and 'ae_title = "OTHER_AI"' in out.stdout


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('ae_title = "ALN_AI"', 'ae_title = "AN_AE_TITLE_TOO_LONG"', "node.ae_title = 'AN_AE_TITLE_TOO_LONG': AE title 'AN_AE_TITLE_TOO_LONG' is longer than 16 characters"),
        ('ae_title = "ALN_AI"', 'ae_title = "ALN\\\\AI"', "node.ae_title = 'ALN\\\\AI'"),
        ('ae_title = "ALN_AI"', 'ae_title = "ALN\\u0007AI"', "no backslash or control characters"),
        ("port = 11112", "port = 70000", "node.port = 70000"),
        ("port = 11112", "port = -1", "node.port = -1"),
        ("port = 4242", "port = 0", "destinations[0].port = 0"),
        ('kind = "dimse"', 'kind = "ftp"', "destinations[0].kind = 'ftp': unknown destination kind 'ftp'"),
        ('host = "127.0.0.1"\n[storage]', 'host = "127.0.0.1"\n[[peers]]\nae_title = "US_ROOM1"\nhost = "127.0.0.1"\n[storage]', "peers[1].ae_title = 'US_ROOM1': duplicate peer"),
        ('data_dir = "{data}"', 'data_dir = "/proc/1/forbidden"', "storage.data_dir = '/proc/1/forbidden'"),
        ("max_associations = 16", "max_associations = 0", "node.max_associations = 0"),
        ("[node]", "[node]\nae_tittle = \"X\"", "node.ae_tittle = 'X': Extra inputs are not permitted"),
    ],
)
def test_bad_value_is_named(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in GOOD
    out = check(tmp_path, GOOD.replace(old, new, 1))
    assert out.returncode == 2, out.stdout
    assert expected in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_unreadable_data_dir(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        locked = Path("/proc/1/forbidden")  # root may write anywhere else
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
    with pytest.raises(ConfigError) as err:
        load_config(None, storage={"data_dir": str(locked / "var")})
    assert str(locked) in str(err.value)


def test_incomplete_destination_is_named(tmp_path: Path) -> None:
    out = check(tmp_path, GOOD.replace('host = "127.0.0.1"\nport = 4242', ""))
    assert out.returncode == 2
    assert "destination 'pacs' of kind 'dimse' needs host, port" in out.stderr


def test_missing_or_broken_file(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "node.cli", "config", "check", "--config", str(tmp_path / "nope.toml")], capture_output=True, text=True)
    assert out.returncode == 2 and "does not exist" in out.stderr
    out = check(tmp_path, "[node\nport=1")
    assert out.returncode == 2 and "alnnode.toml" in out.stderr
