"""Test helpers: real sockets on free ports, real DCMTK tools, real pydicom-data files."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALNNODE = [sys.executable, "-m", "node.cli"]

# Real ultrasound files of pydicom-data with the storescu flag that proposes their own syntax.
US_FILES = {
    "color3d_jpeg_baseline.dcm": "-xy",
    "OBXXXX1A_rle_2frame.dcm": "-xr",
    "OBXXXX1A_2frame.dcm": "-xe",
    "OBXXXX1A_expb_2frame.dcm": "-xb",
    "US1_J2KR.dcm": "-xv",
    "US1_J2KI.dcm": "-xw",
    "US1_UNCR.dcm": "-xe",
    "gdcm-US-ALOKA-16.dcm": "-xi",
    "JPGLosslessP14SV1_1s_1f_8b.dcm": "-xs",
}


def us_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.fail(f"pydicom-data file {name} is missing (pip install pydicom-data)")
    return Path(str(path))


def loop_copies(folder: Path, n: int, tag: str, name: str = "color3d_jpeg_baseline.dcm") -> list[Path]:
    """n distinct instances of a real loop (fresh SOP Instance UIDs derived from ``tag``)."""

    from pydicom import dcmread
    from pydicom.uid import UID

    ds = dcmread(us_file(name))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        digest = hashlib.sha256(f"{tag}/{i}/{time.time_ns()}".encode()).digest()
        ds.SOPInstanceUID = UID(f"2.25.{int.from_bytes(digest[:16], 'big')}")
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = folder / f"{tag}{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def require_tool(name: str) -> str:
    """Path of a Debian tool; fails under CI (which must install it), skips elsewhere."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail(f"{name} is not installed (.ci/run must apt-get install it)")
    pytest.skip(f"{name} is not installed")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> None:
    """Poll ``predicate`` until true or fail after ``timeout`` seconds (no bare sleeps in tests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what or predicate}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def write_config(path: Path, *, port: int, data_dir: Path, extra: str = "", peers: tuple[str, ...] = ("US_ROOM1", "STORESCU", "ECHOSCU")) -> Path:
    peer_tables = "".join(f'[[peers]]\nae_title = "{p}"\n' for p in peers)
    path.write_text(
        f"""[node]
ae_title = "ALN_AI"
host = "127.0.0.1"
port = {port}
reject_unknown_callers = true
max_associations = 4
{peer_tables}
[storage]
data_dir = "{data_dir}"
min_free_mb = 1
{extra}
""",
        encoding="utf-8",
    )
    return path


class NodeProcess:
    """``alnnode serve`` as a real child process (SIGKILL-able)."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config, self.port, self.log = config, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> NodeProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([*ALNNODE, "-v", "serve", "--allow-root", "--config", str(self.config)], stdout=log, stderr=log, cwd=ROOT, env=env)
        # Readiness from the node's own "listening on" line for the DICOM port: a bare TCP probe would
        # hold an association slot open until the ACSE timeout. The HTTP server's "listening on" line
        # comes first, some milliseconds before the DICOM port is bound, so the port is part of the match.
        ready = re.compile(rb"listening on \S*:%d\b" % self.port)
        wait_for(lambda: ready.search(self.log.read_bytes()[offset:]) is not None or self.proc is None or self.proc.poll() is not None, 60, what="node to listen")
        assert self.proc.poll() is None, self.log.read_text()
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


