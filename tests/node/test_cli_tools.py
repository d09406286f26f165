"""`alnnode echo`, `alnnode send` and `alnnode status` as an admin uses them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import US_FILES, NodeProcess, free_port, us_file


def alnnode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli", *args], capture_output=True, text=True, timeout=180)


def test_echo_success_and_failures(node_proc: NodeProcess) -> None:
    ok = alnnode("echo", f"ALN_AI@127.0.0.1:{node_proc.port}", "--calling", "US_ROOM1")
    assert ok.returncode == 0 and "success" in ok.stdout
    rejected = alnnode("echo", f"ALN_AI@127.0.0.1:{node_proc.port}", "--calling", "STRANGER")
    assert rejected.returncode == 1
    assert "rejected the association permanently" in rejected.stderr and "Calling AE" in rejected.stderr
    refused = alnnode("echo", f"ALN_AI@127.0.0.1:{free_port()}")
    assert refused.returncode == 1 and "cannot connect" in refused.stderr
    bad = alnnode("echo", "ALN_AI@localhost")
    assert bad.returncode == 1 and "AE@HOST:PORT" in bad.stderr


def test_send_walks_directories_and_reports_each_file(node_proc: NodeProcess, node_env: tuple[Path, int, Path], tmp_path: Path) -> None:
    folder = tmp_path / "loops" / "sub"
    folder.mkdir(parents=True)
    for name in ("color3d_jpeg_baseline.dcm", "US1_J2KR.dcm", "gdcm-US-ALOKA-16.dcm", "OBXXXX1A_rle_2frame.dcm"):
        shutil.copy(us_file(name), folder / name)
    (folder / "README.txt").write_text("not dicom")
    out = alnnode("send", str(tmp_path / "loops"), "--to", f"ALN_AI@127.0.0.1:{node_proc.port}", "--calling", "US_ROOM1")
    assert out.returncode == 1, out.stdout  # the text file fails, the rest is stored
    assert out.stdout.count("OK ") == 4
    assert "FAIL" in out.stdout and "README.txt" in out.stdout
    assert "sent 4 of 5 file(s)" in out.stdout

    status = alnnode("status", "--config", str(node_env[0]), "--json")
    data = json.loads(status.stdout)
    assert data["counts"]["skipped"] == 4  # no [model] bundle configured: stored and recorded, not classified
    assert all(j["reason"] == "no model bundle configured ([model] bundle)" for j in data["last_jobs"])
    assert {j["sop_instance_uid"] for j in data["last_jobs"]} >= {"1.2.840.114340.3.8251017118051.3.20160503.121539.16117.4"}
    text = alnnode("status", "--config", str(node_env[0]))
    assert "skipped 4" in text.stdout
    assert "Anonymized" not in text.stdout + status.stdout  # UIDs only, no names


def test_send_every_real_us_file_in_its_own_syntax(node_proc: NodeProcess) -> None:
    paths = sorted({str(us_file(n)) for n in US_FILES if n != "OBXXXX1A_expb_2frame.dcm"})
    out = alnnode("send", *paths, "--to", f"ALN_AI@127.0.0.1:{node_proc.port}", "--calling", "US_ROOM1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"sent {len(paths)} of {len(paths)}" in out.stdout


def test_send_reports_refused_objects(node_proc: NodeProcess, tmp_path: Path) -> None:
    src = us_file("US1_UNCR.dcm")
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(src.read_bytes()[:200_000])
    out = alnnode("send", str(cut), "--to", f"ALN_AI@127.0.0.1:{node_proc.port}", "--calling", "US_ROOM1")
    assert out.returncode == 1
    assert "status 0xC000" in out.stdout


def test_send_to_nobody_fails_clearly(tmp_path: Path) -> None:
    out = alnnode("send", str(us_file("US1_UNCR.dcm")), "--to", f"ALN_AI@127.0.0.1:{free_port()}")
    assert out.returncode == 1 and "cannot connect" in out.stdout
