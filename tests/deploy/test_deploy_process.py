"""How ``alnnode serve`` and ``alnnode worker`` behave as services: the root refusal, one-line text
or JSON-lines logs on stderr, and a rotated ``--log-file``. Real processes, real C-ECHOs."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.logs import JsonFormatter, TextFormatter, make_handler
from tests.helpers import ALNNODE, ROOT, free_port, require_tool, write_config

TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+\[\d+\]: ")
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the root refusal needs root (CI runs as root)")


@as_root
@pytest.mark.parametrize("command", [["serve"], ["worker", "--queues", "io"]])
def test_refuses_to_run_as_root_without_allow_root(tmp_path: Path, command: list[str]) -> None:
    cfg = write_config(tmp_path / "alnnode.toml", port=free_port(), data_dir=tmp_path / "var")
    out = subprocess.run([*ALNNODE, *command, "--config", str(cfg)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "refusing to run as root" in out.stderr and "--allow-root" in out.stderr
    assert not (tmp_path / "var").exists()  # refused before touching anything


def serve(cfg: Path, *extra: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([*ALNNODE, "-v", "serve", "--allow-root", "--config", str(cfg), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)


@pytest.fixture
def node_cfg(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    port = free_port()
    yield write_config(tmp_path / "alnnode.toml", port=port, data_dir=tmp_path / "var"), port


def echo(port: int) -> None:
    out = subprocess.run([require_tool("echoscu"), "-aet", "ECHOSCU", "-aec", "ALN_AI", "127.0.0.1", str(port)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def run_and_stop(proc: subprocess.Popen[str], port: int, echoes: int = 1) -> tuple[str, str]:
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the CLI's "listening on" line: the node is ready
    assert "listening on" in line, line
    for _ in range(echoes):
        echo(port)
    proc.terminate()
    stdout, stderr = proc.communicate(timeout=60)
    return line + stdout, stderr


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_stderr_logs_are_one_line_per_record(node_cfg: tuple[Path, int], fmt: str) -> None:
    cfg, port = node_cfg
    _, stderr = run_and_stop(serve(cfg, "--log-format", fmt), port)
    lines = stderr.splitlines()
    assert len(lines) >= 3, stderr  # at least: root warning, listening, association, stopping
    for line in lines:
        if fmt == "json":
            record = json.loads(line)
            assert {"ts", "level", "logger", "pid", "msg"} <= set(record), line
        else:
            assert TEXT_LINE.match(line), line
    messages = [json.loads(line)["msg"] for line in lines] if fmt == "json" else lines
    assert any("listening on 127.0.0.1" in m for m in messages)
    assert any("SIGTERM: draining and stopping" in m for m in messages)


def test_log_file_is_rotated(node_cfg: tuple[Path, int], tmp_path: Path) -> None:
    cfg, port = node_cfg
    log = tmp_path / "logs" / "alnnode.log"
    proc = serve(cfg, "--log-file", str(log), "--log-max-mb", "0.002", "--log-backups", "2")
    _, stderr = run_and_stop(proc, port, echoes=12)
    assert stderr == ""  # everything went to the file
    names = sorted(p.name for p in log.parent.iterdir())
    assert names == ["alnnode.log", "alnnode.log.1", "alnnode.log.2"], names  # two backups kept, no more
    assert all(p.stat().st_size <= 2 * 0.002 * 1024 * 1024 for p in log.parent.iterdir())
    assert all(TEXT_LINE.match(line) for p in log.parent.iterdir() for line in p.read_text().splitlines())


def test_unwritable_log_file_is_one_line_error(node_cfg: tuple[Path, int], tmp_path: Path) -> None:
    cfg, _ = node_cfg
    (tmp_path / "file").write_text("")
    proc = serve(cfg, "--log-file", str(tmp_path / "file" / "x.log"))
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2 and stderr.count("\n") == 1 and "cannot be opened" in stderr and "Traceback" not in stderr


def test_formatters_escape_newlines_and_keep_context() -> None:
    try:
        raise ValueError("bad value 'x'\nsecond line")
    except ValueError:
        import sys

        record = logging.LogRecord("node.x", logging.ERROR, __file__, 1, "failed %s\nnext", ("1.2.3",), sys.exc_info())
    record.sop_instance_uid = "1.2.3"
    text = TextFormatter().format(record)
    assert "\n" not in text and TEXT_LINE.match(text) and "sop_instance_uid=1.2.3" in text and "ValueError" in text
    obj = json.loads(JsonFormatter().format(record))
    assert obj["msg"] == "failed 1.2.3\nnext" and obj["sop_instance_uid"] == "1.2.3" and "ValueError" in obj["exc"]


def test_peer_resets_logged_by_pynetdicom_are_one_warning_line(tmp_path: Path) -> None:
    """pynetdicom's ``LOGGER.exception`` on a peer's reset becomes one WARNING line; a pynetdicom bug keeps
    its traceback, and the node's own records are untouched."""
    handler = make_handler("text", tmp_path / "node.log")
    dul, own = logging.getLogger("pynetdicom.dul"), logging.getLogger("node.receive.scp")
    saved = dul.propagate
    for logger in (dul, own):
        logger.addHandler(handler)
        logger.propagate = False
    try:
        dul.error("Connection closed before the entire PDU was received")
        for exc in (ConnectionResetError(104, "Connection reset by peer"), TimeoutError("timed out"), KeyError("bug")):
            try:
                raise exc
            except Exception as caught:
                dul.exception(caught)
                own.exception("own: %s", type(caught).__name__)
    finally:
        for logger in (dul, own):
            logger.removeHandler(handler)
        dul.propagate, own.propagate = saved, True
        handler.close()
    lines = (tmp_path / "node.log").read_text().splitlines()
    pyn = [line for line in lines if "pynetdicom.dul" in line]
    assert [" WARNING " in line for line in pyn] == [True, True, True, False]
    assert "peer connection error: [Errno 104] Connection reset by peer" in pyn[1] and "exc=" not in pyn[1]
    assert "peer connection error: timed out" in pyn[2] and "exc=" not in pyn[2]
    assert " ERROR " in pyn[3] and "exc=" in pyn[3] and "KeyError" in pyn[3]
    own_lines = [line for line in lines if "node.receive.scp" in line]
    assert len(own_lines) == 3 and all(" ERROR " in line and "exc=" in line for line in own_lines)


def test_worker_log_options_reach_the_worker(tmp_path: Path) -> None:
    """The worker takes the same options (the full worker start is covered by tests/e2e)."""
    out = subprocess.run([*ALNNODE, "worker", "--allow-root", "--queues", "nope", "--log-format", "json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 2 and "unknown queue 'nope'" in out.stderr
    bad = subprocess.run([*ALNNODE, "worker", "--allow-root", "--log-file", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "cannot be opened" in bad.stderr
