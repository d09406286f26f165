"""Shared fixtures (helpers live in tests/helpers.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT, NodeProcess, free_port, write_config

pytest_plugins = ["tests.orthanc", "tests.postgres", "tests.redis"]
_DISK_AT_START = pytest.StashKey[str]()


def _disk_free() -> str:
    where = {"temp": Path(tempfile.gettempdir()), "repo": ROOT}
    return ", ".join(f"{name} {shutil.disk_usage(p).free / 2**30:.1f} GiB ({p})" for name, p in where.items())


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_DISK_AT_START] = _disk_free()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """Free disk space where the suite writes, at start and end (a CI machine once ran out of it part-way)."""
    terminalreporter.write_line(f"disk free at start: {config.stash[_DISK_AT_START]}; at end: {_disk_free()}")


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
