"""Ingest benchmark: N copies of the 6 MB JPEG cine via DCMTK storescu to the node and to storescp.

Prints time(node) / time(storescp +xa) from the same run. The node runs as `alnnode serve` with its
production settings (fsync of every object and directory, SQLite ledger with synchronous=FULL).

    .venv/bin/python bench/ingest.py [--n 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import free_port, loop_copies  # noqa: E402


def wait_listening(log: Path, proc: subprocess.Popen[bytes], needle: bytes, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early: {log.read_text(errors='replace')[-2000:]}")
        if needle in log.read_bytes():
            return
        time.sleep(0.05)
    raise SystemExit(f"server did not start: {log}")


def push(port: int, files: list[Path]) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(
        ["storescu", "-xy", "-aet", "US_ROOM1", "-aec", "ALN_AI", "127.0.0.1", str(port), *map(str, files)],
        capture_output=True, text=True,
    )
    elapsed = time.perf_counter() - t0
    if out.returncode != 0 or "E:" in out.stderr:
        raise SystemExit(f"storescu failed: {out.stderr[-2000:]}")
    return elapsed


def run_node(work: Path, files: list[Path]) -> float:
    port = free_port()
    cfg = work / "alnnode.toml"
    cfg.write_text(
        f'[node]\nae_title = "ALN_AI"\nhost = "127.0.0.1"\nport = {port}\nmax_pdu_size = 262144\n'
        f'[[peers]]\nae_title = "US_ROOM1"\n[storage]\ndata_dir = "{work / "var"}"\nmin_free_mb = 100\nfsync = true\n'
    )
    log = work / "node.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "node.cli", "serve", "--allow-root", "--config", str(cfg)], stdout=fh, stderr=fh, cwd=ROOT)
    try:
        wait_listening(log, proc, b"listening on")
        return push(port, files)
    finally:
        proc.terminate()
        proc.wait(30)


def run_storescp(work: Path, files: list[Path]) -> float:
    port = free_port()
    out = work / "storescp"
    out.mkdir()
    log = work / "storescp.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(["storescp", "-v", "+xa", "-od", str(out), "-aet", "ALN_AI", str(port)], stdout=fh, stderr=fh)
    try:
        deadline = time.monotonic() + 30
        while True:  # storescp logs nothing at start: probe the port (harmless for DCMTK)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"storescp did not start: {log.read_text(errors='replace')}") from None
                time.sleep(0.05)
        return push(port, files)
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=40, help="loops per run (6 MB each)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    args = ap.parse_args()
    if not shutil.which("storescu") or not shutil.which("storescp"):
        print("bench/ingest.py needs DCMTK (apt-get install dcmtk)", file=sys.stderr)
        return 2
    node_t, ref_t = [], []
    with tempfile.TemporaryDirectory(prefix="alnnode-bench-") as tmp:
        for r in range(args.rounds):
            work = Path(tmp) / f"round{r}"
            files = loop_copies(work / "loops", args.n, f"r{r}-")
            ref_t.append(run_storescp(work, files))
            node_t.append(run_node(work, files))
            shutil.rmtree(work)
            print(f"round {r + 1}: node {node_t[-1]:.2f} s, storescp {ref_t[-1]:.2f} s, ratio {node_t[-1] / ref_t[-1]:.2f}")
    node_m, ref_m = statistics.median(node_t), statistics.median(ref_t)
    mb = args.n * 6.1
    print(f"ingest of {args.n} x 6.1 MB JPEG cine, median of {args.rounds}:")
    print(f"  node (fsync + ledger): {node_m:.2f} s ({mb / node_m:.0f} MB/s)")
    print(f"  storescp +xa:          {ref_m:.2f} s ({mb / ref_m:.0f} MB/s)")
    print(f"  time(node)/time(storescp) = {node_m / ref_m:.2f}  (target <= 1.0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
