"""The README's research example runs as written: the ``sh`` block of "For researchers", verbatim, with
``alnnode`` being this checkout's CLI (``python -m node.cli``), in an empty folder."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def research_block() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## For researchers"):]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "README 'For researchers' has no sh code block"
    return match.group(1)


def test_readme_research_example_runs_verbatim(tmp_path: Path) -> None:
    block = research_block()
    assert "alnnode evaluate --predictions tin=" in block and "--epochs" in block
    script = f'set -euo pipefail\nalnnode() {{ "{sys.executable}" -m node.cli "$@"; }}\n{block}'
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    out = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-3000:])
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert set(metrics["models"]) == {"tin", "r50"} and metrics["analysis"]["unit"] == "patient"
    assert metrics["models"]["tin"]["n"] == 6  # 12 loops of 6 patients, one score per patient
    assert metrics["localisation"]["tin"]["n"] > 0 and metrics["provenance"]["inputs"]
    assert sorted(p.name for p in (tmp_path / "report-test" / "gradcam").iterdir())[0].endswith(".png")
    assert "\x1b" not in out.stderr and "\r" not in out.stderr  # no progress bars off a terminal
