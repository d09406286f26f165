"""Outages of the broker, the ledger database and the PACS: nothing acknowledged is lost, nothing
needs a restart or an operator."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.support import destination_toml, ledger_of, pipeline_config
from tests.faults.support import alnnode, source_uid, srs_in, store, store_responses
from tests.helpers import ROOT, NodeProcess, wait_for
from tests.orthanc import OrthancServer
from tests.postgres import PostgresServer
from tests.redis import RedisServer

pytestmark = pytest.mark.timeout(900)


def test_redis_down_60_s_during_a_burst_of_20_loops(orthanc: OrthancServer, small_bundle: Path, redis_server: RedisServer, phantom_loops: list[Path], tmp_path: Path) -> None:
    cfg, port, data = pipeline_config(tmp_path, small_bundle, destination_toml("dimse", orthanc), broker=redis_server.url)
    node = NodeProcess(cfg, port, tmp_path / "node.log").start()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "worker.log", "wb") as out:
        worker = subprocess.Popen([sys.executable, "-m", "node.cli", "worker", "--allow-root", "--config", str(cfg), "--queues", "gpu,io"],
                                  stdout=out, stderr=out, cwd=ROOT, env=env, start_new_session=True)  # fmt: skip
    try:
        ledger = ledger_of(data)
        wait_for(lambda: len(ledger.live_workers(30)) == 1, 120, what="the worker to register")
        loops = phantom_loops[:20]
        uids = [source_uid(p) for p in loops]
        answers: list[bool] = []
        sender = threading.Thread(target=lambda: answers.extend(store(port, *loops)))
        sender.start()
        wait_for(lambda: sum(ledger.find(u) is not None for u in uids) >= 3, 120, what="the first loops of the burst")
        redis_server.stop()  # the queue is lost with it (no persistence)
        down_at = time.monotonic()
        sender.join(240)
        assert answers == [True] * 20, f"every C-STORE answered with success while Redis was down: {answers}"
        time.sleep(max(0.0, 60 - (time.monotonic() - down_at)))  # the outage lasts 60 s
        redis_server.start()
        back = time.monotonic()
        wait_for(lambda: all((r := ledger.find(u)) is not None and r["state"] in ("dispatched", "failed") for u in uids), 180, 1.0,
                 what="all 20 loops dispatched within 3 min of Redis returning")  # fmt: skip
        print(f"Redis back -> 20 loops dispatched: {time.monotonic() - back:.0f} s")
        assert [ledger.find(u)["state"] for u in uids] == ["dispatched"] * 20  # type: ignore[index]
        assert len(srs_in(orthanc)) == 20
        assert worker.poll() is None, "nothing was restarted by hand"
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(40)
        node.stop()


def test_postgresql_ledger_restart_mid_burst(orthanc: OrthancServer, small_bundle: Path, postgres: PostgresServer, phantom_loops: list[Path], tmp_path: Path) -> None:
    cfg, port, _data = pipeline_config(tmp_path, small_bundle, destination_toml("dimse", orthanc), ledger_url=postgres.url)
    node = NodeProcess(cfg, port, tmp_path / "node.log").start()
    assert node.proc is not None
    try:
        from node.ledger import Ledger

        ledger = Ledger(postgres.url)
        first = phantom_loops[0]
        assert store(port, first) == [True]
        wait_for(lambda: (r := ledger.find(source_uid(first))) is not None and r["state"] == "dispatched", 180, what="a loop to reach Orthanc")
        burst = phantom_loops[1:9]
        answers = store(port, *burst[:2])
        postgres.stop()
        refused = store_responses(port, *burst[2:5])  # the ledger is down: refused, never acknowledged
        postgres.start()
        answers += [r == "Success" for r in refused] + store(port, *burst[5:])
        assert node.proc.poll() is None, "the node keeps running"
        assert answers[:2] == [True, True] and answers[5:] == [True] * 3, answers
        assert refused == ["Unknown Status: 0x110"] * 3, f"0x0110 Processing Failure while the ledger is down: {refused}"
        acked = [source_uid(p) for p, ok in zip(burst, answers, strict=True) if ok] + [source_uid(first)]
        wait_for(lambda: all((r := ledger.find(u)) is not None and r["state"] == "dispatched" for u in acked), 240, 1.0,
                 what="every acknowledged loop dispatched")  # fmt: skip
        assert len(srs_in(orthanc)) == len(acked)
        ledger.close()
    finally:
        node.stop()


def test_pacs_down_for_5_minutes_then_every_loop_delivered_once(orthanc: OrthancServer, small_bundle: Path, phantom_loops: list[Path], tmp_path: Path) -> None:
    cfg, port, data = pipeline_config(tmp_path, small_bundle, destination_toml("dimse", orthanc, defaults=True))
    orthanc.stop()
    down_at = time.monotonic()
    node = NodeProcess(cfg, port, tmp_path / "node.log").start()
    try:
        ledger = ledger_of(data)
        loops = phantom_loops[9:12]
        uids = [source_uid(p) for p in loops]
        assert store(port, *loops) == [True] * 3
        # while the PACS is down the worker is not held: every loop is classified and rendered
        wait_for(lambda: all((r := ledger.find(u)) is not None and r["state"] == "rendered" and r["retry_at"] is not None for u in uids), 240, 1.0,
                 what="all loops rendered and waiting for a retry")  # fmt: skip
        time.sleep(max(0.0, 300 - (time.monotonic() - down_at)))  # a 5-minute outage
        orthanc.start()
        back = time.monotonic()
        wait_for(lambda: all((r := ledger.find(u)) is not None and r["state"] in ("dispatched", "failed") for u in uids), 150, 1.0,
                 what="delivery after the PACS returned")  # fmt: skip
        print(f"PACS back -> all delivered: {time.monotonic() - back:.0f} s")
        assert [ledger.find(u)["state"] for u in uids] == ["dispatched"] * 3  # type: ignore[index]
        assert len(orthanc.instances()) == 9, "one copy of each result"
        assert len(srs_in(orthanc)) == 3
    finally:
        node.stop()


def test_wrong_pacs_ae_fails_after_one_attempt_and_retry_delivers(orthanc: OrthancServer, small_bundle: Path, phantom_loops: list[Path], tmp_path: Path) -> None:
    cfg, port, data = pipeline_config(tmp_path, small_bundle, destination_toml("dimse", orthanc, ae="WRONG_AE", defaults=True))
    node = NodeProcess(cfg, port, tmp_path / "node.log").start()
    loop = phantom_loops[12]
    uid = source_uid(loop)
    try:
        assert store(port, loop) == [True]
        ledger = ledger_of(data)
        wait_for(lambda: (r := ledger.find(uid)) is not None and r["state"] in ("dispatched", "failed"), 180, what="the job to end")
        row = ledger.find(uid)
        assert row is not None and row["state"] == "failed" and row["stage"] == "dispatch" and "WRONG_AE" in row["reason"], row
        assert {d["attempts"] for d in ledger.deliveries_of(uid)} == {1}, "a permanent fault is not retried"
        status = alnnode("status", "--failed", "--config", str(cfg))
        assert uid in status.stdout and "WRONG_AE" in status.stdout, status.stdout
    finally:
        node.stop()
    cfg.write_text(cfg.read_text().replace('ae_title = "WRONG_AE"', 'ae_title = "ORTHANC"'))
    retry = alnnode("retry", "--failed", "--config", str(cfg))
    assert retry.returncode == 0, retry.stdout + retry.stderr
    assert ledger_of(data).find(uid)["state"] == "dispatched"  # type: ignore[index]
    assert len(srs_in(orthanc)) == 1
