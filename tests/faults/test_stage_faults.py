"""Faults inside a stage end in ``failed`` with the reason after ``queue.max_attempts``; duplicate and
late tasks change nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from node.config import load_config
from node.queue import TASK_CLASSIFY, TASK_DISPATCH, TASK_RENDER, Broker
from tests.e2e.support import destination_toml, ledger_of, pipeline_config
from tests.faults.support import alnnode, celery_worker_pid, source_uid, srs_in, store
from tests.helpers import ROOT, NodeProcess, wait_for
from tests.orthanc import OrthancServer

pytestmark = pytest.mark.timeout(400)
INJECT = Path(__file__).parent / "inject"


def _node_with_fault(tmp: Path, cfg: Path, port: int, fault: str, monkeypatch: pytest.MonkeyPatch) -> NodeProcess:
    monkeypatch.setenv("PYTHONPATH", f"{INJECT}{os.pathsep}{ROOT}")
    monkeypatch.setenv("ALNNODE_TEST_FAULT", fault)
    return NodeProcess(cfg, port, tmp / "node.log").start()


def test_model_raising_fails_after_max_attempts_and_worker_stays_up(orthanc: OrthancServer, small_bundle: Path, phantom_loops: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, port, data = pipeline_config(tmp_path, small_bundle, destination_toml("dimse", orthanc))
    node = _node_with_fault(tmp_path, cfg, port, "raise", monkeypatch)
    assert node.proc is not None
    try:
        loop = phantom_loops[13]
        uid = source_uid(loop)
        ledger = ledger_of(data)
        wait_for(lambda: celery_worker_pid(node.proc.pid) is not None, 60, what="the worker")  # type: ignore[union-attr]
        worker = celery_worker_pid(node.proc.pid)  # type: ignore[union-attr]
        assert store(port, loop) == [True]
        wait_for(lambda: (r := ledger.find(uid)) is not None and r["state"] == "failed", 180, 0.5, what="the job to fail")
        row = ledger.find(uid)
        assert row is not None and row["stage"] == "classify", row
        assert "RuntimeError: injected fault" in row["reason"] and "attempt 3 of 3" in row["reason"], row["reason"]
        assert celery_worker_pid(node.proc.pid) == worker, "the worker stayed up"  # type: ignore[union-attr]
        status = alnnode("status", "--failed", "--config", str(cfg))
        assert uid in status.stdout and "RuntimeError" in status.stdout
        assert orthanc.instances() == []
    finally:
        node.stop()


def test_loop_that_kills_its_worker_is_failed_after_max_attempts(orthanc: OrthancServer, small_bundle: Path, phantom_loops: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, port, data = pipeline_config(tmp_path, small_bundle, destination_toml("dimse", orthanc))
    node = _node_with_fault(tmp_path, cfg, port, "exit", monkeypatch)
    try:
        loop = phantom_loops[14]
        uid = source_uid(loop)
        ledger = ledger_of(data)
        assert store(port, loop) == [True]
        wait_for(lambda: (r := ledger.find(uid)) is not None and r["state"] == "failed", 300, 1.0, what="the job to fail")
        row = ledger.find(uid)
        assert row is not None and row["stage"] == "classify" and "gave up after 3 attempt(s)" in row["reason"], row
        assert "worker" in row["reason"]
    finally:
        node.stop()


def test_duplicate_and_late_tasks_change_nothing(orthanc: OrthancServer, small_bundle: Path, phantom_loops: list[Path], tmp_path: Path) -> None:
    cfg, port, data = pipeline_config(tmp_path, small_bundle, destination_toml("dimse", orthanc))
    node = NodeProcess(cfg, port, tmp_path / "node.log").start()
    broker = Broker(load_config(cfg))
    try:
        ledger = ledger_of(data)
        loop = phantom_loops[15]
        uid = source_uid(loop)
        assert store(port, loop) == [True]
        for _ in range(2):  # the same stage sent twice more, while the first is queued or running
            broker.send(TASK_CLASSIFY, uid)
        wait_for(lambda: (r := ledger.find(uid)) is not None and r["state"] == "dispatched", 180, what="dispatched")
        history = ledger.history(uid)
        assert [s for s, _at, _d in history].count("classified") == 1, history
        # stale tasks after `dispatched`: every stage once more
        for task in (TASK_CLASSIFY, TASK_RENDER, TASK_DISPATCH):
            broker.send(task, uid)
        log = data / "logs" / "worker0.log"
        wait_for(lambda: log.read_text(errors="replace").count(f"{uid}: nothing to do") >= 5, 120, what="the stale tasks to be consumed")
        assert ledger.history(uid) == history, "no state change"
        assert len(srs_in(orthanc)) == 1 and len(orthanc.instances()) == 3, "no second copy"
        assert {d["attempts"] for d in ledger.deliveries_of(uid)} == {1}
    finally:
        broker.close()
        node.stop()
