"""Recovery benchmark of the job plane, shipped defaults (issue #10):

1. **worker loss** (embedded default): an embedded worker's main process is SIGKILLed while it
   classifies the 120-frame JPEG cine; time from the kill to the SR acknowledged by a real Orthanc;
2. **broker outage** (Redis, one ``alnnode worker``): Redis (no persistence: its queue is lost) is
   stopped while 3 phantom loops are stored, restarted 10 s later; time from Redis's return until
   all 3 are dispatched.

Each is repeated ``--runs`` times (p50 printed) and set against a reference run in the same process:
the same pipeline without the fault (store -> SR in Orthanc), so the ratio is what the fault costs.
Goal: p50 <= 45 s (Celery's own redelivery waits for the visibility timeout, an hour by default;
mercure retries every 15 minutes).

    .venv/bin/python bench/recovery.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from node.ledger import Ledger  # noqa: E402
from node.localpacs import LocalOrthanc  # noqa: E402
from tests.faults.support import celery_worker_pid, source_uid, srs_in, store  # noqa: E402
from tests.helpers import NodeProcess, free_port, loop_copies, wait_for  # noqa: E402
from tests.redis import RedisServer  # noqa: E402


def config(work: Path, bundle: Path, orthanc: LocalOrthanc, broker: str | None) -> tuple[Path, int, Path]:
    port, data = free_port(), work / "var"
    queue = f'broker_url = "{broker}"\n' if broker else ""
    cfg = work / "alnnode.toml"
    cfg.write_text(
        f'[node]\nae_title = "ALN_AI"\nhost = "127.0.0.1"\nport = {port}\n[[peers]]\nae_title = "US_ROOM1"\n'
        f'[storage]\ndata_dir = "{data}"\nmin_free_mb = 100\n'
        f'[model]\nbundle = "{bundle}"\nallow_research_models = true\ndevice = "cpu"\n[queue]\n{queue}'
        f'[[destinations]]\nname = "pacs"\nkind = "dimse"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = {orthanc.dicom_port}\n'
    )
    return cfg, port, data


def dispatched(ledger: Ledger, uids: list[str]) -> bool:
    return all((r := ledger.find(u)) is not None and r["state"] == "dispatched" for u in uids)


def worker_loss(work: Path, bundle: Path, runs: int) -> tuple[list[float], list[float]]:
    orthanc = LocalOrthanc(work / "orthanc").start()
    cfg, port, data = config(work, bundle, orthanc, None)
    node = NodeProcess(cfg, port, work / "node.log").start()
    ledger = Ledger(f"sqlite:///{data / 'ledger.sqlite'}")
    assert node.proc is not None
    plain, faulted = [], []
    try:
        loops = loop_copies(work / "loops", 2 * runs + 1, "r")
        store(port, loops[0])  # warm-up: the worker loads the model
        wait_for(lambda: dispatched(ledger, [source_uid(loops[0])]), 600, 0.2)
        for i in range(runs):
            path = loops[1 + i]
            n = len(srs_in(orthanc))
            t0 = time.monotonic()
            store(port, path)
            wait_for(lambda n=n: len(srs_in(orthanc)) > n, 600, 0.2)  # type: ignore[misc]
            plain.append(time.monotonic() - t0)
        for i in range(runs):
            path, uid = loops[1 + runs + i], source_uid(loops[1 + runs + i])
            n = len(srs_in(orthanc))
            store(port, path)
            wait_for(lambda u=uid: (r := ledger.find(u)) is not None and r["claimed_by"] is not None and r["state"] == "queued", 600, 0.05)  # type: ignore[misc]
            pid = celery_worker_pid(node.proc.pid)
            assert pid is not None
            t0 = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda n=n: len(srs_in(orthanc)) > n, 600, 0.2)  # type: ignore[misc]
            faulted.append(time.monotonic() - t0)
            print(f"  worker SIGKILL -> SR in Orthanc: {faulted[-1]:.1f} s", flush=True)
    finally:
        ledger.close()
        node.stop()
        orthanc.stop()
    return plain, faulted


def broker_outage(work: Path, bundle: Path, runs: int) -> tuple[list[float], list[float]]:
    orthanc = LocalOrthanc(work / "orthanc").start()
    redis = RedisServer(work).start()
    cfg, port, data = config(work, bundle, orthanc, redis.url)
    node = NodeProcess(cfg, port, work / "node.log").start()
    with open(work / "worker.log", "wb") as out:
        worker = subprocess.Popen([sys.executable, "-m", "node.cli", "worker", "--allow-root", "--config", str(cfg)], stdout=out, stderr=out,
                                  cwd=ROOT, start_new_session=True)  # fmt: skip
    ledger = Ledger(f"sqlite:///{data / 'ledger.sqlite'}")
    plain, faulted = [], []
    try:
        batches = [loop_copies(work / f"b{i}", 3, f"b{i}", name="color3d_jpeg_baseline.dcm") for i in range(2 * runs + 1)]
        store(port, *batches[0])
        wait_for(lambda: dispatched(ledger, [source_uid(p) for p in batches[0]]), 600, 0.2)
        for batch in batches[1 : 1 + runs]:
            t0 = time.monotonic()
            store(port, *batch)
            wait_for(lambda b=batch: dispatched(ledger, [source_uid(p) for p in b]), 600, 0.2)  # type: ignore[misc]
            plain.append(time.monotonic() - t0)
        for batch in batches[1 + runs :]:
            redis.stop()
            store(port, *batch)
            time.sleep(10)
            redis.start()
            t0 = time.monotonic()
            wait_for(lambda b=batch: dispatched(ledger, [source_uid(p) for p in b]), 600, 0.2)  # type: ignore[misc]
            faulted.append(time.monotonic() - t0)
            print(f"  Redis back -> 3 loops dispatched: {faulted[-1]:.1f} s", flush=True)
    finally:
        ledger.close()
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(60)
        node.stop()
        redis.stop()
        orthanc.stop()
    return plain, faulted


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="alnnode-recovery-") as tmp:
        bundle = Path(tmp) / "bundle"
        subprocess.run([sys.executable, "-m", "node.cli", "bundle", "create", "--arch", "tin", "--out", str(bundle),
                        "--option", "depth=18", "--option", "frames=8", "--option", "size=112"], check=True, cwd=ROOT, capture_output=True)  # fmt: skip
        for name, run in (("worker loss (embedded)", worker_loss), ("broker outage (Redis)", broker_outage)):
            work = Path(tmp) / name.split()[0]
            work.mkdir()
            print(f"{name}:", flush=True)
            plain, faulted = run(work, bundle, args.runs)
            ref, rec = statistics.median(plain), statistics.median(faulted)
            print(f"{name}: recovery p50 {rec:.1f} s (max {max(faulted):.1f}); reference without the fault p50 {ref:.1f} s; "
                  f"ratio {rec / ref:.2f}; goal <= 45 s: {'met' if rec <= 45 else 'NOT met'}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
