"""Fixtures for the research tools: small phantom data sets written once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.research.phantom import PhantomCase, generate

SMALL = {"frames": 16, "size": (120, 160)}


@pytest.fixture(scope="session")
def phantom_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[PhantomCase]]]:
    """Six small loops (three positive) in each transfer syntax, keyed by syntax."""
    out: dict[str, tuple[Path, list[PhantomCase]]] = {}
    for syntax in ("jpeg", "rle", "explicit"):
        folder = tmp_path_factory.mktemp(f"phantom-{syntax}")
        out[syntax] = (folder, generate(folder, 6, seed=5, syntax=syntax, **SMALL))  # type: ignore[arg-type]
    return out
