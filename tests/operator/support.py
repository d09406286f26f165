"""Helpers of the operator-surface tests: DCMTK echoscu, the node's audit file parsed as XML."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.helpers import ALNNODE, ROOT, require_tool


def echo(port: int, calling: str, called: str = "ALN_AI") -> subprocess.CompletedProcess[str]:
    exe = require_tool("echoscu")
    return subprocess.run([exe, "-aet", calling, "-aec", called, "127.0.0.1", str(port)], capture_output=True, text=True, timeout=60)


def alnnode(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ALNNODE, *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


def audit_messages(data: Path) -> list[ET.Element]:
    """Every message of the node's audit file, each parsed as its own XML document."""
    lines = (data / "audit" / "audit.xml.log").read_bytes().splitlines()
    return [ET.fromstring(line) for line in lines if line.strip()]


def event_of(msg: ET.Element) -> tuple[str, str | None]:
    """(EventID code, EventTypeCode code or None) of one audit message."""
    ident = msg.find("EventIdentification")
    assert ident is not None
    eid = ident.find("EventID")
    assert eid is not None
    etype = ident.find("EventTypeCode")
    return eid.get("csd-code", ""), None if etype is None else etype.get("csd-code")


def python() -> str:
    return sys.executable
