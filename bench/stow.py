"""STOW-RS ingest benchmark: the same N copies of the 6 MB JPEG cine stored by STOW-RS into the node
and into Orthanc's DICOMweb plugin, in the same run, alternately.

One request per instance (a modality or router sending as it goes), over one keep-alive connection;
the node runs ``alnnode serve`` with its production settings (fsync of every object and directory,
SQLite ledger with synchronous=FULL, bearer token checked on every request, the C-STORE validation).
Orthanc 1.10 with its default ``SyncStorageArea`` (fsync). Prints time(node) / time(Orthanc).

    .venv/bin/python bench/stow.py [--n 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from node.http.hashing import make_hash  # noqa: E402
from node.localpacs import LocalOrthanc  # noqa: E402
from tests.helpers import free_port, loop_copies  # noqa: E402

TOKEN = "bench-token-0d6f"
BOUNDARY = "alnnodebenchboundary"


def stow(url: str, files: list[Path], headers: dict[str, str]) -> float:
    ctype = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
    with requests.Session() as s:
        s.headers.update(headers)
        s.headers["Content-Type"] = ctype
        s.headers["Accept"] = "application/dicom+json"
        t0 = time.perf_counter()
        for f in files:
            body = (
                f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                + f.read_bytes()
                + f"\r\n--{BOUNDARY}--\r\n".encode()
            )
            r = s.post(url, data=body, timeout=120)
            if r.status_code != 200:
                raise SystemExit(f"STOW-RS to {url} answered {r.status_code}: {r.text[:500]}")
        return time.perf_counter() - t0


def run_node(work: Path, files: list[Path]) -> float:
    port, http_port = free_port(), free_port()
    cfg = work / "alnnode.toml"
    cfg.write_text(
        f'[node]\nae_title = "ALN_AI"\nhost = "127.0.0.1"\nport = {port}\n'
        f'[storage]\ndata_dir = "{work / "var"}"\nmin_free_mb = 100\nfsync = true\n'
        f"[http]\nenabled = true\nport = {http_port}\n"
        f'[[http.credentials]]\nname = "bench"\nrole = "modality"\ntoken_hash = "{make_hash(TOKEN)}"\n'
    )
    log = work / "node.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "serve", "--allow-root", "--config", str(cfg)],
            stdout=fh,
            stderr=fh,
            cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + 60
        while b"listening on" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"node did not start: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)
        return stow(
            f"http://127.0.0.1:{http_port}/dicom-web/studies", files, {"Authorization": f"Bearer {TOKEN}"}
        )
    finally:
        proc.terminate()
        proc.wait(30)


def run_orthanc(work: Path, files: list[Path]) -> float:
    orthanc = LocalOrthanc(work).start()
    try:
        return stow(f"{orthanc.dicomweb_url}/studies", files, {})
    finally:
        orthanc.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20, help="loops per run (6 MB each)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    args = ap.parse_args()
    if not shutil.which("Orthanc") and not Path("/usr/sbin/Orthanc").exists():
        sys.stderr.write(
            "bench/stow.py needs Orthanc and its DICOMweb plugin (apt-get install orthanc orthanc-dicomweb)\n"
        )
        return 2
    node_t, ref_t = [], []
    with tempfile.TemporaryDirectory(prefix="alnnode-bench-") as tmp:
        for r in range(args.rounds):
            work = Path(tmp) / f"round{r}"
            files = loop_copies(work / "loops", args.n, f"s{r}-")
            ref_t.append(run_orthanc(work, files))
            node_t.append(run_node(work, files))
            shutil.rmtree(work)
            sys.stdout.write(
                f"round {r + 1}: node {node_t[-1]:.2f} s, Orthanc {ref_t[-1]:.2f} s, ratio {node_t[-1] / ref_t[-1]:.2f}\n"
            )
    node_m, ref_m = statistics.median(node_t), statistics.median(ref_t)
    mb = args.n * 6.1
    sys.stdout.write(
        f"STOW-RS of {args.n} x 6.1 MB JPEG cine, one request each, median of {args.rounds}:\n"
        f"  node (fsync + ledger + validation): {node_m:.2f} s ({mb / node_m:.0f} MB/s)\n"
        f"  Orthanc DICOMweb plugin:            {ref_m:.2f} s ({mb / ref_m:.0f} MB/s)\n"
        f"  time(node)/time(Orthanc) = {node_m / ref_m:.2f}  (goal <= 1.0)\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
