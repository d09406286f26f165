"""The demo's trained bundle and its held-out phantom loops, shared by the tests that need a model that learned.

The bundle is the one ``make demo`` uses (``node.demo.demo_bundle``: a TIN-R18 trained on 100 phantom loops with
OOD statistics and calibration, about 5 minutes on 2 CPU cores the first time, then cached in
``.cache/demo-bundle/``). The held-out loops are the demo's: ``alnnode phantom --n 6 --seed 2026 --frames 24
--size 160x208``.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path

HELD_OUT = {"n": 6, "seed": 2026, "frames": 24, "size": (160, 208)}


@functools.cache
def demo_bundle() -> Path:
    """Train (first call, cached on disk) or reuse the demo bundle; once per test process."""
    from node.demo import demo_bundle as build

    return build()


def held_out_phantoms(folder: Path) -> list[tuple[Path, int]]:
    """The demo's 6 held-out phantom loops under ``folder`` with their labels (generated once per folder)."""
    from workers.research.phantom import generate

    manifest = folder / "manifest.csv"
    if not manifest.is_file():
        generate(folder, HELD_OUT["n"], seed=HELD_OUT["seed"], frames=HELD_OUT["frames"], size=HELD_OUT["size"])
    with manifest.open(newline="") as fh:
        return [(folder / row["path"], int(row["label"])) for row in csv.DictReader(fh)]
