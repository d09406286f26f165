"""Process and result helpers of the fault tests: process trees from /proc, SRs in Orthanc."""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from pydicom import dcmread

from tests.helpers import ROOT, require_tool, wait_for
from tests.orthanc import OrthancServer

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Orphans of our children are re-parented to this test process (as to an init), so the test can
    see and reap whatever a killed node leaves behind."""
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of a process, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := proc_stat(int(entry.name))) is not None:
            children.setdefault(st[1], []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def live(pids: list[int]) -> list[int]:
    return [p for p in pids if (st := proc_stat(p)) is not None and st[0] != "Z"]


def zombies_of(pid: int) -> list[int]:
    return [p for p in descendants(pid) if (st := proc_stat(p)) is not None and st[0] == "Z" and st[1] == pid]


def celery_worker_pid(root: int) -> int | None:
    """The Celery worker main process (``worker --child``) in ``root``'s tree (not its pool processes)."""
    tree = descendants(root)
    mains = [p for p in tree if "worker --child" in cmdline(p)]
    return next((p for p in mains if (st := proc_stat(p)) is not None and "worker --child" not in cmdline(st[1])), None)


def srs_in(orthanc: OrthancServer) -> list[str]:
    """SOP Instance UIDs of the SRs Orthanc holds, read back as files."""
    out = []
    for oid in orthanc.get("/instances"):
        tags = orthanc.get(f"/instances/{oid}/simplified-tags")
        if tags.get("SOPClassUID") == SR_CLASS:
            out.append(str(tags["SOPInstanceUID"]))
    return out


def source_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def store_responses(port: int, *files: Path, aet: str = "US_ROOM1", flag: str = "-xy") -> list[str]:
    """C-STORE each file in its own storescu run; the status text storescu printed per file ("" for none)."""
    exe = require_tool("storescu")
    results = []
    for f in files:
        out = subprocess.run([exe, "-v", flag, "-aet", aet, "-aec", "ALN_AI", "127.0.0.1", str(port), str(f)],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        found = re.search(r"Received Store Response \((.*)\)", out.stdout + out.stderr)
        results.append(found.group(1) if found else "")
    return results


def store(port: int, *files: Path, aet: str = "US_ROOM1", flag: str = "-xy") -> list[bool]:
    """C-STORE each file in its own storescu run; True per file when the node answered success."""
    return [r == "Success" for r in store_responses(port, *files, aet=aet, flag=flag)]


def alnnode(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def wait_gone(pids: list[int], timeout: float, what: str) -> None:
    """Wait until none of ``pids`` exists any more, neither running nor as a zombie (we reap, as init does)."""

    def gone() -> bool:
        reap()
        return all(proc_stat(p) is None for p in pids)

    wait_for(gone, timeout, 0.1, what=what)


def elapsed_since(t0: float) -> float:
    return time.monotonic() - t0
