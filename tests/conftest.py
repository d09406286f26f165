"""Shared fixtures (helpers live in tests/helpers.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT, NodeProcess, free_port, write_config

pytest_plugins = ["tests.orthanc", "tests.postgres", "tests.redis"]


@pytest.fixture
def node_env(tmp_path: Path) -> Iterator[tuple[Path, int, Path]]:
    """(config path, port, data dir) for a node on a free loopback port."""
    port = free_port()
    data = tmp_path / "var"
    cfg = write_config(tmp_path / "alnnode.toml", port=port, data_dir=data)
    yield cfg, port, data


@pytest.fixture
def node_proc(node_env: tuple[Path, int, Path], tmp_path: Path) -> Iterator[NodeProcess]:
    cfg, port, _ = node_env
    proc = NodeProcess(cfg, port, tmp_path / "node.log").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained TIN-R18 bundle at 112 px, T=8: the real pipeline at CPU-test speed (e2e, faults)."""
    out = tmp_path_factory.mktemp("bundle") / "tin18"
    subprocess.run(
        [sys.executable, "-m", "node.cli", "bundle", "create", "--arch", "tin", "--out", str(out),
         "--option", "depth=18", "--option", "frames=8", "--option", "size=112", "--name", "tin18-test"],
        check=True, cwd=ROOT, capture_output=True, timeout=300,
    )  # fmt: skip
    return out
