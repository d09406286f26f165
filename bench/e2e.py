"""End-to-end benchmark: storescu -> node -> classify/render -> C-STORE to a real Orthanc.

For the embedded default (filesystem queue, one embedded worker) and for Redis with 2 worker
processes it prints:

- latency p50/p95 from the C-STORE response (ledger ``received_at``) to the result acknowledged by
  Orthanc (ledger ``dispatched``), one loop at a time (nothing queued ahead of it);
- loops/minute for a burst of N loops;
- the ratio of the p50 latency to a bare ``predict()`` of the same loop in this process (the
  reference: what the pipeline adds on top of the model).

    .venv/bin/python bench/e2e.py [--n 6] [--arch tin] [--device cpu|cuda] [--modes embedded,redis]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pydicom import dcmread  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402

from node.ledger import Ledger  # noqa: E402
from node.localpacs import LocalOrthanc as OrthancServer  # noqa: E402
from tests.helpers import NodeProcess, free_port, loop_copies, wait_for  # noqa: E402

CINE = "color3d_jpeg_baseline.dcm"


def storescu(port: int, files: list[Path]) -> None:
    subprocess.run(["storescu", "-xy", "-aet", "US_ROOM1", "-aec", "ALN_AI", "127.0.0.1", str(port), *map(str, files)],
                   check=True, capture_output=True)  # fmt: skip


def uid_of(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def latency(ledger: Ledger, uid: str) -> float:
    row = ledger.find(uid)
    assert row is not None
    done = [at for state, at, _ in ledger.history(uid) if state == "dispatched"]
    if not done:
        raise SystemExit(f"{uid} ended {row['state']}: {row['reason']}")
    return (done[-1] - row["received_at"]).total_seconds()


def config(work: Path, bundle: Path, orthanc: OrthancServer, device: str, broker: str | None) -> tuple[Path, int, Path]:
    port = free_port()
    data = work / "var"
    queue = f'broker_url = "{broker}"\n' if broker else "embedded_workers = 1\n"
    cfg = work / "alnnode.toml"
    cfg.write_text(
        f'[node]\nae_title = "ALN_AI"\nhost = "127.0.0.1"\nport = {port}\n[[peers]]\nae_title = "US_ROOM1"\n'
        f'[storage]\ndata_dir = "{data}"\nmin_free_mb = 100\n'
        f'[model]\nbundle = "{bundle}"\nallow_research_models = true\ndevice = "{device}"\n'
        f"[queue]\n{queue}"
        f'[[destinations]]\nname = "orthanc"\nkind = "dimse"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = {orthanc.dicom_port}\n'
    )
    return cfg, port, data


def run_mode(mode: str, work: Path, bundle: Path, args: argparse.Namespace) -> dict[str, float]:
    orthanc = OrthancServer(work / "orthanc").start()
    procs: list[subprocess.Popen[bytes]] = []
    broker = None
    try:
        if mode == "redis":
            rport = free_port()
            procs.append(subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", ""], stdout=subprocess.DEVNULL))
            broker = f"redis://127.0.0.1:{rport}/0"
        cfg, port, data = config(work, bundle, orthanc, args.device, broker)
        node = NodeProcess(cfg, port, work / "node.log").start()
        if mode == "redis":
            for i in range(2):
                log = open(work / f"worker{i}.log", "wb")  # noqa: SIM115
                procs.append(subprocess.Popen([sys.executable, "-m", "node.cli", "worker", "--allow-root", "--config", str(cfg), "--concurrency", "1",
                                               "--device", args.device], stdout=log, stderr=log, cwd=ROOT))  # fmt: skip
        ledger = Ledger(f"sqlite:///{data / 'ledger.sqlite'}")
        try:
            warm = loop_copies(work / "warm", 1, "w")
            storescu(port, warm)  # loads the model in the worker(s)
            wait_for(lambda: ledger.find(uid_of(warm[0])) is not None and ledger.find(uid_of(warm[0]))["state"] in ("dispatched", "failed"), 900, 0.2)  # type: ignore[index]
            lat = []
            for path in loop_copies(work / "seq", args.n, "s"):
                storescu(port, [path])
                uid = uid_of(path)
                wait_for(lambda u=uid: ledger.find(u)["state"] in ("dispatched", "failed"), 900, 0.1)  # type: ignore[index,misc]
                lat.append(latency(ledger, uid))
            burst = loop_copies(work / "burst", args.n, "b")
            storescu(port, burst)
            uids = [uid_of(p) for p in burst]
            wait_for(lambda: all(ledger.find(u)["state"] in ("dispatched", "failed") for u in uids), 1800, 0.2)  # type: ignore[index]
            start = min(ledger.find(u)["received_at"] for u in uids)  # type: ignore[index]
            end = max(ledger.history(u)[-1][1] for u in uids)
            per_min = len(uids) / max((end - start).total_seconds(), 1e-6) * 60
        finally:
            ledger.close()
            node.stop()
        lat.sort()
        return {"p50": statistics.median(lat), "p95": lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))], "per_min": per_min}
    finally:
        for p in procs:
            p.terminate()
            p.wait(60)
        orthanc.stop()


def bare_predict(bundle: Path, device: str, repeats: int = 3) -> float:
    from workers.inference import predict

    src = get_testdata_file(CINE)
    predict(bundle, src, device=device)  # warm-up (loads the model)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predict(bundle, src, device=device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=6, help="loops per phase")
    ap.add_argument("--arch", default="tin")
    ap.add_argument("--option", action="append", default=[], help="bundle option KEY=VALUE (default: the study's TIN-R50, T=16, 224 px)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--modes", default="embedded,redis")
    args = ap.parse_args()
    for tool in ("storescu", "redis-server"):
        if not shutil.which(tool):
            print(f"bench/e2e.py needs {tool}", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="alnnode-e2e-") as tmp:
        bundle = Path(tmp) / "bundle"
        opts = [x for o in args.option for x in ("--option", o)]
        subprocess.run([sys.executable, "-m", "node.cli", "bundle", "create", "--arch", args.arch, "--out", str(bundle), *opts],
                       check=True, cwd=ROOT, capture_output=True)  # fmt: skip
        os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
        ref = bare_predict(bundle, args.device)
        print(f"reference: bare predict() of the 120-frame 640x480 JPEG cine, {args.arch} {' '.join(args.option)} on {args.device}: {ref:.2f} s")
        for mode in args.modes.split(","):
            r = run_mode(mode, Path(tmp) / mode, bundle, args)
            workers = "1 embedded worker" if mode == "embedded" else "Redis, 2 worker processes"
            print(f"{mode} ({workers}): latency p50 {r['p50']:.2f} s, p95 {r['p95']:.2f} s "
                  f"(p50/bare predict = {r['p50'] / ref:.2f}); burst of {args.n}: {r['per_min']:.1f} loops/min")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
