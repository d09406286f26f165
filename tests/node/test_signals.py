"""Process behaviour of ``alnnode serve`` with real processes: SIGTERM drains (running associations
finish, new ones are refused, workers stop, nothing is left behind), SIGHUP reloads and keeps the node up."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.support import destination_toml, ledger_of, pipeline_config
from tests.faults.support import become_subreaper, descendants, source_uid, wait_gone
from tests.helpers import NodeProcess, loop_copies, require_tool, wait_for
from tests.orthanc import OrthancServer

pytestmark = pytest.mark.timeout(300)


def test_sigterm_drains_running_associations_and_leaves_no_process(orthanc: OrthancServer, small_bundle: Path, tmp_path: Path) -> None:
    become_subreaper()
    cfg, port, data = pipeline_config(tmp_path, small_bundle, destination_toml("dimse", orthanc))
    node = NodeProcess(cfg, port, tmp_path / "node.log").start()
    assert node.proc is not None
    wait_for(lambda: len(descendants(node.proc.pid)) >= 2, 60, what="the embedded worker")  # type: ignore[union-attr]
    loops = loop_copies(tmp_path / "loops", 6, "t")  # 6 x 6 MB in one association
    out: dict[str, str] = {}

    def send() -> None:
        run = subprocess.run([require_tool("storescu"), "-v", "-xy", "-aet", "US_ROOM1", "-aec", "ALN_AI", "127.0.0.1", str(port), *map(str, loops)],
                             capture_output=True, text=True, timeout=200)  # fmt: skip
        out["log"] = run.stdout + run.stderr

    sender = threading.Thread(target=send)
    sender.start()
    ledger = ledger_of(data)
    wait_for(lambda: ledger.find(source_uid(loops[0])) is not None, 60, 0.05, what="the first store of the association")
    tree = descendants(node.proc.pid)
    node.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    refused = subprocess.run([require_tool("echoscu"), "-aet", "ECHOSCU", "-aec", "ALN_AI", "127.0.0.1", str(port)], capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0, "no new association once draining"
    sender.join(200)
    assert out["log"].count("Received Store Response (Success)") == 6, out["log"][-2000:]
    assert all(ledger.find(source_uid(p)) is not None for p in loops), "every store of the running association finished"
    assert node.proc.wait(90) == 0
    wait_gone(tree, 30, "the worker processes to stop with the node")
    log = (tmp_path / "node.log").read_text(errors="replace")
    assert "SIGTERM: draining" in log and "stopped" in log


def test_sighup_reloads_and_does_not_stop_the_node(node_proc: NodeProcess, node_env: tuple[Path, int, Path]) -> None:
    _cfg, port, _data = node_env
    assert node_proc.proc is not None
    node_proc.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: b"config reload" in node_proc.log.read_bytes(), 10, what="SIGHUP to reload the configuration")
    echo = subprocess.run([require_tool("echoscu"), "-aet", "ECHOSCU", "-aec", "ALN_AI", "127.0.0.1", str(port)], capture_output=True, text=True, timeout=30)
    assert echo.returncode == 0, echo.stdout + echo.stderr
    assert node_proc.proc.poll() is None
