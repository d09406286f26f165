"""A distributed run on one machine (issue #14): real PostgreSQL ledger and Redis broker started by the
suite, **two** ``alnnode serve`` edges on different ports sharing the ledger and the spool, two GPU-queue
workers and one I/O-queue worker as separate processes. 40 loops go to both edges concurrently with
``storescu``; one GPU worker is SIGKILLed and one edge is SIGKILLed and restarted during the run; every
acknowledged loop must end with exactly one SR in Orthanc. Shipped defaults of the job plane."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from node.ledger import Ledger
from tests.e2e.support import destination_toml, pipeline_config
from tests.faults.support import source_uid, srs_in, store
from tests.helpers import ROOT, NodeProcess, free_port, wait_for
from tests.orthanc import OrthancServer
from tests.postgres import PostgresServer
from tests.redis import RedisServer

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def forty_loops(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("cluster-loops")
    subprocess.run([sys.executable, "-m", "node.cli", "phantom", "--out", str(out), "--n", "40", "--frames", "16", "--size", "96x128", "--seed", "40"],
                   check=True, cwd=ROOT, capture_output=True, timeout=600)  # fmt: skip
    loops = sorted((out / "dicom").rglob("*.dcm"))
    assert len(loops) == 40
    return loops


def _worker(cfg: Path, queues: str, name: str, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "node.cli", "worker", "--allow-root", "--config", str(cfg), "--queues", queues, "--name", name]
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=out, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)


def _edge_config(base: Path, port: int, folder: Path) -> Path:
    cfg = folder / f"edge-{port}.toml"
    text = base.read_text()
    cfg.write_text(text.replace(f"port = {_port_of(text)}\n", f"port = {port}\n", 1))
    return cfg


def _port_of(text: str) -> int:
    return int(next(line for line in text.splitlines() if line.startswith("port = ")).split("=")[1])


def test_two_edges_three_workers_postgres_redis(orthanc: OrthancServer, small_bundle: Path, postgres: PostgresServer, redis_server: RedisServer,
                                                forty_loops: list[Path], tmp_path: Path) -> None:  # fmt: skip
    base, _port, _data = pipeline_config(tmp_path, small_bundle, destination_toml("dimse", orthanc), broker=redis_server.url, workers=0, ledger_url=postgres.url)
    ports = [free_port(), free_port()]
    cfgs = [_edge_config(base, p, tmp_path) for p in ports]
    edges = [NodeProcess(cfg, p, tmp_path / f"edge{i}.log").start() for i, (cfg, p) in enumerate(zip(cfgs, ports, strict=True))]
    workers = {
        "gpu1": _worker(cfgs[0], "gpu", "gpu1", tmp_path / "gpu1.log"),
        "gpu2": _worker(cfgs[0], "gpu", "gpu2", tmp_path / "gpu2.log"),
        "io1": _worker(cfgs[1], "io", "io1", tmp_path / "io1.log"),
    }
    ledger = Ledger(postgres.url)
    acked: set[str] = set()
    lock = threading.Lock()
    edge_down = threading.Event()

    def send(edge: int, loops: list[Path]) -> None:
        pending = list(loops)
        deadline = time.monotonic() + 400
        while pending and time.monotonic() < deadline:
            path = pending.pop(0)
            if edge_down.is_set() and edge == 1:
                pending.insert(0, path)
                time.sleep(0.2)
                continue
            ok = store(ports[edge], path) == [True]
            if ok:
                with lock:
                    acked.add(source_uid(path))
            else:
                pending.append(path)  # refused or the edge was down: the sender tries again, as a modality does

    try:
        wait_for(lambda: len(ledger.live_workers(30)) == 3, 180, what="three workers to register")
        t0 = time.monotonic()
        senders = [threading.Thread(target=send, args=(i, forty_loops[i::2])) for i in (0, 1)]
        for s in senders:
            s.start()
        # one GPU worker SIGKILLed once it has work, while loops keep arriving
        wait_for(lambda: any(str(r["claimed_by"] or "").startswith("gpu1") for r in ledger.unfinished()), 240, 0.1, what="gpu1 to claim a job")
        os.killpg(workers["gpu1"].pid, signal.SIGKILL)
        workers["gpu1"].wait(10)
        # one edge SIGKILLed mid-burst and restarted
        wait_for(lambda: len(acked) >= 12, 240, 0.2, what="a dozen loops acknowledged")
        edge_down.set()
        edges[1].kill()
        edges[1].start()
        edge_down.clear()
        for s in senders:
            s.join(420)
        assert len(acked) == 40, f"every loop acknowledged in the end ({len(acked)})"
        wait_for(lambda: all((r := ledger.find(u)) is not None and r["state"] in ("dispatched", "failed") for u in acked), 600, 1.0,
                 what="every acknowledged loop to finish")  # fmt: skip
        elapsed = time.monotonic() - t0
        states = {u: ledger.find(u)["state"] for u in acked}  # type: ignore[index]
        assert set(states.values()) == {"dispatched"}, {u: s for u, s in states.items() if s != "dispatched"}
        srs = srs_in(orthanc)
        per_loop = len(srs) / len(acked)
        print(f"distributed run: {len(acked)} loops in {elapsed:.0f} s = {len(acked) / elapsed * 60:.1f} loops/min; {per_loop:.2f} SR per loop")
        sr_uids = {d["result_uid"] for u in acked for d in ledger.deliveries_of(u) if d["result_uid"] in set(srs)}
        assert len(srs) == 40 and len(sr_uids) == 40, "exactly one SR per acknowledged loop"
    finally:
        ledger.close()
        for proc in workers.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in workers.values():
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        for edge in edges:
            edge.stop()
