"""Shared fixtures (helpers live in tests/helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import NodeProcess, free_port, write_config

pytest_plugins = ["tests.orthanc", "tests.postgres"]


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
