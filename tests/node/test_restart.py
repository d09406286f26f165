"""Nothing acknowledged is lost: SIGKILL during a storescu run, restart, every 0x0000 is kept."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pydicom import dcmread

from node.ledger import Ledger
from node.spool import Spool
from tests.helpers import NodeProcess, loop_copies, require_tool, wait_for


def acknowledged(log: str) -> list[Path]:
    """Files storescu got a Success response for, from its -v log."""
    done, current = [], None
    for line in log.splitlines():
        if line.startswith("I: Sending file: "):
            current = Path(line.removeprefix("I: Sending file: ").strip())
        elif "Received Store Response (Success)" in line and current is not None:
            done.append(current)
            current = None
    return done


def test_sigkill_during_ingest_loses_nothing_acknowledged(node_proc: NodeProcess, node_env: tuple[Path, int, Path], tmp_path: Path) -> None:
    files = loop_copies(tmp_path / "loops", 40, "loop")
    exe = require_tool("storescu")
    log_path = tmp_path / "storescu.log"
    with open(log_path, "w") as log:
        sender = subprocess.Popen(
            [exe, "-v", "-xy", "-aet", "US_ROOM1", "-aec", "ALN_AI", "127.0.0.1", str(node_proc.port), *map(str, files)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        wait_for(lambda: len(acknowledged(log_path.read_text())) >= 5, 60, what="five acknowledged stores")
        node_proc.kill()
        sender.wait(60)
    acked = acknowledged(log_path.read_text())
    assert 5 <= len(acked) < len(files), "the kill must land in the middle of the run"

    node_proc.start()  # restart on the same data dir
    _, _, data = node_env
    spool = Spool(data)
    ledger = Ledger(f"sqlite:///{data / 'ledger.sqlite'}")
    for path in acked:
        uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        row = ledger.find(uid)
        assert row is not None, f"{path.name} was acknowledged but is not in the ledger"
        spooled = spool.path_of(row["spool_path"])
        assert spooled.exists() and dcmread(spooled).PixelData == dcmread(path).PixelData
    assert list(spool.incoming.iterdir()) == [], "temp debris left after restart"
    assert "interrupted" in ledger.association_summary()
