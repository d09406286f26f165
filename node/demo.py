"""``make demo``: the node on the embedded default, end to end, on this machine.

Starts ``alnnode serve`` with a demo config under ``demo-out/``, checks it with ``alnnode echo``,
sends the real ultrasound loops of the pydicom-data package with ``alnnode send``, and prints what
``alnnode status`` shows. Everything runs as real processes over loopback DICOM.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "demo-out"
SAMPLES = (
    "color3d_jpeg_baseline.dcm",
    "OBXXXX1A_rle_2frame.dcm",
    "US1_J2KR.dcm",
    "gdcm-US-ALOKA-16.dcm",
    "US1_UNCR.dcm",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alnnode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli", *args], capture_output=True, text=True, cwd=ROOT)


def _samples() -> list[Path]:
    from pydicom.data import get_testdata_file

    return [Path(str(get_testdata_file(name))) for name in SAMPLES]


def main() -> int:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir()
    port = _free_port()
    config = OUT / "alnnode.toml"
    config.write_text(
        f"""# demo configuration written by `make demo`
[node]
ae_title = "ALN_AI"
host = "127.0.0.1"
port = {port}
[[peers]]
ae_title = "US_ROOM1"
host = "127.0.0.1"
[storage]
data_dir = "{OUT / 'var'}"
min_free_mb = 100
""",
        encoding="utf-8",
    )
    print(f"== config: {config}")
    print(_alnnode("config", "check", "--config", str(config)).stdout)
    log = OUT / "node.log"
    with open(log, "wb") as fh:
        node = subprocess.Popen([sys.executable, "-m", "node.cli", "-v", "serve", "--config", str(config)], stdout=fh, stderr=fh, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while b"listening on" not in log.read_bytes():
            if node.poll() is not None or time.monotonic() > deadline:
                print(log.read_text(errors="replace"), file=sys.stderr)
                return 1
            time.sleep(0.1)
        to = f"ALN_AI@127.0.0.1:{port}"
        print(f"== node listening: {to} (log: {log})")
        echo = _alnnode("echo", to, "--calling", "US_ROOM1")
        print(echo.stdout.strip() or echo.stderr.strip())
        print("== sending the real ultrasound loops of pydicom-data with `alnnode send`")
        sent = _alnnode("send", *map(str, _samples()), "--to", to, "--calling", "US_ROOM1")
        print(sent.stdout.strip())
        if sent.returncode != 0:
            print(sent.stderr, file=sys.stderr)
            return 1
        print("== alnnode status")
        print(_alnnode("status", "--config", str(config)).stdout)
        return 0
    finally:
        node.terminate()
        node.wait(30)


if __name__ == "__main__":
    sys.exit(main())
