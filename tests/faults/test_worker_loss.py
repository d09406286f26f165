"""A killed worker never strands a loop: the job is handed on by liveness, not by a queue timer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.support import destination_toml, ledger_of, pipeline_config
from tests.faults.support import (
    become_subreaper,
    celery_worker_pid,
    descendants,
    live,
    source_uid,
    srs_in,
    store,
    wait_gone,
    zombies_of,
)
from tests.helpers import ROOT, NodeProcess, us_file, wait_for
from tests.orthanc import OrthancServer

pytestmark = pytest.mark.timeout(400)
CINE = "color3d_jpeg_baseline.dcm"  # 120 frames: classification takes long enough to be killed in


def test_embedded_worker_killed_mid_classify_delivers_one_sr_within_60_s(orthanc: OrthancServer, small_bundle: Path, tmp_path: Path) -> None:
    become_subreaper()
    cfg, port, data = pipeline_config(tmp_path, small_bundle, destination_toml("dimse", orthanc))
    node = NodeProcess(cfg, port, tmp_path / "node.log").start()
    assert node.proc is not None
    try:
        src = us_file(CINE)
        uid = source_uid(src)
        assert store(port, src) == [True]
        ledger = ledger_of(data)
        wait_for(lambda: (r := ledger.find(uid)) is not None and r["claimed_by"] is not None and r["state"] in ("received", "queued"), 120, what="classify to claim the job")
        worker = celery_worker_pid(node.proc.pid)
        assert worker is not None, [p for p in descendants(node.proc.pid)]
        t0 = time.monotonic()
        os.kill(worker, signal.SIGKILL)  # the worker's main process; its pool process dies with it
        wait_for(lambda: len(srs_in(orthanc)) >= 1, 60, 0.5, what="the SR in Orthanc within 60 s of the kill")
        recovery = time.monotonic() - t0
        print(f"worker SIGKILL -> SR in Orthanc: {recovery:.1f} s")
        wait_for(lambda: (r := ledger.find(uid)) is not None and r["state"] == "dispatched", 30, what="dispatched")
        assert len(srs_in(orthanc)) == 1, "exactly one SR"
        assert len(orthanc.instances()) == 3
        # the supervisor reaped the dead worker (no zombie) and started a new one
        wait_for(lambda: not zombies_of(node.proc.pid), 5, what="the dead worker to be reaped")  # type: ignore[union-attr]
        new = celery_worker_pid(node.proc.pid)
        assert new is not None and new != worker
        history = [s for s, _at, _d in ledger.history(uid)]
        assert history.count("classified") == 1 and history[-1] == "dispatched", history
        # killing the node leaves no worker behind
        tree = descendants(node.proc.pid)
        assert live(tree), "the node has worker processes"
        node.kill()
        wait_gone(tree, 15, "every worker process to die with the node: no orphan, no zombie")
    finally:
        node.stop()


def _worker(cfg: Path, log: Path, name: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "node.cli", "worker", "--allow-root", "--config", str(cfg), "--queues", "gpu,io", "--concurrency", "1", "--name", name]
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=out, cwd=ROOT, env=env, start_new_session=True)


def test_redis_worker_killed_second_worker_delivers_within_60_s(orthanc: OrthancServer, small_bundle: Path, redis_url: str, tmp_path: Path) -> None:
    cfg, port, data = pipeline_config(tmp_path, small_bundle, destination_toml("dimse", orthanc), broker=redis_url)
    node = NodeProcess(cfg, port, tmp_path / "node.log").start()
    workers = {name: _worker(cfg, tmp_path / f"{name}.log", name) for name in ("wA", "wB")}
    try:
        ledger = ledger_of(data)
        wait_for(lambda: len(ledger.live_workers(30)) == 2, 120, what="both workers to register")
        src = us_file(CINE)
        uid = source_uid(src)
        assert store(port, src) == [True]
        wait_for(lambda: (r := ledger.find(uid)) is not None and r["claimed_by"] is not None and r["state"] == "queued", 120, what="a worker to claim classify")
        row = ledger.find(uid)
        assert row is not None
        victim = next(n for n in workers if str(row["claimed_by"]).startswith(n))
        t0 = time.monotonic()
        os.killpg(workers[victim].pid, signal.SIGKILL)  # `alnnode worker` and its Celery process
        workers[victim].wait(10)
        wait_for(lambda: len(srs_in(orthanc)) >= 1, 60, 0.5, what="the SR within 60 s of the kill")
        print(f"Redis mode, worker SIGKILL -> SR in Orthanc: {time.monotonic() - t0:.1f} s")
        wait_for(lambda: (r := ledger.find(uid)) is not None and r["state"] == "dispatched", 30, what="dispatched")
        assert len(srs_in(orthanc)) == 1
        final = ledger.find(uid)
        assert final is not None and "stopped responding" in str(ledger.history(uid)) + str(final["reason"]) or final["state"] == "dispatched"
    finally:
        for proc in workers.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(40)
        node.stop()
