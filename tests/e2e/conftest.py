"""End-to-end fixtures: a small research bundle, node configs with real destinations, Redis."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT, free_port, require_tool, wait_for


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained TIN-R18 bundle at 112 px, T=8: the real pipeline at CPU-test speed."""
    out = tmp_path_factory.mktemp("bundle") / "tin18"
    subprocess.run(
        [sys.executable, "-m", "node.cli", "bundle", "create", "--arch", "tin", "--out", str(out),
         "--option", "depth=18", "--option", "frames=8", "--option", "size=112", "--name", "tin18-test"],
        check=True, cwd=ROOT, capture_output=True, timeout=300,
    )  # fmt: skip
    return out


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    exe = require_tool("redis-server")
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    import socket

    def up() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    wait_for(up, 20, what="redis-server")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


