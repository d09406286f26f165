"""Fault tests of the job plane (issue #10): real node, workers, Orthanc, Redis and PostgreSQL
processes, with the **shipped defaults** of the job plane (heartbeat timeout, attempts, backoff)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT


@pytest.fixture(scope="session")
def phantom_loops(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """24 small synthetic cine loops (16 frames, 96x128, distinct UIDs): fast to classify on a CPU."""
    out = tmp_path_factory.mktemp("phantoms")
    subprocess.run(
        [sys.executable, "-m", "node.cli", "phantom", "--out", str(out), "--n", "24", "--frames", "16", "--size", "96x128", "--seed", "10"],
        check=True, cwd=ROOT, capture_output=True, timeout=600,
    )  # fmt: skip
    loops = sorted((out / "dicom").rglob("*.dcm"))
    assert len(loops) == 24, loops
    return loops
