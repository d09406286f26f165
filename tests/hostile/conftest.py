"""A node at the shipped [node] defaults, started once per module (only address, peers, data dir set)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from node.ledger import Ledger
from node.spool import Spool
from tests.helpers import NodeProcess, free_port

PEER = "US_ROOM1"


@dataclass
class DefaultNode:
    proc: NodeProcess
    port: int
    data: Path

    @property
    def pid(self) -> int:
        assert self.proc.proc is not None
        return self.proc.proc.pid

    def alive(self) -> bool:
        return self.proc.proc is not None and self.proc.proc.poll() is None

    def incoming(self) -> list[Path]:
        return [p for p in (Spool(self.data).incoming).rglob("*") if p.is_file()]  # every edge's folder

    def ledger(self) -> Ledger:
        return Ledger(f"sqlite:///{self.data / 'ledger.sqlite'}")

    def status(self, key: str) -> int:
        """VmRSS / VmHWM of the node process in kB (/proc/PID/status)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)


def default_config(path: Path, port: int, data: Path) -> Path:
    path.write_text(
        f"""[node]
host = "127.0.0.1"
port = {port}

[[peers]]
ae_title = "{PEER}"

[[peers]]
ae_title = "ECHOSCU"

[storage]
data_dir = "{data}"
min_free_mb = 1
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def default_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DefaultNode]:
    tmp = tmp_path_factory.mktemp("node")
    port = free_port()
    cfg = default_config(tmp / "alnnode.toml", port, tmp / "var")
    proc = NodeProcess(cfg, port, tmp / "node.log").start()
    yield DefaultNode(proc, port, tmp / "var")
    proc.stop()
