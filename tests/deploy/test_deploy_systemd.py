"""deploy/systemd: the units pass ``systemd-analyze verify``, the sysusers/tmpfiles snippets apply,
and every command line in the units is one our CLI accepts.

``verify`` checks that each Exec binary exists: the units name the installed
``/opt/alnnode/venv/bin/alnnode``, which this checkout does not have, so the test verifies copies
that point at an executable stand-in (the only change), and checks the arguments with the real parser.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ROOT, require_tool

UNITS = ROOT / "deploy" / "systemd"
INSTALLED = "/opt/alnnode/venv/bin/alnnode"
SERVICES = ("alnnode.service", "alnnode-worker@.service", "alnnode-io-worker.service")
HARDENING = ("User=alnnode", "ProtectSystem=strict", "ReadWritePaths=/var/lib/alnnode", "NoNewPrivileges=yes")


def _directives(unit: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in (UNITS / unit).read_text().splitlines() if line.startswith(f"{key}=")]


INSTANCES = ["alnnode.service", "alnnode-io-worker.service", "alnnode-worker@0.service"]


def _units_here(tmp_path: Path) -> Path:
    """Copies of the units whose Exec lines name an executable stand-in, and one worker instance."""
    stand_in = tmp_path / "alnnode"
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    for name in SERVICES:
        (tmp_path / name).write_text((UNITS / name).read_text().replace(INSTALLED, str(stand_in)))
    (tmp_path / "alnnode-worker@0.service").symlink_to(tmp_path / "alnnode-worker@.service")
    return tmp_path


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    out = subprocess.run([analyze, "verify", "--man=no", *INSTANCES], cwd=_units_here(tmp_path), capture_output=True, text=True, timeout=120)
    # verify exits 0 on unknown keys and bad values ("..., ignoring"): any line about our units fails
    ours = [line for line in (out.stdout + out.stderr).splitlines() if "alnnode" in line]
    assert out.returncode == 0 and not ours, out.stdout + out.stderr


@pytest.mark.parametrize("name", INSTANCES)
def test_units_exposure_is_low(tmp_path: Path, name: str) -> None:
    """``systemd-analyze security`` scores 0 (locked down) to 10 (exposed); "OK" is below 4."""
    analyze = require_tool("systemd-analyze")
    out = subprocess.run([analyze, "security", "--offline=yes", "--threshold=25", name], cwd=_units_here(tmp_path), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr
    assert re.search(r"Overall exposure level for \S+: [0-2]\.\d OK", out.stdout), out.stdout[-300:]


@pytest.mark.parametrize("name", SERVICES)
def test_units_are_hardened_and_reload_with_sighup(name: str) -> None:
    text = (UNITS / name).read_text()
    for directive in HARDENING:
        assert re.search(rf"^{re.escape(directive)}", text, re.M), f"{name} lacks {directive}"
    assert _directives(name, "ExecReload") == ["/bin/kill -HUP $MAINPID"]
    settings = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert not [line for line in settings if re.search(r"(?i)://[^/@\s]*:[^/@\s]*@|password=", line)]  # secrets: secrets.env


@pytest.mark.parametrize("name", SERVICES)
def test_unit_command_lines_are_accepted_by_the_cli(name: str) -> None:
    from node.cli import WORKER_COMMANDS, _parser
    from workers.worker import _parser as worker_parser

    for line in _directives(name, "ExecStartPre") + _directives(name, "ExecStart"):
        argv = shlex.split(line.replace("%i", "0").replace("%H", "host"))
        assert argv[0] == INSTALLED
        words = argv[1:]
        command = next(w for w in words if not w.startswith("-"))
        if command in WORKER_COMMANDS:
            args = worker_parser().parse_args(words[words.index(command) + 1 :])
            assert args.log_file and args.log_file.startswith("/var/log/alnnode/")
        else:
            args = _parser().parse_args(words)
        assert args.config == "/etc/alnnode/alnnode.toml"


def test_sysusers_and_tmpfiles_create_the_service_user_and_folders(tmp_path: Path) -> None:
    sysusers, tmpfiles = require_tool("systemd-sysusers"), require_tool("systemd-tmpfiles")
    (tmp_path / "etc").mkdir()
    run = {"capture_output": True, "text": True, "timeout": 60}
    made = subprocess.run([sysusers, f"--root={tmp_path}", str(UNITS / "alnnode.sysusers.conf")], **run)  # type: ignore[call-overload]
    assert made.returncode == 0, made.stderr
    user = next(line for line in (tmp_path / "etc/passwd").read_text().splitlines() if line.startswith("alnnode:"))
    assert user.endswith(":/var/lib/alnnode:/usr/sbin/nologin")
    uid = int(user.split(":")[2])
    assert 0 < uid < 1000  # a system user
    made = subprocess.run([tmpfiles, f"--root={tmp_path}", "--create", str(UNITS / "alnnode.tmpfiles.conf")], **run)  # type: ignore[call-overload]
    assert made.returncode == 0, made.stderr
    for folder in ("var/lib/alnnode", "var/log/alnnode"):
        st = (tmp_path / folder).stat()
        assert st.st_uid == uid and st.st_mode & 0o777 == 0o750, folder
    assert (tmp_path / "etc/alnnode").stat().st_uid == 0


def test_service_config_is_valid_and_keeps_secrets_out() -> None:
    from node.config import load_config

    text = (UNITS / "alnnode.toml").read_text()
    assert "password" not in text.split("[[destinations]]")[-1]
    settings = load_config(UNITS / "alnnode.toml")
    assert settings.storage.data_dir == Path("/var/lib/alnnode")
    assert settings.retention.delivered_days == 30 and settings.storage.fsync
